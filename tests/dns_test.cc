// The dns collector's pure parts: rcode names, the header check BPF applies to
// every message (bpf/dns.h), the config section, and the two families built from
// fixed kernel data (golden text through promtool, and exact samples).
// KMON_UPDATE_GOLDEN=1 rewrites tests/golden/dns_metrics.prom (review the diff).
#include "collectors/dns.h"

#include <gtest/gtest.h>

#include "bpf/dns.h"
#include "collectors/workload_labeler.h"
#include "exporter/config.h"
#include "exporter/exposition.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

TEST(DnsRcodeTest, NamesOfRfc1035And6895ElseTheNumber) {
  const std::vector<std::string> want{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                      "NOTIMP",  "REFUSED", "YXDOMAIN", "YXRRSET",
                                      "NXRRSET", "NOTAUTH", "NOTZONE",  "DSOTYPENOTIMP"};
  for (uint32_t i = 0; i < want.size(); ++i) EXPECT_EQ(DnsRcodeName(i), want[i]) << i;
  EXPECT_EQ(DnsRcodeName(12), "12");
  EXPECT_EQ(DnsRcodeName(15), "15");
}

// A header: id 0x1234, flags byte 2 and 3, qdcount, and zero counts after it.
std::array<uint8_t, KMON_DNS_HDR> Header(uint8_t flags2, uint8_t flags3, uint16_t qdcount) {
  return {0x12,
          0x34,
          flags2,
          flags3,
          static_cast<uint8_t>(qdcount >> 8),
          static_cast<uint8_t>(qdcount),
          0,
          0,
          0,
          0,
          0,
          1};
}

TEST(DnsClassifyTest, QueriesResponsesAndWhatIsNotDns) {
  // dig's query: RD set, one question, one additional (the EDNS OPT record).
  EXPECT_EQ(dns_classify(Header(0x01, 0x20, 1).data()), DNS_MSG_QUERY);
  // An answer: QR, RD, RA; rcode NXDOMAIN in the low nibble of byte 3.
  EXPECT_EQ(dns_classify(Header(0x81, 0x83, 1).data()), DNS_MSG_RESPONSE);
  // FORMERR and NOTIMP answers may carry no question.
  EXPECT_EQ(dns_classify(Header(0x81, 0x81, 0).data()), DNS_MSG_RESPONSE);
  // A query must ask exactly one question.
  EXPECT_EQ(dns_classify(Header(0x01, 0x00, 0).data()), DNS_MSG_MALFORMED);
  EXPECT_EQ(dns_classify(Header(0x01, 0x00, 2).data()), DNS_MSG_MALFORMED);
  EXPECT_EQ(dns_classify(Header(0x81, 0x80, 7).data()), DNS_MSG_MALFORMED);
  // Opcode (bits 3-6 of byte 2): NOTIFY (4) and UPDATE (5) are DNS but not timed;
  // 3 and 7..15 are unassigned.
  EXPECT_EQ(dns_classify(Header(4 << 3, 0, 1).data()), DNS_MSG_OTHER);
  EXPECT_EQ(dns_classify(Header(0x80 | 5 << 3, 0, 1).data()), DNS_MSG_OTHER);
  EXPECT_EQ(dns_classify(Header(3 << 3, 0, 1).data()), DNS_MSG_MALFORMED);
  for (uint8_t op = 7; op < 16; ++op) {
    EXPECT_EQ(dns_classify(Header(static_cast<uint8_t>(op << 3), 0, 1).data()), DNS_MSG_MALFORMED)
        << int{op};
  }
  // Text sent to port 53 ("hello world!") is not a query: opcode 13.
  const char* text = "hello world!";
  EXPECT_EQ(dns_classify(reinterpret_cast<const uint8_t*>(text)), DNS_MSG_MALFORMED);
}

ConfigResult Parse(const std::string& dns) {
  return ParseConfig("collectors:\n  dns:\n" + dns, ProcessEnv());
}

