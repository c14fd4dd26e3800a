// Keeps the watched-cgroups control map equal to the set of live cgroups the
// config's `targets` select. One map pair (filter_config, watched_cgroups) serves
// every BPF object: each object's maps of those names are pointed at it before
// load (bpf_map__reuse_fd), so the set is held and written once, not once per
// collector. Written in place: programs are never reloaded when the targets change
// or pods come and go.
#pragma once

#include <absl/status/status.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <vector>

#include "bpf/kmon_common.h"
#include "collectors/collector_config.h"
#include "provider/workload.h"

struct bpf_object;

namespace kmon {

/// True when the cgroup of this identity (and pod metadata, if known) is selected.
bool TargetSelects(const TargetsConfig& targets, const CgroupIdentity& id, const PodMeta* meta);

/// The maps of limits.bpf_map_entries.shared: the watched-cgroups set.
const std::vector<BpfMapSize>& SharedMapSizes();

class WatchedCgroups {
 public:
  /// `capacity`: max_entries of the watched-cgroups set (limits.bpf_map_entries).
  explicit WatchedCgroups(WorkloadResolver* workloads, const PodMetadataSource* pods = nullptr,
                          uint32_t capacity = KMON_MAX_WATCHED_CGROUPS)
      : workloads_(workloads), pods_(pods), capacity_(capacity) {}

  ~WatchedCgroups();
  WatchedCgroups(const WatchedCgroups&) = delete;
  WatchedCgroups& operator=(const WatchedCgroups&) = delete;

  /// Before `obj` is loaded: its filter_config and watched_cgroups maps become the
  /// shared pair (created at the first call, holding the current set).
  absl::Status ShareWith(bpf_object* obj);

  /// Recomputes the set from live cgroups and writes the shared maps.
  absl::Status Update(const TargetsConfig& targets);

  /// The shared maps' fds (-1 until the first ShareWith), for the self-metrics.
  int FilterFd() const;
  int SetFd() const;

  /// Cgroups currently in the map (0 while the config does not filter: all are watched).
  size_t WatchedCount() const;
  bool Filtering() const;

 private:
  absl::Status CreateLocked();
  absl::Status WriteLocked(const std::set<uint64_t>& old_set, bool old_filtering);

  WorkloadResolver* workloads_;
  const PodMetadataSource* pods_;
  mutable std::mutex mu_;
  bool filtering_ = false;
  std::set<uint64_t> current_;
  int filter_fd_ = -1;
  int set_fd_ = -1;
  uint32_t capacity_;
};

}  // namespace kmon
