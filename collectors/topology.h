// `topology`: the service graph from the tcp collector's server-side requests.
// Every request is an edge client -> server; the client is named from the cgroup of
// its socket when it is on this host, else "external" (or its address when
// `external_peers: address`). Serves edge metrics, Grafana's service-graph names on
// request, and /api/v1/topology (nodes and edges over a recent window).
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "collectors/collector.h"
#include "collectors/topology_feed.h"

namespace kmon {

/// One end of an edge, as the topology labels name it.
struct TopologyNode {
  std::string id;         // "namespace/pod", a host process's container value, "external"
  std::string namespace_;
};

/// The q-quantile of a histogram given per-bucket counts (last is +Inf), by linear
/// interpolation inside the bucket, as PromQL's histogram_quantile does. NaN when empty.
double HistogramQuantile(double q, const std::vector<double>& bounds,
                         const std::vector<uint64_t>& slots);

/// Formats a 16-byte address: dotted quad for v4-mapped, RFC 5952 text otherwise.
std::string FormatAddress(const std::array<uint8_t, 16>& addr);

class TopologyCollector : public Collector {
 public:
  explicit TopologyCollector(const CollectorDeps& deps);

  absl::Status Start(const Config& config) override;
  absl::Status Reconfigure(const Config& config) override;
  void Collect(std::vector<prometheus::MetricFamily>* out) noexcept override;
  void Stop() override;

  /// The graph over the last `window` (nodes and edges, Grafana node-graph fields).
  nlohmann::json Graph(std::chrono::seconds window);

 private:
  struct Snapshot {
    std::chrono::steady_clock::time_point at;
    std::map<std::string, EdgeHist> edges;  // by edge id
  };
  TopologyNode NodeOf(uint64_t cgroup_id, const std::array<uint8_t, 16>& addr);
  /// Reads edges and names them; records a snapshot for the API. Caller holds mu_.
  absl::Status ReadNamed(std::map<std::string, std::tuple<TopologyNode, TopologyNode, EdgeHist>>* out,
                         std::vector<double>* bounds);

  CollectorDeps deps_;
  std::mutex mu_;
  bool service_graph_metrics_ = false;
  std::unordered_map<uint64_t, TopologyNode> names_;  // last known name of a cgroup
  std::deque<Snapshot> snapshots_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace kmon