TEST(DnsConfigTest, DefaultsAndEveryKey) {
  const Config defaults = DefaultConfig();  // kept: Get returns a reference into it
  const DnsConfig& d = defaults.collectors.Get<DnsConfig>();
  EXPECT_TRUE(d.enabled);
  EXPECT_EQ(d.ports, std::vector<uint16_t>{53});
  EXPECT_EQ(d.timeout, std::chrono::seconds(5));
  EXPECT_EQ(d.latency_buckets.size(), 13u);

  ConfigResult r =
      Parse("    ports: [53, 5353]\n    timeout: 1500ms\n    latency_buckets: [0.01, 1]\n");
  ASSERT_TRUE(r.config.has_value()) << (r.problems.empty() ? "" : r.problems[0].message);
  const DnsConfig& c = r.config->collectors.Get<DnsConfig>();
  EXPECT_EQ(c.ports, (std::vector<uint16_t>{53, 5353}));
  EXPECT_EQ(c.timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(c.latency_buckets, (std::vector<double>{0.01, 1}));
}

TEST(DnsConfigTest, RefusesWhatCannotWork) {
  struct Case {
    std::string yaml, key, message;
  };
  for (const Case& c : std::vector<Case>{
           {"    ports: []\n", "collectors.dns.ports",
            "must not be empty (set enabled: false to turn the collector off)"},
           {"    timeout: 0\n", "collectors.dns.timeout", "must be more than 0 and at most 5m"},
           {"    timeout: 6m\n", "collectors.dns.timeout", "must be more than 0 and at most 5m"},
           {"    latency_buckets: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]\n",
            "collectors.dns.latency_buckets",
            "has 17 bounds; at most 16 fit the kernel's histogram"},
       }) {
    ConfigResult r = Parse(c.yaml);
    EXPECT_FALSE(r.config.has_value()) << c.yaml;
    ASSERT_EQ(r.problems.size(), 1u) << c.yaml;
    EXPECT_EQ(r.problems[0].key, c.key);
    EXPECT_EQ(r.problems[0].line, 3);
    EXPECT_EQ(r.problems[0].message, c.message);
  }
}

// Fixed contents of the dns data maps, bounds 0.001, 0.01, 0.1: cgroup 100 is
// nginx.service, 200 a pod's container, 999 a cgroup that is gone.
struct FixedDns {
  std::vector<DnsHist> hists{
      {100, 0, {4, 10, 1, 0}, 40'000'000},  // NOERROR
      {100, 3, {0, 2, 0, 0}, 6'000'000},    // NXDOMAIN
      {200, 2, {0, 0, 0, 1}, 2'500'000'000},
      {200, 13, {1, 0, 0, 0}, 100'000},  // an rcode without a name
      {999, 0, {1, 0, 0, 0}, 1000},
  };
  // The kernel side's timeouts and user space's, for one cgroup: summed.
  std::vector<DnsTimeouts> timeouts{{200, 3}, {200, 4}, {999, 1}};
  std::vector<double> bounds{0.001, 0.01, 0.1};
};

TEST(DnsFamiliesTest, GoldenTextPassesPromtool) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler labeler(&workloads);
  FixedDns d;
  auto families = BuildDnsFamilies(d.hists, d.timeouts, d.bounds, &labeler);
  ExpectGoldenMetrics(Serialize(families, ExpositionFormat::kText004), "dns_metrics.prom");
}

TEST(DnsFamiliesTest, SamplesAreExact) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler labeler(&workloads);
  FixedDns d;
  auto fams = BuildDnsFamilies(d.hists, d.timeouts, d.bounds, &labeler);
  ASSERT_EQ(fams.size(), 2u);
  ASSERT_EQ(fams[0].metric.size(), 4u);  // the gone cgroup's histogram is not there
  const auto* ok = FindSample(fams, "kmon_dns_request_duration_seconds",
                              {{"container", "nginx.service"}, {"rcode", "NOERROR"}});
  ASSERT_NE(ok, nullptr);
  EXPECT_EQ(ok->histogram.sample_count, 15u);
  EXPECT_DOUBLE_EQ(ok->histogram.sample_sum, 0.04);
  ASSERT_EQ(ok->histogram.bucket.size(), 4u);
  EXPECT_EQ(ok->histogram.bucket[0].cumulative_count, 4u);
  EXPECT_EQ(ok->histogram.bucket[1].cumulative_count, 14u);
  EXPECT_EQ(ok->histogram.bucket[2].cumulative_count, 15u);
  EXPECT_EQ(ok->histogram.bucket[3].cumulative_count, 15u);
  EXPECT_NE(FindSample(fams, "kmon_dns_request_duration_seconds",
                       {{"container", "4f2a9c1b7d3e"}, {"rcode", "13"}}),
            nullptr);
  // A workload with answers and no timeouts says 0, so ratios and rate() work.
  const auto* none = FindSample(fams, "kmon_dns_timeouts_total", {{"container", "nginx.service"}});
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(none->counter.value, 0);
  const auto* pod = FindSample(fams, "kmon_dns_timeouts_total", {{"container", "4f2a9c1b7d3e"}});
  ASSERT_NE(pod, nullptr);
  EXPECT_EQ(pod->counter.value, 7);
  EXPECT_EQ(fams[1].metric.size(), 2u);
}

TEST(DnsFamiliesTest, TheSeriesBudgetFoldsLaterWorkloads) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  // nginx.service costs 2 histograms of 3 bounds (6 + 6) and its timeouts (1).
  WorkloadLabeler labeler(&workloads, 13);
  FixedDns d;
  auto fams = BuildDnsFamilies(d.hists, d.timeouts, d.bounds, &labeler);
  EXPECT_NE(FindSample(fams, "kmon_dns_timeouts_total", {{"container", "nginx.service"}}), nullptr);
  const auto* folded = FindSample(fams, "kmon_dns_timeouts_total", {{"pod", kOverflowLabel}});
  ASSERT_NE(folded, nullptr);
  EXPECT_EQ(folded->counter.value, 7);
}

}  // namespace
}  // namespace kmon
