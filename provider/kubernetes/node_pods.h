// The pods of this node, as the Kubernetes watcher sees them (a watch filtered by
// spec.nodeName): the names behind the pod UIDs that cgroup paths carry.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "provider/kubernetes/watch_sink.h"
#include "provider/workload.h"

namespace kmon {

/// Pods keyed by KubePod::uid (the UID their cgroups carry). Thread-safe: the watcher
/// thread writes, scrapes read. It keeps every pod it is given; the watcher's field
/// selector is what limits it to this node.
///
/// A pod that goes (a DELETED event, or absent from a completed relist) stays answerable by
/// PodByUid for `keep_deleted`, so the series of a gone pod keep their names for as long as
/// they stay on /metrics (kubernetes.series_grace), and is forgotten after.
class NodePods : public PodMetadataSource, public PodWatchSink {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  /// `clock` is injectable so tests need not sleep; empty: std::chrono::steady_clock.
  explicit NodePods(std::chrono::steady_clock::duration keep_deleted, Clock clock = {});

  /// The pod's names: a live pod, or a gone one within keep_deleted.
  std::optional<PodMeta> PodByUid(const std::string& uid) const override;

  void BeginList() override;
  /// Marks gone every pod the list did not carry. Without a BeginList before it (the
  /// list was restarted or never begun) it drops nothing.
  void EndList() override;
  /// kAdded/kModified add or update the pod (a gone pod is live again: a static pod's
  /// mirror re-created keeps its UID); kDeleted marks it gone. A pod that DecodePod
  /// rejects leaves what is known as it was, is counted and logged once per UID.
  void Apply(WatchEventType type, const nlohmann::json& pod) override;

  /// Bumps on every change: a pod added, changed in what PodMeta holds, gone or live again
  /// (LivePods changes), or forgotten after keep_deleted (PodByUid's answer changes; seen
  /// by the first Generation, PodByUid, write or Sweep after the deadline).
  uint64_t Generation() const override;
  /// Live pods (not counting gone ones kept for their names).
  size_t Size() const;
  /// Pod objects DecodePod rejected, since start.
  uint64_t DecodeErrors() const;
  /// Called after each change made by BeginList/EndList/Apply/Sweep, outside the lock, on
  /// the thread that made it. May be empty.
  void SetOnChange(std::function<void()> on_change);
  /// Forgets the gone pods past keep_deleted now (it happens anyway on every access);
  /// calls on_change when it forgot any.
  void Sweep();
  /// The live pods, UID -> names: the set the watched cgroups are chosen from.
  std::map<std::string, PodMeta> LivePods() const;

 private:
  struct Entry {
    PodMeta meta;
    /// Set when the pod went; forgotten at gone_at + keep_deleted_.
    std::optional<std::chrono::steady_clock::time_point> gone_at;
    /// The list (list_epoch_) that last carried the pod.
    uint64_t list_epoch = 0;
  };

  // Runs `read` under the shared lock, or under the exclusive one after forgetting the gone
  // pods past their deadline (a reader sweeps too, so that its answer and Generation agree).
  template <typename F>
  auto Read(F read) const;
  // Whether a gone pod is past its deadline. Needs mu_, shared is enough.
  bool DueLocked(std::chrono::steady_clock::time_point now) const;
  // Forgets the gone pods past their deadline; true when it forgot any. Needs mu_ exclusive.
  bool SweepLocked(std::chrono::steady_clock::time_point now) const;
  // Adds or updates a pod (live); true when anything changed. Needs mu_ exclusive.
  bool UpsertLocked(const std::string& uid, PodMeta meta);
  // Marks a pod gone at `now`; `meta`, when set, is its last known state (a pod unknown so
  // far is then kept as gone). True when anything changed. Needs mu_ exclusive.
  bool MarkGoneLocked(const std::string& uid, std::optional<PodMeta> meta,
                      std::chrono::steady_clock::time_point now);

  const std::chrono::steady_clock::duration keep_deleted_;
  const Clock clock_;
  mutable std::shared_mutex mu_;
  // Mutable: readers forget the gone pods past their deadline too (Read).
  mutable std::unordered_map<std::string, Entry> pods_;
  mutable uint64_t generation_ = 0;
  // The earliest deadline of a gone pod, so that readers check it without a scan.
  mutable std::optional<std::chrono::steady_clock::time_point> next_deadline_;
  size_t live_ = 0;
  uint64_t list_epoch_ = 0;
  bool listing_ = false;
  uint64_t decode_errors_ = 0;
  // UIDs whose decoding failure was logged; cleared when the pod decodes again or goes.
  std::unordered_set<std::string> logged_errors_;
  std::function<void()> on_change_;
};

}  // namespace kmon
