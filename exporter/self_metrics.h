// kmon's metrics about itself: build info, collector health and cost, BPF program
// runs and run time, map fill, lost events, reload status, watched cgroups.
#pragma once

#include <prometheus/metric_family.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

struct bpf_object;

namespace kmon {

/// One BPF program's counters as the kernel reports them with bpf_stats enabled.
struct ProgramStats {
  std::string name;
  uint64_t run_count = 0;
  uint64_t run_time_ns = 0;
};
struct MapFill {
  std::string name;
  uint64_t entries = 0;
  uint64_t max_entries = 0;
  /// False for local-storage maps (per socket or task): they have no key walk and
  /// no capacity, only memory.
  bool has_entries = true;
  uint64_t memory_bytes = 0;  // as the kernel reports it
};

struct CollectorSelfState {
  std::string name;
  bool up = false;  // started and attached
  double scrape_seconds = 0;
  const bpf_object* object = nullptr;  // programs and maps are read from it
  std::map<std::string, uint64_t> lost;
  uint64_t series_overflow = 0;
  /// This scrape's collection succeeded; kmon_collector_up is 0 when it did not
  /// (the collector's other self-metrics stay, its loss counters most of all).
  bool collected = true;
};

/// One pod watch of the Kubernetes provider: "node" (this node's pods) or "cluster"
/// (the pod-IP index).
struct KubernetesWatchState {
  std::string scope;
  bool up = false;
  uint64_t pods = 0;
  double last_sync_unix = 0;  // 0: never synced
};

struct SelfState {
  std::string version, revision, libbpf_version, kernel;
  std::vector<CollectorSelfState> collectors;
  bool last_reload_ok = true;
  double last_reload_success_unix = 0;
  uint64_t watched_cgroups = 0;
  /// The kernel keeps per-program stats: else kmon_bpf_program_* are left out (zeros
  /// would read as "never ran").
  bool bpf_stats = true;
  /// Maps every collector's object uses (the watched-cgroups pair), reported once
  /// under collector="shared".
  std::vector<MapFill> shared_maps;
  std::vector<uint32_t> shared_map_ids;  // their kernel ids, left out of the collectors' rows
  /// Empty when kmon runs without Kubernetes: then no kmon_kubernetes_* series.
  std::vector<KubernetesWatchState> kubernetes;
};

/// Reads the kernel's counters of every program and map of a loaded object; maps
/// whose kernel id is in `skip` (the shared ones, reported once) are left out.
std::vector<ProgramStats> ReadProgramStats(const bpf_object* obj);
std::vector<MapFill> ReadMapFill(const bpf_object* obj, const std::vector<uint32_t>& skip = {});
/// The same for one map by its fd ({} when the kernel does not answer).
std::optional<MapFill> ReadMapFillFd(const std::string& name, int fd, uint32_t* id = nullptr);

std::vector<prometheus::MetricFamily> BuildSelfMetrics(const SelfState& state);

/// The running kernel's release ("6.18.44-...") from uname.
std::string KernelRelease();
/// "1.1" from libbpf_major_version/libbpf_minor_version.
std::string LibbpfVersion();

}  // namespace kmon
