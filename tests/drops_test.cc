// Pure parts of the drops collector: reason names from BTF, locations from kallsyms
// text, and the family built from fixed kernel data.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>

#include <bpf/btf.h>
#include <gtest/gtest.h>

#include "bpf/drops.h"
#include "collectors/drops.h"
#include "exporter/exposition.h"
#include "collectors/workload_labeler.h"
#include "provider/workload.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

struct BtfDeleter {
  void operator()(btf* b) const { btf__free(b); }
};
using BtfPtr = std::unique_ptr<btf, BtfDeleter>;

TEST(DropReasonNamesTest, NamesEveryValueOfAConstructedEnum) {
  BtfPtr b(btf__new_empty());
  ASSERT_NE(b, nullptr);
  ASSERT_GT(btf__add_enum(b.get(), "skb_drop_reason", 4), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_NOT_DROPPED_YET", 0), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_CONSUMED", 1), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_DROP_REASON_NOT_SPECIFIED", 2), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_DROP_REASON_NO_SOCKET", 3), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_DROP_REASON_NETFILTER_DROP", 41), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_DROP_REASON_MAX", 42), 0);
  ASSERT_EQ(btf__add_enum_value(b.get(), "SKB_DROP_REASON_SUBSYS_MASK", 0xffff0000), 0);

  auto names = DropReasonNames(b.get());
  ASSERT_TRUE(names.ok()) << names.status();
  const std::map<uint32_t, std::string> want{{0, "not_dropped_yet"},
                                             {1, "consumed"},
                                             {2, "not_specified"},
                                             {3, "no_socket"},
                                             {41, "netfilter_drop"}};
  EXPECT_EQ(*names, want);
  EXPECT_EQ(DropReasonLabel(*names, 3), "no_socket");
  EXPECT_EQ(DropReasonLabel(*names, 42), "unknown_42");
  EXPECT_EQ(DropReasonLabel(*names, 0x20003), "unknown_131075");
}

TEST(DropReasonNamesTest, NoEnumIsAnError) {
  BtfPtr b(btf__new_empty());
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(DropReasonNames(b.get()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(DropReasonNames(nullptr).ok());
}

// The running kernel's BTF against vmlinux.h, which bpftool dumped from the same
// BTF at build time (cmake/BpfObject.cmake): every SKB_DROP_REASON_X = N there must
// come out as names[N] == "x".
TEST(DropReasonNamesTest, RunningKernelMatchesBpftoolsDumpOfItsBtf) {
  if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "no kernel BTF";
  BtfPtr b(btf__load_vmlinux_btf());
  ASSERT_NE(b, nullptr);
  auto names = DropReasonNames(b.get());
  ASSERT_TRUE(names.ok()) << names.status();

  std::ifstream in(std::string(KMON_BINARY_DIR) + "/bpf/vmlinux.h");
  ASSERT_TRUE(in) << "vmlinux.h not generated";
  std::string line;
  bool inside = false;
  int checked = 0;
  const std::regex value(R"(^\s*SKB_DROP_REASON_([A-Z0-9_]+) = (\d+),?$)");
  while (std::getline(in, line)) {
    if (line == "enum skb_drop_reason {") inside = true;
    if (!inside) continue;
    if (line == "};") break;
    std::smatch m;
    if (!std::regex_match(line, m, value)) continue;
    std::string name = m[1];
    if (name == "MAX" || name == "SUBSYS_MASK") continue;
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const uint32_t v = static_cast<uint32_t>(std::stoul(m[2]));
    EXPECT_EQ(DropReasonLabel(*names, v), name) << "value " << v;
    ++checked;
  }
  EXPECT_GT(checked, 50);  // v6.x kernels have well over a hundred reasons
  // The ones the tests and dashboards rely on.
  std::set<std::string> all;
  for (const auto& [v, n] : *names) all.insert(n);
  for (const char* n : {"no_socket", "not_specified", "netfilter_drop", "socket_rcvbuff"}) {
    EXPECT_TRUE(all.count(n)) << n;
  }
  EXPECT_FALSE(all.count("max"));
}

// A slice of /proc/kallsyms as root sees it (KASLR moves it per boot).
constexpr char kKallsyms[] =
    "ffffffff81000000 T _stext\n"
    "ffffffff81000000 T _text\n"
    "ffffffff81a2b3b0 t __pfx_tcp_v4_rcv\n"
    "ffffffff81a2b3c0 T tcp_v4_rcv\n"
    "ffffffff81a2d000 T tcp_v4_early_demux\n"
    "ffffffff82400000 D init_net\n"
    "ffffffff82500000 b some_bss\n"
    "ffffffffc0a01000 t nft_do_chain\t[nf_tables]\n"
    "ffffffffc0a02000 t nft_immediate_eval\t[nf_tables]\n";

TEST(DropLocationLabelTest, SymbolizesFromKallsymsText) {
  const KernelSymbols syms = KernelSymbols::Parse(kKallsyms);
  // kfree_skb's location is a return address inside the dropping function.
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffff81a2b3c0 + 0x3c5), "tcp_v4_rcv");
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffff81a2b3c0 + 1), "tcp_v4_rcv");
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffff81a2cfff), "tcp_v4_rcv");
  // A call that is tcp_v4_rcv's last instruction returns to the next function's start.
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffff81a2d000), "tcp_v4_rcv");
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffff81a2d001), "tcp_v4_early_demux");
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffff81000010), "_stext");
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffffc0a01044), "nft_do_chain");
  EXPECT_EQ(DropLocationLabel(&syms, 0xffffffffc0a02010), "nft_immediate_eval");
  // Below every symbol, or no table at all: the address itself.
  EXPECT_EQ(DropLocationLabel(&syms, 0x1000), "0x1000");
  EXPECT_EQ(DropLocationLabel(&syms, 0), "0x0");
  EXPECT_EQ(DropLocationLabel(nullptr, 0xffffffff81a2b3c5), "0xffffffff81a2b3c5");
}

