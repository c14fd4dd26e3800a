// The seam between the Kubernetes API watcher (list + watch of pods, its
// reconnects and relists) and what keeps the pods it sees (the node's pod store,
// the cluster-wide pod-IP index). The watcher hands over raw API objects; each
// sink decodes and keeps only what it needs, so a cluster-scoped watch never holds
// whole pod objects.
#pragma once

#include <nlohmann/json.hpp>

namespace kmon {

enum class WatchEventType { kAdded, kModified, kDeleted };

class PodWatchSink {
 public:
  virtual ~PodWatchSink() = default;
  /// A (re)list starts: every object of it follows as an Apply(kAdded, ...). A list
  /// that breaks off (connection lost between pages) is followed by another
  /// BeginList, never by EndList, so nothing known is dropped during an outage.
  virtual void BeginList() = 0;
  /// The list is complete: whatever was not seen since BeginList is gone.
  virtual void EndList() = 0;
  /// One pod object (a v1.Pod as JSON) from a list page or a watch event.
  virtual void Apply(WatchEventType type, const nlohmann::json& pod) = 0;
};

}  // namespace kmon
