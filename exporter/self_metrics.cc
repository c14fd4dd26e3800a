#include "exporter/self_metrics.h"

#include <absl/strings/str_cat.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/utsname.h>

#include <algorithm>

#include "collectors/bpf_util.h"
#include "collectors/families.h"

namespace kmon {

std::vector<ProgramStats> ReadProgramStats(const bpf_object* obj) {
  std::vector<ProgramStats> out;
  if (obj == nullptr) return out;
  bpf_program* prog;
  bpf_object__for_each_program(prog, const_cast<bpf_object*>(obj)) {
    int fd = bpf_program__fd(prog);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) continue;
    out.push_back({bpf_program__name(prog), info.run_cnt, info.run_time_ns});
  }
  return out;
}

namespace {

bool IsLocalStorage(uint32_t type) {
  return type == BPF_MAP_TYPE_SK_STORAGE || type == BPF_MAP_TYPE_TASK_STORAGE ||
         type == BPF_MAP_TYPE_INODE_STORAGE;
}

}  // namespace

std::optional<MapFill> ReadMapFillFd(const std::string& name, int fd, uint32_t* id) {
  bpf_map_info info{};
  uint32_t len = sizeof info;
  if (fd < 0 || bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return std::nullopt;
  if (id != nullptr) *id = info.id;
  MapFill m{name, 0, info.max_entries, !IsLocalStorage(info.type), MapMemoryBytes(fd)};
  if (!m.has_entries) return m;
  auto n = CountMapEntries(info.type, fd, info.max_entries, info.key_size, info.value_size);
  m.entries = n.ok() ? *n : 0;
  return m;
}

std::vector<MapFill> ReadMapFill(const bpf_object* obj, const std::vector<uint32_t>& skip) {
  std::vector<MapFill> out;
  if (obj == nullptr) return out;
  bpf_map* map;
  bpf_object__for_each_map(map, obj) {
    // .rodata/.bss and friends are libbpf's internal maps, not ours to report.
    if (bpf_map__is_internal(map) || bpf_map__fd(map) < 0) continue;
    uint32_t id = 0;
    auto m = ReadMapFillFd(bpf_map__name(map), bpf_map__fd(map), &id);
    if (!m || std::find(skip.begin(), skip.end(), id) != skip.end()) continue;
    out.push_back(std::move(*m));
  }
  return out;
}

std::vector<prometheus::MetricFamily> BuildSelfMetrics(const SelfState& s) {
  using prometheus::MetricType;
  FamilyBuilder build_info("kmon_build_info",
                           "A metric with a constant '1' value labeled by version, revision, "
                           "libbpf version and kernel release.",
                           MetricType::Gauge, {"version", "revision", "libbpf_version", "kernel"});
  build_info.AddGauge({s.version, s.revision, s.libbpf_version, s.kernel}, 1);

  FamilyBuilder up("kmon_collector_up", "1 when the collector started and attached, else 0.",
                   MetricType::Gauge, {"collector"});
  FamilyBuilder dur("kmon_collector_scrape_duration_seconds",
                    "Time the collector took to produce its metrics in this scrape.",
                    MetricType::Gauge, {"collector"});
  FamilyBuilder runs("kmon_bpf_program_runs_total",
                     "Times the kernel ran the BPF program (needs kernel.bpf_stats_enabled).",
                     MetricType::Counter, {"collector", "program"});
  FamilyBuilder run_secs("kmon_bpf_program_run_seconds_total",
                         "Time the kernel spent in the BPF program.", MetricType::Counter,
                         {"collector", "program"});
  FamilyBuilder entries("kmon_bpf_map_entries", "Entries in the BPF map.", MetricType::Gauge,
                        {"collector", "map"});
  FamilyBuilder max_entries("kmon_bpf_map_max_entries", "Capacity of the BPF map.",
                            MetricType::Gauge, {"collector", "map"});
  FamilyBuilder memory(
      "kmon_bpf_map_memory_bytes",
      "Kernel memory the BPF map holds, as the kernel reports it (fdinfo memlock).",
      MetricType::Gauge, {"collector", "map"});
  auto add_maps = [&](const std::string& collector, const std::vector<MapFill>& maps) {
    for (const auto& m : maps) {
      if (m.has_entries) {
        entries.AddGauge({collector, m.name}, static_cast<double>(m.entries));
        max_entries.AddGauge({collector, m.name}, static_cast<double>(m.max_entries));
      }
      memory.AddGauge({collector, m.name}, static_cast<double>(m.memory_bytes));
    }
  };
  FamilyBuilder lost("kmon_events_lost_total", "Events the collector could not record, by reason.",
                     MetricType::Counter, {"collector", "reason"});
  FamilyBuilder overflow("kmon_series_overflow_total",
                         "Series folded into \"__overflow__\" by the per-collector series limit.",
                         MetricType::Counter, {"collector"});
  for (const auto& c : s.collectors) {
    up.AddGauge({c.name}, c.up && c.collected ? 1 : 0);
    if (!c.up) continue;
    dur.AddGauge({c.name}, c.scrape_seconds);
    for (const auto& p : s.bpf_stats ? ReadProgramStats(c.object) : std::vector<ProgramStats>{}) {
      runs.AddCounter({c.name, p.name}, static_cast<double>(p.run_count));
      run_secs.AddCounter({c.name, p.name}, static_cast<double>(p.run_time_ns) / 1e9);
    }
    add_maps(c.name, ReadMapFill(c.object, s.shared_map_ids));
    for (const auto& [reason, n] : c.lost)
      lost.AddCounter({c.name, reason}, static_cast<double>(n));
    overflow.AddCounter({c.name}, static_cast<double>(c.series_overflow));
  }
  add_maps("shared", s.shared_maps);
  FamilyBuilder reload_ok("kmon_config_last_reload_successful",
                          "1 when the last config (re)load succeeded.", MetricType::Gauge, {});
  reload_ok.AddGauge({}, s.last_reload_ok ? 1 : 0);
  FamilyBuilder reload_ts("kmon_config_last_reload_success_timestamp_seconds",
                          "Unix time of the last successful config load.", MetricType::Gauge, {});
  reload_ts.AddGauge({}, s.last_reload_success_unix);
  FamilyBuilder watched("kmon_watched_cgroups",
                        "Entries in the watched-cgroups control map (0: every cgroup is watched).",
                        MetricType::Gauge, {});
  watched.AddGauge({}, static_cast<double>(s.watched_cgroups));
  FamilyBuilder kube_up("kmon_kubernetes_watch_up",
                        "1 while the pod watch of this scope is listed and connected; 0 during an "
                        "API outage (the last known pods keep naming series).",
                        MetricType::Gauge, {"scope"});
  FamilyBuilder kube_pods("kmon_kubernetes_pods",
                          "Pods known: of this node (scope node), in the pod-IP index (cluster).",
                          MetricType::Gauge, {"scope"});
  FamilyBuilder kube_sync("kmon_kubernetes_last_sync_timestamp_seconds",
                          "Unix time the pod watch of this scope last heard from the API.",
                          MetricType::Gauge, {"scope"});
  for (const KubernetesWatchState& k : s.kubernetes) {
    kube_up.AddGauge({k.scope}, k.up ? 1 : 0);
    kube_pods.AddGauge({k.scope}, static_cast<double>(k.pods));
    kube_sync.AddGauge({k.scope}, k.last_sync_unix);
  }

  std::vector<prometheus::MetricFamily> out;
  for (const FamilyBuilder* b :
       {&build_info, &up, &dur, &runs, &run_secs, &entries, &max_entries, &memory, &lost, &overflow,
        &reload_ok, &reload_ts, &watched, &kube_up, &kube_pods, &kube_sync}) {
    prometheus::MetricFamily f = b->Build();
    if (!f.metric.empty()) out.push_back(std::move(f));  // no bare HELP/TYPE lines
  }
  return out;
}

std::string KernelRelease() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return u.release;
}

std::string LibbpfVersion() {
  return absl::StrCat(libbpf_major_version(), ".", libbpf_minor_version());
}

}  // namespace kmon