TEST(DropProtocolLabelTest, NamesEveryProtocol) {
  EXPECT_EQ(DropProtocolLabel(KMON_DROP_PROTO_TCP), "tcp");
  EXPECT_EQ(DropProtocolLabel(KMON_DROP_PROTO_UDP), "udp");
  EXPECT_EQ(DropProtocolLabel(KMON_DROP_PROTO_ICMP), "icmp");
  EXPECT_EQ(DropProtocolLabel(KMON_DROP_PROTO_ICMPV6), "icmpv6");
  EXPECT_EQ(DropProtocolLabel(KMON_DROP_PROTO_OTHER), "other");
  EXPECT_EQ(DropProtocolLabel(99), "other");
}

std::string Location(uint64_t addr) {
  static const KernelSymbols syms = KernelSymbols::Parse(kKallsyms);
  return DropLocationLabel(&syms, addr);
}

TEST(BuildDropFamilyTest, ExactTextForFixedData) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  const std::map<uint32_t, std::string> reasons{{2, "not_specified"}, {3, "no_socket"},
                                                {7, "socket_rcvbuff"}};
  std::vector<DropCount> counts = {
      {0, 0xffffffff81a2b3c0 + 0x3c5, 3, KMON_DROP_PROTO_TCP, 20},  // node level
      {0, 0xffffffff81a2b3c0 + 0x100, 3, KMON_DROP_PROTO_TCP, 2},   // same function: summed
      {200, 0xffffffffc0a01044, 2, KMON_DROP_PROTO_UDP, 5},
      {100, 0xffffffff81a2d010, 7, KMON_DROP_PROTO_OTHER, 1},
      {999, 0xffffffff81a2d010, 7, KMON_DROP_PROTO_UDP, 4},  // a cgroup that is gone
  };
  auto family = BuildDropFamily(counts, reasons, Location, &budget);
  const std::string text = Serialize({family}, ExpositionFormat::kText004);
  EXPECT_EQ(text,
            "# HELP kmon_skb_drops_total Packets the kernel dropped, by the workload owning the "
            "packet's socket (empty for packets without one), L4 protocol, the kernel's drop "
            "reason and the dropping function.\n"
            "# TYPE kmon_skb_drops_total counter\n"
            "kmon_skb_drops_total{namespace=\"\",pod=\"\",container=\"\",protocol=\"tcp\","
            "reason=\"no_socket\",location=\"tcp_v4_rcv\"} 22\n"
            "kmon_skb_drops_total{namespace=\"\",pod=\"\",container=\"nginx.service\","
            "protocol=\"other\",reason=\"socket_rcvbuff\",location=\"tcp_v4_early_demux\"} 1\n"
            "kmon_skb_drops_total{namespace=\"\",pod=\"0c4b8f6e-1d2a-4c3b-9e8f-123456789abc\","
            "container=\"4f2a9c1b7d3e\",protocol=\"udp\",reason=\"not_specified\","
            "location=\"nft_do_chain\"} 5\n");

  // promtool accepts it.
  const CommandResult promtool = RunWithInput("promtool check metrics", text);
  EXPECT_EQ(promtool.exit_status, 0) << promtool.output;
  EXPECT_EQ(promtool.output, "");
}

