// The drops collector against the running kernel: workloads make packet drops whose
// number, reason, protocol and owner are known, and kmon must count them.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "collectors/drops.h"
#include "collectors/kernel_features.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/root/root_util.h"

namespace kmon {
namespace {

using testing::RunInCgroup;
using testing::TestCgroup;
using testing::TestNetns;

constexpr int kConnects = 20;
// Nothing listens on it in a network namespace of the test's own.
constexpr int kClosedPort = 9;

// Sum of kmon_skb_drops_total over the samples whose labels include all of `want`.
double SumDrops(const std::vector<prometheus::MetricFamily>& fams,
                const std::map<std::string, std::string>& want) {
  double sum = 0;
  for (const auto& f : fams) {
    if (f.name != "kmon_skb_drops_total") continue;
    for (const auto& m : f.metric) {
      size_t matched = 0;
      for (const auto& l : m.label) {
        auto it = want.find(l.name);
        if (it != want.end() && it->second == l.value) ++matched;
      }
      if (matched == want.size()) sum += m.counter.value;
    }
  }
  return sum;
}

std::vector<prometheus::MetricFamily> Scrape(DropsCollector* c) {
  std::vector<prometheus::MetricFamily> fams;
  c->Collect(&fams);
  return fams;
}

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

sockaddr_in6 Loopback6(int port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  a.sin6_port = htons(static_cast<uint16_t>(port));
  return a;
}

// `n` TCP connects to a port nobody listens on (over ::1 with `v6`); exits 1 unless
// each is refused.
void RefusedConnects(int port, int n, bool v6 = false) {
  sockaddr_in a = Loopback(port);
  sockaddr_in6 a6 = Loopback6(port);
  sockaddr* addr = v6 ? reinterpret_cast<sockaddr*>(&a6) : reinterpret_cast<sockaddr*>(&a);
  const socklen_t len = v6 ? sizeof a6 : sizeof a;
  for (int i = 0; i < n; ++i) {
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0) _exit(1);
    int rc = connect(fd, addr, len);
    if (rc == 0 || errno != ECONNREFUSED) _exit(1);
    close(fd);
  }
}

// RefusedConnects in network namespace `netns`, from a child in `cg`; its exit status.
int RefusedConnectsIn(const TestCgroup& cg, const TestNetns& netns, int n, bool v6 = false) {
  pid_t pid = testing::SpawnInCgroup(
      cg, [&] { RefusedConnects(kClosedPort, n, v6); }, netns.name());
  return pid < 0 ? -1 : testing::WaitChild(pid);
}

// Sends `sent` datagrams to a UDP socket with the smallest receive buffer, then
// reads what it kept: the rest overflowed the buffer. Stores sent - received.
void OverflowUdpReceiveBuffer(int sent, std::atomic<int>* dropped) {
  int rx = socket(AF_INET, SOCK_DGRAM, 0);
  int tx = socket(AF_INET, SOCK_DGRAM, 0);
  if (rx < 0 || tx < 0) _exit(1);
  int small = 1;  // the kernel raises it to its minimum (SOCK_MIN_RCVBUF)
  setsockopt(rx, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in a = Loopback(0);
  socklen_t len = sizeof a;
  if (bind(rx, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(1);
  getsockname(rx, reinterpret_cast<sockaddr*>(&a), &len);
  char payload[1000] = {};
  for (int i = 0; i < sent; ++i) {
    if (sendto(tx, payload, sizeof payload, 0, reinterpret_cast<sockaddr*>(&a), sizeof a) !=
        static_cast<ssize_t>(sizeof payload)) {
      _exit(1);
    }
  }
  // Loopback delivers in softirq; let any deferred delivery finish before counting.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  int received = 0;
  while (recv(rx, payload, sizeof payload, MSG_DONTWAIT) > 0) ++received;
  dropped->store(sent - received);
}

// An int the forked workload can write and the test read.
struct Shared {
  Shared() {
    void* p = mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    value = p == MAP_FAILED ? nullptr : new (p) std::atomic<int>(-1);
  }
  ~Shared() {
    if (value) munmap(value, sizeof(std::atomic<int>));
  }
  std::atomic<int>* value;
};

using DropsRootTest = testing::CollectorRootTest;

// Each SYN to a closed port finds no socket: tcp_v4_rcv (tcp_v6_rcv) answers with a
// RST and drops it with reason no_socket (one drop per connect: the RST ends the
// attempt, nothing is retransmitted). The SYN is dropped on the receiving side,
// where it has no socket (loopback orphans it on transmit), so the drop is node level.
//
// In a network namespace of the test's own nothing else is sent and no firewall
// rule stands in the way, so those are the only drops the connects cause there.
// Node-level labels do not tell namespaces apart, though: the host's own traffic
// could add drops of the same kind meanwhile (never remove any). A run that sees
// more is repeated; kmon must be exact in one of three.
void ExpectExactlyOneNoSocketDropPerConnect(DropsCollector* c, const TestCgroup& cg, bool v6) {
  const std::map<std::string, std::string> want{{"namespace", ""},
                                                {"pod", ""},
                                                {"container", ""},
                                                {"protocol", "tcp"},
                                                {"reason", "no_socket"},
                                                {"location", v6 ? "tcp_v6_rcv" : "tcp_v4_rcv"}};
  const std::map<std::string, std::string> tcp{{"protocol", "tcp"}};
  double seen = -1, seen_tcp = -1;
  for (int attempt = 0; attempt < 3; ++attempt) {
    TestNetns netns;
    auto before = Scrape(c);
    ASSERT_EQ(RefusedConnectsIn(cg, netns, kConnects, v6), 0);
    auto after = Scrape(c);
    seen = SumDrops(after, want) - SumDrops(before, want);
    seen_tcp = SumDrops(after, tcp) - SumDrops(before, tcp);
    if (seen <= kConnects && seen_tcp <= kConnects) break;
  }
  EXPECT_EQ(seen, kConnects);
  // No other TCP drop anywhere, for any workload or reason.
  EXPECT_EQ(seen_tcp, kConnects);
  EXPECT_EQ(c->EventsLost().at("map_full"), 0u);
}

TEST_F(DropsRootTest, SynsToAClosedPortAreTcpNoSocketDropsInTcpV4Rcv) {
  DropsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  absl::Status st = c.Start(DefaultConfig());
  ASSERT_TRUE(st.ok()) << st;
  TestCgroup cg;
  ExpectExactlyOneNoSocketDropPerConnect(&c, cg, false);
}

// The running kernel, but without BTF until the test says otherwise.
class BtfLaterFeatures : public KernelFeatures {
 public:
  absl::StatusOr<const btf*> VmlinuxBtf() override {
    if (!available) return absl::FailedPreconditionError("load vmlinux BTF: not yet");
    return real_.VmlinuxBtf();
  }
  void Release() override { real_.Release(); }
  bool available = false;

 private:
  RunningKernelFeatures real_;
};

// A start that fails in a feature probe leaves nothing loaded, and the same
// collector starts for real later (what a reload does for a collector that is down).
TEST_F(DropsRootTest, AStartThatFailedAProbeCanBeRetried) {
  BtfLaterFeatures features;
  DropsCollector c({.workloads = workloads_.get(), .watched = watched_.get(),
                    .features = &features});
  const uint32_t before = testing::MaxBpfProgramId();
  absl::Status st = c.Start(DefaultConfig());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), "collector=drops: load vmlinux BTF: not yet");
  EXPECT_EQ(c.BpfObject(), nullptr);
  EXPECT_TRUE(testing::BpfProgramIds("kmon_kfree_skb", before).empty());
  std::vector<prometheus::MetricFamily> none;
  c.Collect(&none);
  EXPECT_TRUE(none.empty());

  features.available = true;
  st = c.Start(DefaultConfig());
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_NE(c.BpfObject(), nullptr);
  EXPECT_EQ(testing::BpfProgramIds("kmon_kfree_skb", before).size(), 1u);
  TestCgroup cg;
  ExpectExactlyOneNoSocketDropPerConnect(&c, cg, false);
}

TEST_F(DropsRootTest, SynsToAClosedPortOverIpv6AreTcpNoSocketDropsInTcpV6Rcv) {
  if (access("/proc/sys/net/ipv6", F_OK) != 0) GTEST_SKIP() << "no IPv6 in this kernel";
  DropsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  absl::Status st = c.Start(DefaultConfig());
  ASSERT_TRUE(st.ok()) << st;
  TestCgroup cg;
  ExpectExactlyOneNoSocketDropPerConnect(&c, cg, true);
}

TEST_F(DropsRootTest, UdpReceiveBufferOverflowIsChargedToTheReceiversWorkload) {
  DropsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DefaultConfig()).ok());
  TestCgroup cg;
  Shared dropped;
  ASSERT_NE(dropped.value, nullptr);
  ASSERT_EQ(RunInCgroup(cg, [&] { OverflowUdpReceiveBuffer(300, dropped.value); }), 0);
  const int truth = dropped.value->load();
  ASSERT_GT(truth, 0) << "the receive buffer never overflowed";

