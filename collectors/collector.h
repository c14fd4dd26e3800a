// One plugin per indicator family. Lifecycle is separate from collection:
// Start() may fail with a reason; Collect() never throws (one exception would kill
// the whole scrape); Reconfigure() rewrites control maps and never reloads programs.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <absl/status/status.h>
#include <prometheus/metric_family.h>

#include "exporter/config.h"
#include "base/http_types.h"

struct bpf_object;

namespace kmon {

class WorkloadResolver;
class WatchedCgroups;
class TopologyFeed;

/// What every collector is handed at construction: shared, long-lived services.
struct CollectorDeps {
  WorkloadResolver* workloads = nullptr;  // cgroup id -> namespace/pod/container
  WatchedCgroups* watched = nullptr;      // keeps each object's watched-cgroups map current
  /// Serves an extra HTTP path (e.g. /debug/offcpu); may be called from Start().
  std::function<void(const std::string& path, HttpHandler handler)> handle_http;
  TopologyFeed* topology = nullptr;  // tcp publishes request edges, topology reads them
};

class Collector {
 public:
  virtual ~Collector() = default;

  /// Opens, configures, loads and attaches the BPF side. An error names what is
  /// missing ("tp_btf/sys_exit: attach: Operation not permitted").
  virtual absl::Status Start(const Config& config) = 0;

  /// Applies a new config in place (control maps); programs stay loaded.
  virtual absl::Status Reconfigure(const Config& config) = 0;

  /// Appends this collector's families. Must not throw.
  virtual void Collect(std::vector<prometheus::MetricFamily>* out) noexcept = 0;

  /// Detaches and frees everything. Safe to call twice.
  virtual void Stop() = 0;

  /// The loaded BPF object, for self-metrics (program runs, map fill); may be null.
  virtual const bpf_object* BpfObject() const { return nullptr; }

  /// Events the kernel side could not record, by reason ("map_full", ...).
  virtual std::map<std::string, uint64_t> EventsLost() const { return {}; }

  /// Series folded into "__overflow__" by the per-collector series limit.
  virtual uint64_t SeriesOverflow() const { return 0; }
};

using CollectorFactory = std::function<std::unique_ptr<Collector>(const CollectorDeps&)>;

/// One row of the collector table.
struct CollectorEntry {
  const char* name;
  bool default_enabled;
  CollectorFactory factory;  // null: known to the config but not built yet
};

/// Every collector kmon knows, in one place; --collector.NAME flags come from here.
const std::vector<CollectorEntry>& CollectorTable();

}  // namespace kmon
