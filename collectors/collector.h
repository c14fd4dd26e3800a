// One plugin per indicator family. Lifecycle is separate from collection, and what
// every collector does around its own logic lives here once (node_exporter's
// execute() is the model): Start() and Reconfigure() return a status and never
// throw; Collect() never throws (one exception would kill the whole scrape), times
// itself, counts read errors, and opens the labeler's pass around the collector's
// own Read(). BPF collectors get their start sequence from BpfCollector
// (bpf_collector.h).
#pragma once

#include <absl/status/status.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/http_types.h"
#include "base/strict_yaml.h"
#include "collectors/collector_config.h"
#include "collectors/workload_labeler.h"

struct bpf_object;

namespace kmon {

class WorkloadResolver;
class WatchedCgroups;
class TopologyFeed;
class KernelFeatures;
class PeerNames;

/// What every collector is handed at construction: shared, long-lived services.
struct CollectorDeps {
  WorkloadResolver* workloads = nullptr;  // cgroup id -> namespace/pod/container
  WatchedCgroups* watched = nullptr;      // keeps each object's watched-cgroups map current
  /// Serves an extra HTTP path (e.g. /debug/offcpu); may be called from Start().
  std::function<void(const std::string& path, HttpHandler handler)> handle_http;
  TopologyFeed* topology = nullptr;    // tcp publishes request edges, topology reads them
  KernelFeatures* features = nullptr;  // feature probes of the running kernel
  /// Names of pods on other nodes by address (the cluster pod-IP index); may be null.
  const PeerNames* peers = nullptr;
};

class Collector {
 public:
  Collector(std::string name, const CollectorDeps& deps);
  virtual ~Collector() = default;
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  const std::string& name() const { return name_; }

  /// Opens, configures, loads and attaches. An error names what is missing
  /// ("collector=syscalls: attach tp_btf/sys_exit: Operation not permitted"); the
  /// collector is then stopped and may be started again.
  absl::Status Start(const CollectorConfig& config) noexcept;
  /// Applies a new config in place (control maps); programs stay loaded.
  absl::Status Reconfigure(const CollectorConfig& config) noexcept;
  /// Appends this collector's families. Never throws; a failed read is counted in
  /// kmon_events_lost_total{reason="map_read_error"} and logged.
  void Collect(std::vector<prometheus::MetricFamily>* out) noexcept;
  /// Detaches and frees everything. Safe to call twice.
  void Stop() noexcept;
  /// The Provider's facts changed (pods came or went, the pod-IP index moved):
  /// control maps that follow them are brought up to date. A failure is logged.
  void ProviderChanged() noexcept;

  /// The loaded BPF object, for self-metrics (program runs, map fill); may be null.
  virtual const bpf_object* BpfObject() const { return nullptr; }
  /// Events the collector could not record, by reason ("map_full", "map_read_error", ...).
  std::map<std::string, uint64_t> EventsLost() const noexcept;
  /// Series folded into "__overflow__" by the per-collector series limit.
  uint64_t SeriesOverflow() const noexcept;
  /// How long the last Collect() took.
  double LastScrapeSeconds() const noexcept { return scrape_seconds_.load(); }
  /// How the last Collect() went: OK, or why its families were left out (then the
  /// collector is reported down, as node_exporter's scrape_collector_success says
  /// a failed collection, until a collection succeeds again).
  absl::Status LastCollect() const noexcept;
  /// One line on how the collector runs, for the log and `/` (which hook it chose
  /// and why: "hook: tp_btf/sys_exit (fexit refused by this kernel: ...)"); empty
  /// when it has nothing to say. Kept from the last start until the next.
  std::string Detail() const noexcept;

 protected:
  /// The collector's own start; called with mu_ held.
  virtual absl::Status DoStart(const CollectorConfig& config) = 0;
  /// Writes the config into control maps and members; called with mu_ held, at
  /// start (after load) and on every reload.
  virtual absl::Status Configure(const CollectorConfig& config) = 0;
  /// Reads data maps and appends families; called with mu_ held and a labeler
  /// pass open. An error is counted as a read error.
  virtual absl::Status Read(std::vector<prometheus::MetricFamily>* out) = 0;
  /// Frees everything; called without mu_ (take it where state is shared).
  virtual void DoStop() = 0;
  /// True between a successful start and Stop(): Collect reads only then.
  virtual bool Running() const = 0;
  /// Adds the collector's own loss counters (the kernel side's, say).
  virtual void AddEventsLost(std::map<std::string, uint64_t>* lost) const {}
  /// Brings control maps that follow the Provider up to date; called with mu_
  /// held while running. Most collectors follow nothing but the watched cgroups.
  virtual absl::Status OnProviderChange() { return absl::OkStatus(); }

  const CollectorDeps& deps() const { return deps_; }
  WorkloadLabeler& labeler() { return labeler_; }
  /// deps().features, or the running kernel's when none was given.
  KernelFeatures& Features() const;
  /// Sets what Detail() says; any thread.
  void SetDetail(std::string detail) noexcept;

  /// Guards the collector's state against a reload and its own HTTP routes.
  mutable std::mutex mu_;

 private:
  std::string name_;
  CollectorDeps deps_;
  WorkloadLabeler labeler_;
  std::atomic<uint64_t> read_errors_{0};
  std::atomic<double> scrape_seconds_{0};
  mutable std::mutex last_mu_;
  absl::Status last_collect_;  // guarded by last_mu_
  std::string detail_;         // guarded by last_mu_
};

/// Makes one collector. `deps` outlive it.
using CollectorFactory = std::function<std::unique_ptr<Collector>(const CollectorDeps&)>;

/// A collector's config section: its defaults, and its parser (the strict YAML
/// engine; problems are reported to the parser, the section is filled in place).
struct SectionSpec {
  std::function<std::unique_ptr<CollectorSection>()> defaults;
  std::function<void(YamlParser&, const YamlValue&, CollectorSection*)> parse;
};

/// The spec of a section type T with `void ParseSection(YamlParser&, const YamlValue&, T*)`.
template <typename T>
SectionSpec SectionOf(void (*parse)(YamlParser&, const YamlValue&, T*),
                      std::unique_ptr<T> (*defaults)() = nullptr) {
  SectionSpec s;
  s.defaults = [defaults]() -> std::unique_ptr<CollectorSection> {
    if (defaults != nullptr) return defaults();
    return std::make_unique<T>();
  };
  s.parse = [parse](YamlParser& p, const YamlValue& v, CollectorSection* section) {
    parse(p, v, static_cast<T*>(section));
  };
  return s;
}

/// One row of the collector table.
struct CollectorEntry {
  const char* name;
  bool default_enabled;
  CollectorFactory factory;  // null: known to the config but not built yet
  SectionSpec section;
  /// The maps limits.bpf_map_entries may size, with their defaults (README lists them).
  std::vector<BpfMapSize> maps = {};
};

/// Every collector kmon knows, in one place; --collector.NAME flags and the
/// `collectors:` keys come from here.
const std::vector<CollectorEntry>& CollectorTable();

/// Parses a section that has only `enabled` (the collector has no knobs).
void ParseEnabledOnlySection(YamlParser& p, const YamlValue& v, CollectorSection* section);

}  // namespace kmon