TEST(BuildDropFamilyTest, SeriesLimitFoldsLaterWorkloads) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 3);
  std::vector<DropCount> counts = {
      {0, 0xffffffff81a2b3c5, 3, KMON_DROP_PROTO_TCP, 1},
      {100, 0xffffffff81a2b3c5, 3, KMON_DROP_PROTO_TCP, 2},
      {100, 0xffffffff81a2d010, 3, KMON_DROP_PROTO_TCP, 3},
      {200, 0xffffffff81a2b3c5, 3, KMON_DROP_PROTO_TCP, 4},
  };
  // Room for 3 series: node level (1) and cgroup 100 (2) fit, cgroup 200 is folded.
  auto family = BuildDropFamily(counts, {{3, "no_socket"}}, Location, &budget);
  ASSERT_EQ(family.metric.size(), 4u);
  double overflow = 0;
  for (const auto& m : family.metric) {
    if (m.label[0].value == kOverflowLabel) overflow += m.counter.value;
  }
  EXPECT_EQ(overflow, 4);
  EXPECT_EQ(budget.Overflowed(), 1u);
}

// The budget counts the series a workload ends up with: addresses in one function
// share a `location`, so they are one series, not one per address.
TEST(BuildDropFamilyTest, SeriesLimitCountsLabelSetsNotAddresses) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 3);
  std::vector<DropCount> counts = {
      {0, 0xffffffff81a2b3c5, 3, KMON_DROP_PROTO_TCP, 1},
      // Three call sites in tcp_v4_rcv: one series for cgroup 100.
      {100, 0xffffffff81a2b3c5, 3, KMON_DROP_PROTO_TCP, 2},
      {100, 0xffffffff81a2b400, 3, KMON_DROP_PROTO_TCP, 3},
      {100, 0xffffffff81a2c000, 3, KMON_DROP_PROTO_TCP, 4},
      {200, 0xffffffff81a2b3c5, 3, KMON_DROP_PROTO_TCP, 5},
  };
  // Room for 3 series: node level, cgroup 100 and cgroup 200 have one each.
  auto family = BuildDropFamily(counts, {{3, "no_socket"}}, Location, &budget);
  ASSERT_EQ(family.metric.size(), 3u);
  std::map<std::string, double> by_container;
  for (const auto& m : family.metric) {
    EXPECT_NE(m.label[0].value, kOverflowLabel);
    EXPECT_EQ(m.label[5].value, "tcp_v4_rcv");
    by_container[m.label[2].value] += m.counter.value;
  }
  EXPECT_EQ(by_container[""], 1);
  EXPECT_EQ(by_container["nginx.service"], 9);
  EXPECT_EQ(by_container["4f2a9c1b7d3e"], 5);
  EXPECT_EQ(budget.Overflowed(), 0u);

  // One series less: the last workload (in cgroup order) is folded, with its one series.
  WorkloadLabeler tight(&workloads, 2);
  family = BuildDropFamily(counts, {{3, "no_socket"}}, Location, &tight);
  ASSERT_EQ(family.metric.size(), 3u);
  double overflow = 0;
  for (const auto& m : family.metric) {
    if (m.label[0].value == kOverflowLabel) overflow += m.counter.value;
  }
  EXPECT_EQ(overflow, 5);
  EXPECT_EQ(tight.Overflowed(), 1u);
}

// An address the table cannot name is shown as an address.
TEST(DropFunctionNameTest, NamesOnlyWhatTheTableHolds) {
  const KernelSymbols syms = KernelSymbols::Parse(kKallsyms);
  EXPECT_EQ(DropFunctionName(&syms, 0xffffffffc0a01044), "nft_do_chain");
  EXPECT_EQ(DropFunctionName(&syms, 0x1000), std::nullopt);
  EXPECT_EQ(DropFunctionName(nullptr, 0xffffffff81a2b3c5), std::nullopt);
}

}  // namespace
}  // namespace kmon
