// Keeps every BPF object's watched-cgroups control map equal to the set of live
// cgroups the config's `targets` select. Written in place, so programs are never
// reloaded when the targets change or pods come and go.
#pragma once

#include <cstdint>
#include <mutex>
#include <set>
#include <vector>

#include <absl/status/status.h>

#include "collectors/collector_config.h"
#include "provider/workload.h"

namespace kmon {

/// True when the cgroup of this identity (and pod metadata, if known) is selected.
bool TargetSelects(const TargetsConfig& targets, const CgroupIdentity& id, const PodMeta* meta);

class WatchedCgroups {
 public:
  explicit WatchedCgroups(WorkloadResolver* workloads, const PodMetadataSource* pods = nullptr)
      : workloads_(workloads), pods_(pods) {}

  /// Adds a BPF object's (filter_config, watched_cgroups) map pair and brings it up to date.
  absl::Status Register(int filter_config_fd, int watched_cgroups_fd);
  /// Removes a map pair (when its collector stops).
  void Unregister(int filter_config_fd);

  /// Recomputes the set from live cgroups and writes every registered map pair.
  absl::Status Update(const TargetsConfig& targets);

  /// Cgroups currently in the map (0 while the config does not filter: all are watched).
  size_t WatchedCount() const;
  bool Filtering() const;

 private:
  absl::Status WritePair(int filter_fd, int set_fd, const std::set<uint64_t>& old_set);

  WorkloadResolver* workloads_;
  const PodMetadataSource* pods_;
  mutable std::mutex mu_;
  bool filtering_ = false;
  std::set<uint64_t> current_;
  std::vector<std::pair<int, int>> pairs_;
};

}  // namespace kmon
