// `tcp`: Kmon's server-side request latency per workload and port, connection
// events, bytes per protocol; and the request edges the topology collector reads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bpf/tcp.h"
#include "collectors/bpf_collector.h"
#include "collectors/bpf_util.h"
#include "collectors/peer_addrs.h"
#include "collectors/topology_feed.h"

struct tcp_bpf;

namespace kmon {

/// collectors.tcp
struct TcpConfig : CollectorSectionOf<TcpConfig> {
  static constexpr char kName[] = "tcp";
  std::vector<uint16_t> ports;  // empty: all
  std::vector<double> latency_buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
};
void ParseTcpSection(YamlParser& p, const YamlValue& v, TcpConfig* c);

/// Converts configured bounds in seconds to the kernel's nanoseconds (rounded).
std::vector<uint64_t> BoundsToNanos(const std::vector<double>& seconds);

/// A connect-time histogram of one cgroup, summed over CPUs.
struct TcpConnectHist {
  uint64_t cgroup_id = 0;
  std::vector<uint64_t> slots;  // per bucket, not cumulative; last is +Inf
  uint64_t sum_ns = 0;
};

/// Everything the tcp data maps hold, summed over CPUs.
struct TcpData {
  // Request histograms: the server's per port is the sum of its entries. Read from
  // the kernel, one entry per server and port, without client (the topology reads
  // the client -> server edges apart, through ReadEdges).
  std::vector<EdgeHist> edges;
  std::vector<TcpConnectHist> connects;
  std::vector<std::pair<uint64_t, tcp_stats>> stats;  // cgroup -> counters and active gauges
};

/// Adds `v` into `*s`, field by field (one CPU's counters into the sum).
void AddStats(const tcp_stats& v, tcp_stats* s);
/// Folds the counters a nested program kept under a cgroup's twin key
/// (KMON_TCP_NESTED_CGROUP, bpf/tcp.h) into that cgroup's: one entry per cgroup.
void FoldNestedStats(std::vector<std::pair<uint64_t, tcp_stats>>* stats);

/// Seam for the data maps: the BPF maps in production, fixed data in tests.
class TcpDataSource {
 public:
  virtual ~TcpDataSource() = default;
  /// Request edges only (what the topology collector reads); `nslots` histogram
  /// slots each (the bounds plus +Inf).
  virtual absl::Status ReadEdges(size_t nslots, std::vector<EdgeHist>* out) = 0;
  virtual absl::Status Read(size_t nslots, TcpData* out) = 0;
};

/// Turns the data into the eight tcp families. Pure apart from the labeler:
/// golden tests feed it fixed input. `bounds` are the histograms' upper bounds.
std::vector<prometheus::MetricFamily> BuildTcpFamilies(const TcpData& data,
                                                       const std::vector<double>& bounds,
                                                       WorkloadLabeler* labeler);

class TcpCollector : public BpfCollector {
 public:
  explicit TcpCollector(const CollectorDeps& deps);
  ~TcpCollector() override { Stop(); }

 private:
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override;
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  absl::Status ReadEdges(std::vector<EdgeHist>* edges, std::vector<double>* bounds);
  absl::Status OnProviderChange() override;
  /// Deletes the counters of cgroups that are gone.
  void DropStale(const TcpData& data);
  /// Deletes these topology edges from the kernel's map (the feed's dropper).
  void DropEdges(const std::vector<EdgeHist>& edges);

  tcp_bpf* skel_ = nullptr;
  std::unique_ptr<TcpDataSource> source_;
  tcp_config config_{};                         // what the control map holds
  std::vector<double> bounds_;                  // the bounds the kernel's histograms use now
  std::unique_ptr<PeerAddressMap> peer_addrs_;  // pods of other nodes, by address
  // The requests' req_cache: kmon_tcp_flush on every CPU before req_hist or edges
  // are read.
  CpuCacheFlush cache_{"tcp", "requests are counted without the per-CPU cache"};
};

}  // namespace kmon
