// `tcp`: Kmon's server-side request latency per workload and port, connection
// events, bytes per protocol; and the request edges the topology collector reads.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "collectors/collector.h"
#include "collectors/families.h"
#include "collectors/topology_feed.h"

struct tcp_bpf;

namespace kmon {

/// Converts configured bounds in seconds to the kernel's nanoseconds (rounded).
std::vector<uint64_t> BoundsToNanos(const std::vector<double>& seconds);

class TcpCollector : public Collector {
 public:
  explicit TcpCollector(const CollectorDeps& deps);
  ~TcpCollector() override;

  absl::Status Start(const Config& config) override;
  absl::Status Reconfigure(const Config& config) override;
  void Collect(std::vector<prometheus::MetricFamily>* out) noexcept override;
  void Stop() override;
  const bpf_object* BpfObject() const override;
  std::map<std::string, uint64_t> EventsLost() const override;
  uint64_t SeriesOverflow() const override;

 private:
  absl::Status WriteControlMaps(const Config& config);
  absl::Status ReadEdges(std::vector<EdgeHist>* edges, std::vector<double>* bounds);
  void CollectLocked(std::vector<prometheus::MetricFamily>* out);
  std::optional<WorkloadLabels> LabelsOf(uint64_t cgroup_id);

  CollectorDeps deps_;
  tcp_bpf* skel_ = nullptr;
  mutable std::mutex mu_;
  std::vector<double> bounds_;  // the bounds the kernel's histograms use now
  int64_t max_series_ = 20000;
  SeriesBudget budget_;
  uint64_t read_errors_ = 0;
};

}  // namespace kmon
