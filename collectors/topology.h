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
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "collectors/collector.h"
#include "collectors/topology_feed.h"
#include "provider/peer_names.h"

namespace kmon {

/// collectors.topology
struct TopologyConfig : CollectorSectionOf<TopologyConfig> {
  static constexpr char kName[] = "topology";
  std::string granularity = "pod";           // pod | workload
  std::string external_peers = "aggregate";  // aggregate | address
  bool service_graph_metrics = false;
};
void ParseTopologySection(YamlParser& p, const YamlValue& v, TopologyConfig* c);

/// One end of an edge, as the topology labels name it.
struct TopologyNode {
  std::string id;  // "namespace/pod", a host process's container value, "external"
  std::string namespace_;
};

/// The q-quantile of a histogram given per-bucket counts (last is +Inf), by linear
/// interpolation inside the bucket, as PromQL's histogram_quantile does. NaN when empty.
double HistogramQuantile(double q, const std::vector<double>& bounds,
                         const std::vector<uint64_t>& slots);

/// Formats a 16-byte address: dotted quad for v4-mapped, RFC 5952 text otherwise.
std::string FormatAddress(const std::array<uint8_t, 16>& addr);

/// Turns named edges into the topology families. Each edge costs its series of
/// the budget (the labeler's); edges beyond it are folded into one whose labels
/// are all "__overflow__".
struct NamedEdge {
  TopologyNode client, server;
  EdgeHist hist;
};
std::vector<prometheus::MetricFamily> BuildTopologyFamilies(
    const std::map<std::string, NamedEdge>& edges, const std::vector<double>& bounds,
    bool service_graph_metrics, WorkloadLabeler* labeler);

class TopologyCollector : public Collector {
 public:
  explicit TopologyCollector(const CollectorDeps& deps);

  /// The graph over the last `window` (nodes and edges, Grafana node-graph fields).
  nlohmann::json Graph(std::chrono::seconds window);
  /// Snapshots held for the API's windows (tests: bounded whatever the scrape rate).
  size_t SnapshotsHeld() {
    std::lock_guard<std::mutex> lock(mu_);
    return snapshots_.size();
  }

 private:
  struct Snapshot {
    std::chrono::steady_clock::time_point at;
    std::map<std::string, EdgeHist> edges;  // by edge id
  };
  absl::Status DoStart(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  void DoStop() override;
  bool Running() const override { return running_; }

  TopologyNode NodeOf(uint64_t cgroup_id, const std::array<uint8_t, 16>& addr);
  /// A pod's node: "namespace/pod", or "namespace/workload" by workload granularity.
  TopologyNode PodNode(const std::string& ns, const std::string& pod,
                       const std::string& workload) const;
  /// Reads edges and names them; keeps a snapshot of them for the API's windows when
  /// the last kept is old enough, and says when they were read in `read_at` when
  /// asked. With `gone`, the edges with an end the labeler found gone in this pass go
  /// there, not to `out`. Caller holds mu_.
  absl::Status ReadNamed(std::map<std::string, NamedEdge>* out, std::vector<double>* bounds,
                         std::vector<EdgeHist>* gone = nullptr,
                         std::chrono::steady_clock::time_point* read_at = nullptr);

  bool running_ = false;
  bool service_graph_metrics_ = false;
  bool by_workload_ = false;                          // granularity: workload
  bool external_by_address_ = false;                  // external_peers: address
  std::unordered_map<uint64_t, TopologyNode> names_;  // last known name of a cgroup
  std::deque<Snapshot> snapshots_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace kmon
