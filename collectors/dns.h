// `dns`: the latency of every DNS query a workload makes, by the rcode of its
// answer, and the queries left unanswered (Kmon's DNS indicator), from
// cgroup_skb programs on the cgroup v2 root (bpf/dns.bpf.c says why).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectors/bpf_collector.h"
#include "collectors/data_source.h"

struct bpf_link;
struct dns_bpf;

namespace kmon {

/// collectors.dns
struct DnsConfig : CollectorSectionOf<DnsConfig> {
  static constexpr char kName[] = "dns";
  /// Server ports: queries sent to them and answers from them are timed.
  std::vector<uint16_t> ports{53};
  /// A query unanswered this long is a timeout (glibc's resolver waits 5 s).
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);
  std::vector<double> latency_buckets{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,  5};
};
void ParseDnsSection(YamlParser& p, const YamlValue& v, DnsConfig* c);

/// The `rcode` label: the RFC 1035/6895 name of a 4-bit header RCODE
/// (NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN, YXRRSET,
/// NXRRSET, NOTAUTH, NOTZONE, DSOTYPENOTIMP), else the number ("12").
std::string DnsRcodeName(uint32_t rcode);

/// A latency histogram of one (cgroup, rcode), summed over CPUs.
struct DnsHist {
  uint64_t cgroup_id = 0;
  uint32_t rcode = 0;
  std::vector<uint64_t> slots;  // per bucket, not cumulative; the last is +Inf
  uint64_t sum_ns = 0;
};

/// Timeouts of one cgroup.
struct DnsTimeouts {
  uint64_t cgroup_id = 0;
  uint64_t count = 0;
};

/// The data maps (collectors/data_source.h): histograms and the timeouts the
/// kernel side found (late answers, queries re-sent after the timeout).
using DnsDataSource = DataSource<DnsHist, DnsTimeouts>;

/// Turns the data into kmon_dns_request_duration_seconds and
/// kmon_dns_timeouts_total. Pure apart from the labeler: golden tests feed it
/// fixed input. `bounds` are the histogram's upper bounds in seconds.
std::vector<prometheus::MetricFamily> BuildDnsFamilies(const std::vector<DnsHist>& hists,
                                                       const std::vector<DnsTimeouts>& timeouts,
                                                       const std::vector<double>& bounds,
                                                       WorkloadLabeler* labeler);

class DnsCollector : public BpfCollector {
 public:
  explicit DnsCollector(const CollectorDeps& deps);
  ~DnsCollector() override { Stop(); }

 private:
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override;
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  void AddOwnEventsLost(std::map<std::string, uint64_t>* lost) const override;
  /// Takes the queries pending longer than the timeout out of `pending` and
  /// counts them into swept_.
  absl::Status SweepTimedOut();
  /// Deletes the entries of cgroups that are gone.
  void DropStale(const std::vector<DnsHist>& hists, const std::vector<DnsTimeouts>& timeouts);

  dns_bpf* skel_ = nullptr;
  std::unique_ptr<DnsDataSource> source_;
  std::vector<double> bounds_;   // the bounds the kernel's histograms use now
  std::vector<uint16_t> ports_;  // set in dns_ports now
  uint64_t timeout_ns_ = 0;
  std::map<uint64_t, uint64_t> swept_;  // cgroup -> queries user space found timed out
};

}  // namespace kmon
