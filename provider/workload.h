// The Provider's answer to "whose is this cgroup id?": namespace/pod/container labels,
// cached per id and forgotten when the cgroup disappears.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "provider/cgroup_identity.h"

namespace kmon {

/// The labels every per-workload series carries.
struct WorkloadLabels {
  std::string namespace_;
  std::string pod;
  std::string container;
  /// Not a series label: the pod's top owner when Kubernetes named it, for the
  /// topology's `granularity: workload`; empty otherwise.
  std::string workload;
  bool operator==(const WorkloadLabels&) const = default;
};

/// Names Kubernetes gives a pod; filled by the Kubernetes provider.
struct PodMeta {
  std::string namespace_;
  std::string name;
  /// The pod's top owner (SPEC: a Deployment through its ReplicaSet, a StatefulSet,
  /// DaemonSet, Job or CronJob), else the pod's own name.
  std::string workload;
  std::map<std::string, std::string> labels;
  /// container ID (64 hex, no runtime prefix) -> container name
  std::map<std::string, std::string> containers;
};

/// Seam for pod metadata: the Kubernetes watcher in production, a map in tests.
class PodMetadataSource {
 public:
  virtual ~PodMetadataSource() = default;
  virtual std::optional<PodMeta> PodByUid(const std::string& uid) const = 0;
  /// Changes whenever an answer of PodByUid may have changed, so callers can cache
  /// what they built from one (the resolver's labels) until it moves.
  virtual uint64_t Generation() const = 0;
};

/// Labels for an identity. A pod without metadata yet is labelled by what the
/// cgroup path says: namespace "", pod = its UID, container = first 12 hex of its ID.
/// A host process: namespace "", pod "", container = identity.host_name.
WorkloadLabels BuildLabels(const CgroupIdentity& id, const PodMeta* meta);

/// Seam for the cgroup id -> path lookup (the cgroup filesystem, or a map in tests).
class CgroupPathSource {
 public:
  virtual ~CgroupPathSource() = default;
  /// Every live cgroup: id -> path relative to the v2 root ("/" for the root).
  virtual std::unordered_map<uint64_t, std::string> Scan() = 0;
};

/// Walks the cgroup v2 hierarchy; a cgroup's id is its directory's inode number.
class CgroupFsPathSource : public CgroupPathSource {
 public:
  explicit CgroupFsPathSource(std::string root);
  std::unordered_map<uint64_t, std::string> Scan() override;
  const std::string& root() const { return root_; }

 private:
  std::string root_;
};

/// The cgroup v2 mount point: "/sys/fs/cgroup" on a pure v2 host,
/// "/sys/fs/cgroup/unified" on a hybrid one (read from /proc/self/mountinfo).
std::optional<std::string> DetectCgroup2Root();

/// The pure part of DetectCgroup2Root: picks the cgroup2 mount point out of
/// /proc/<pid>/mountinfo text (octal escapes such as "\040" decoded). A mount of
/// the hierarchy's root ("/" in field 4) is preferred over a bind mount of a
/// sub-cgroup, whose paths would not be relative to the v2 root; among equals,
/// /sys/fs/cgroup or /sys/fs/cgroup/unified, then the first. nullopt: no cgroup2.
std::optional<std::string> ParseCgroup2MountPoint(std::string_view mountinfo);

/// Maps cgroup ids to workload labels. Thread-safe. An unknown id triggers one
/// rescan (at most one per `min_rescan_interval`); ids whose cgroup is gone are
/// dropped from the cache on the next rescan — a pod's after the pod grace
/// (`kubernetes.series_grace`): until then they keep answering with the names they
/// had, so a deleted pod's series stay that long. Labels are built once per id and
/// rebuilt only when the pod metadata's generation moves.
class WorkloadResolver {
 public:
  /// `paths` must not be null. `pods` may be null (no Kubernetes metadata: pods are
  /// labelled by what their cgroup path says); when set it must outlive the resolver.
  WorkloadResolver(std::unique_ptr<CgroupPathSource> paths, const PodMetadataSource* pods,
                   std::chrono::milliseconds min_rescan_interval = std::chrono::milliseconds(500));

  /// Labels for a cgroup id; nullopt when no live cgroup has this id.
  std::optional<WorkloadLabels> Lookup(uint64_t cgroup_id);
  /// Identity and path for a cgroup id (same caching as Lookup).
  std::optional<std::pair<std::string, CgroupIdentity>> Describe(uint64_t cgroup_id);
  /// Rescans now; returns every live cgroup id with its identity.
  std::vector<std::pair<uint64_t, CgroupIdentity>> Refresh();
  /// Number of cached ids, live and in their grace (for tests and self-metrics).
  size_t CachedCount() const;
  /// How long a pod cgroup that is gone keeps answering (0: forgotten at the next scan).
  void SetPodGrace(std::chrono::nanoseconds grace);

  using Clock = std::chrono::steady_clock;
  /// For tests: the clock the grace is measured with.
  void SetClockForTest(std::function<Clock::time_point()> now) { now_ = std::move(now); }

 private:
  void RescanLocked();

  std::unique_ptr<CgroupPathSource> paths_;
  const PodMetadataSource* pods_;
  std::chrono::milliseconds min_rescan_interval_;
  mutable std::mutex mu_;
  std::chrono::steady_clock::time_point last_scan_{};
  bool scanned_ = false;
  std::chrono::nanoseconds pod_grace_{0};
  std::function<Clock::time_point()> now_ = [] { return Clock::now(); };
  struct Entry {
    std::string path;
    CgroupIdentity identity;
    std::optional<WorkloadLabels> labels;  // built for metadata generation `labels_gen`
    uint64_t labels_gen = 0;
    std::optional<Clock::time_point> gone_since;  // a pod cgroup in its grace
  };
  std::unordered_map<uint64_t, Entry> cache_;

  // The cached entry for `cgroup_id`, rescanning first when it is unknown and the last
  // scan is older than min_rescan_interval_; nullptr when there is none.
  Entry* FindLocked(uint64_t cgroup_id);
};

}  // namespace kmon