  auto fams = Scrape(&c);
  // The socket is known on the drop (the receive path passes it as rx_sk), so the
  // drops are the receiving workload's, exactly as many as datagrams were lost.
  EXPECT_EQ(SumDrops(fams, {{"container", cg.name()},
                            {"protocol", "udp"},
                            {"reason", "socket_rcvbuff"}}),
            truth);
  EXPECT_EQ(SumDrops(fams, {{"container", cg.name()}}), truth);
  // Counters are cumulative: a second scrape of the same data gives the same numbers.
  EXPECT_EQ(SumDrops(Scrape(&c), {{"container", cg.name()}}), truth);
}

TEST_F(DropsRootTest, WatchedCgroupsFilterWorkloadDropsButNeverNodeLevelOnes) {
  DropsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = DefaultConfig();
  ASSERT_TRUE(c.Start(cfg).ok());

  // host_processes: false watches only pod cgroups: our test cgroup is not one.
  cfg.targets.host_processes = false;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  TestCgroup cg;
  Shared dropped;
  ASSERT_NE(dropped.value, nullptr);
  ASSERT_EQ(RunInCgroup(cg, [&] { OverflowUdpReceiveBuffer(300, dropped.value); }), 0);
  ASSERT_GT(dropped.value->load(), 0);
  EXPECT_EQ(SumDrops(Scrape(&c), {{"container", cg.name()}}), 0);
  // Node-level drops are counted all the same.
  ExpectExactlyOneNoSocketDropPerConnect(&c, cg, false);

  cfg.targets.host_processes = true;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  ASSERT_EQ(RunInCgroup(cg, [&] { OverflowUdpReceiveBuffer(300, dropped.value); }), 0);
  const int truth = dropped.value->load();
  ASSERT_GT(truth, 0);
  EXPECT_EQ(SumDrops(Scrape(&c), {{"container", cg.name()}, {"reason", "socket_rcvbuff"}}),
            truth);
}

}  // namespace
}  // namespace kmon
