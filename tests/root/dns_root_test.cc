// The dns collector against the running kernel: clients of three kinds (a Python
// script using every socket call shape, dig, glibc's own resolver) in cgroups of
// their own ask a test server (tests/root/dns_server.h) that answers after 30 ms
// with the rcode each name asks for, and kmon must count exactly those queries,
// in the right bucket, under the right rcode; plus timeouts and malformed packets.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "collectors/bpf_util.h"
#include "collectors/dns.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/root/dns_server.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::DnsServer;
using testing::TestCgroup;
using testing::TestNetns;

// The test's buckets: every answer (30 ms and whatever a busy machine adds) falls
// in (0.025, 0.1]. The timeout sits between the usual and the late delay.
constexpr char kBuckets[] = "[0.025, 0.1, 1]";
constexpr char kTimeout[] = "300ms";

// The client: `python3 -c kPythonClient PORT STEP...`, each step
// MODE:COUNT:NAME:RCODE. Exits non-zero unless every query was answered with its
// rcode (silent steps expect no answer and wait a little before closing).
constexpr char kPythonClient[] = R"py(
import select, socket, struct, sys, time
port = int(sys.argv[1])
next_id = [0x4100]
def query(name, edns):
    next_id[0] += 1
    q = struct.pack("!HHHHHH", next_id[0], 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    if edns:
        q += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return next_id[0], q
def check(resp, qid, rcode):
    rid, flags = struct.unpack("!HH", resp[:4])
    if rid != qid or not flags & 0x8000 or flags & 0xf != rcode:
        sys.exit("bad answer %r to %d" % (resp[:4], qid))
def read_tcp(f):
    n = struct.unpack("!H", f.read(2))[0]
    return f.read(n)
def udp(family):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    return s
v4, v6 = ("127.0.0.1", port), ("::1", port)
for step in sys.argv[2:]:
    mode, count, name, rcode = step.split(":")
    count, rcode = int(count), int(rcode)
    if mode == "sendto4":  # unconnected, as musl does
        s = udp(socket.AF_INET)
        for i in range(count):
            qid, q = query(name, i % 2 == 1)
            s.sendto(q, v4)
            check(s.recvfrom(4096)[0], qid, rcode)
    elif mode == "send6":  # connected, as glibc does
        s = udp(socket.AF_INET6)
        s.connect(v6)
        for i in range(count):
            qid, q = query(name, True)
            s.send(q)
            check(s.recv(4096), qid, rcode)
    elif mode == "sendmsg4":
        s = udp(socket.AF_INET)
        for i in range(count):
            qid, q = query(name, False)
            s.sendmsg([q[:12], q[12:]], [], 0, v4)
            check(s.recvmsg(4096)[0], qid, rcode)
    elif mode == "parallel6":  # all queries out first, answers in any order
        s = udp(socket.AF_INET6)
        s.connect(v6)
        ids = set()
        for i in range(count):
            qid, q = query(name, False)
            ids.add(qid)
            s.send(q)
        while ids:
            r = s.recv(4096)
            rid = struct.unpack("!H", r[:2])[0]
            check(r, rid, rcode)
            ids.remove(rid)
    elif mode == "tcpsplit6":  # the length in a segment of its own
        s = socket.create_connection(v6, timeout=3)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        for i in range(count):
            qid, q = query(name, True)
            s.send(struct.pack("!H", len(q)))
            time.sleep(0.01)
            s.send(q)
            check(read_tcp(f), qid, rcode)
        s.close()
    elif mode == "tcppipe4":  # every query in one segment
        s = socket.create_connection(v4, timeout=3)
        f = s.makefile("rb")
        out, ids = b"", set()
        for i in range(count):
            qid, q = query(name, True)
            ids.add(qid)
            out += struct.pack("!H", len(q)) + q
        s.sendall(out)
        while ids:
            r = read_tcp(f)
            rid = struct.unpack("!H", r[:2])[0]
            check(r, rid, rcode)
            ids.remove(rid)
        s.close()
    elif mode == "silent":  # no answer comes; give up after 0.5 s
        s = udp(socket.AF_INET)
        for i in range(count):
            s.sendto(query(name, False)[1], v4)
        if select.select([s], [], [], 0.5)[0]:
            sys.exit("an answer to a silent query")
        s.close()
    elif mode == "garbage":  # not DNS: too short, then text
        s = udp(socket.AF_INET)
        s.sendto(b"\x01\x02\x03\x04\x05", v4)
        s.sendto(b"hello world! this is not a DNS query", v4)
    else:
        sys.exit("unknown mode " + mode)
)py";

Config DnsTestConfig(uint16_t port) {
  const std::string yaml = "collectors:\n  dns:\n    ports: [" + std::to_string(port) +
                           "]\n    timeout: " + kTimeout + "\n    latency_buckets: " + kBuckets +
                           "\n";
  ConfigResult r = ParseConfig(yaml, ProcessEnv());
  EXPECT_TRUE(r.problems.empty()) << r.problems[0].ToString();
  return r.config.value_or(DefaultConfig());
}

// Runs argv in `cg` (and network namespace `netns`), stdout to /dev/null; its exit
// status. With `resolv_conf`, in a mount namespace of its own where that file is
// /etc/resolv.conf.
int RunIn(const TestCgroup& cg, const std::vector<std::string>& argv, const std::string& netns = "",
          const std::string& resolv_conf = "") {
  pid_t pid = testing::SpawnInCgroup(
      cg,
      [&] {
        if (!resolv_conf.empty()) {
          if (unshare(CLONE_NEWNS) != 0) _exit(120);
          if (mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(121);
          if (mount(resolv_conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0) {
            _exit(122);
          }
        }
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        _exit(127);
      },
      netns);
  return pid < 0 ? -1 : testing::WaitChild(pid, 30000);
}

int Python(const TestCgroup& cg, uint16_t port, const std::vector<std::string>& steps) {
  std::vector<std::string> argv{"/usr/bin/python3", "-c", kPythonClient, std::to_string(port)};
  argv.insert(argv.end(), steps.begin(), steps.end());
  return RunIn(cg, argv);
}

struct Answered {
  uint64_t count = 0;
  uint64_t le_low = 0;  // at most 25 ms: too fast for the server's delay
  uint64_t le_mid = 0;  // at most 100 ms
  double sum = 0;
};

std::vector<prometheus::MetricFamily> Scrape(DnsCollector* c) {
  std::vector<prometheus::MetricFamily> fams;
  c->Collect(&fams);
  return fams;
}

Answered AnsweredWith(const std::vector<prometheus::MetricFamily>& fams, const TestCgroup& cg,
                      const std::string& rcode) {
  Answered a;
  const auto* m = FindSample(fams, "kmon_dns_request_duration_seconds",
                             {{"container", cg.name()}, {"rcode", rcode}});
  if (m == nullptr) return a;
  a.count = m->histogram.sample_count;
  a.sum = m->histogram.sample_sum;
  if (m->histogram.bucket.size() >= 2) {
    a.le_low = m->histogram.bucket[0].cumulative_count;
    a.le_mid = m->histogram.bucket[1].cumulative_count;
  }
  return a;
}

// Every answer of the workload in `cg`, over all rcodes.
uint64_t AllAnswered(const std::vector<prometheus::MetricFamily>& fams, const TestCgroup& cg) {
  uint64_t n = 0;
  for (const auto& f : fams) {
    if (f.name != "kmon_dns_request_duration_seconds") continue;
    for (const auto& m : f.metric) {
      for (const auto& l : m.label) {
        if (l.name == "container" && l.value == cg.name()) n += m.histogram.sample_count;
      }
    }
  }
  return n;
}

// Entries in one of the collector's maps now; -1 when it cannot be read.
int64_t MapEntries(const DnsCollector& c, const char* map) {
  const bpf_map* m = bpf_object__find_map_by_name(c.BpfObject(), map);
  if (m == nullptr) return -1;
  absl::StatusOr<uint64_t> n = CountMapEntries(m);
  return n.ok() ? static_cast<int64_t>(*n) : -1;
}

double Timeouts(const std::vector<prometheus::MetricFamily>& fams, const TestCgroup& cg) {
  const auto* m = FindSample(fams, "kmon_dns_timeouts_total", {{"container", cg.name()}});
  return m == nullptr ? -1 : m->counter.value;
}

void ExpectAnswered(const std::vector<prometheus::MetricFamily>& fams, const TestCgroup& cg,
                    const std::string& rcode, uint64_t n) {
  const Answered a = AnsweredWith(fams, cg, rcode);
  EXPECT_EQ(a.count, n) << rcode;
  EXPECT_EQ(a.le_low, 0u) << rcode << ": faster than the server's " << testing::kDnsDelayMs
                          << " ms";
  EXPECT_EQ(a.le_mid, n) << rcode << ": not in (0.025, 0.1]";
  EXPECT_GE(a.sum, n * testing::kDnsDelayMs / 1000.0) << rcode;
}

class DnsRootTest : public testing::CollectorRootTest {
 protected:
  void SetUp() override {
    CollectorRootTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    port_ = static_cast<uint16_t>(testing::FreePort());
    server_ = std::make_unique<DnsServer>(server_cg_, port_);
    ASSERT_TRUE(server_->ok()) << "the test server could not bind port " << port_;
    collector_ = std::make_unique<DnsCollector>(
        CollectorDeps{.workloads = workloads_.get(), .watched = watched_.get()});
    absl::Status st = collector_->Start(DnsTestConfig(port_));
    ASSERT_TRUE(st.ok()) << st;
  }
  void TearDown() override {
    if (collector_) {
      EXPECT_EQ(collector_->EventsLost().at("map_full"), 0u);
      collector_->Stop();
    }
  }
  uint64_t Malformed() { return collector_->EventsLost().at("malformed"); }

  TestCgroup server_cg_, client_cg_;
  uint16_t port_ = 0;
  std::unique_ptr<DnsServer> server_;
  std::unique_ptr<DnsCollector> collector_;
};

TEST_F(DnsRootTest, PythonClientEverySocketCallShapeOverUdpAndTcp) {
  ASSERT_EQ(Python(client_cg_, port_,
                   {"sendto4:5:r0.kmon.test:0", "send6:4:r3.kmon.test:3",
                    "sendmsg4:3:r2.kmon.test:2", "parallel6:6:r0.kmon.test:0",
                    "tcpsplit6:2:r5.kmon.test:5", "tcppipe4:3:r3.kmon.test:3",
                    "sendto4:1:r11.kmon.test:11", "send6:1:r13.kmon.test:13"}),
            0);
  auto fams = Scrape(collector_.get());
  ExpectAnswered(fams, client_cg_, "NOERROR", 5 + 6);
  ExpectAnswered(fams, client_cg_, "NXDOMAIN", 4 + 3);
  ExpectAnswered(fams, client_cg_, "SERVFAIL", 3);
  ExpectAnswered(fams, client_cg_, "REFUSED", 2);
  ExpectAnswered(fams, client_cg_, "DSOTYPENOTIMP", 1);
  ExpectAnswered(fams, client_cg_, "13", 1);
  EXPECT_EQ(AllAnswered(fams, client_cg_), 25u);
  EXPECT_EQ(Timeouts(fams, client_cg_), 0);
  // The server's side of each exchange is not a query of its own.
  EXPECT_EQ(AllAnswered(fams, server_cg_), 0u);
  EXPECT_EQ(Malformed(), 0u);
  EXPECT_EQ(collector_->EventsLost().at("tcp_unsynced"), 0u);
  // Counters are cumulative: a second scrape of the same data gives the same numbers.
  EXPECT_EQ(AllAnswered(Scrape(collector_.get()), client_cg_), 25u);
  // Every answered query left `pending`; each TCP connection's stream state went
  // with its second FIN.
  EXPECT_EQ(MapEntries(*collector_, "pending"), 0);
  EXPECT_TRUE(Eventually([&] { return MapEntries(*collector_, "tcp_state") == 0; }))
      << MapEntries(*collector_, "tcp_state") << " TCP streams still followed";
}

TEST_F(DnsRootTest, DigOverUdpAndTcpWithEdns) {
  const std::string p = std::to_string(port_);
  for (const char* server : {"@127.0.0.1", "@::1"}) {
    ASSERT_EQ(RunIn(client_cg_, {"dig", server, "-p", p, "+tries=1", "+time=3", "r0.kmon.test"}),
              0);
    ASSERT_EQ(RunIn(client_cg_, {"dig", server, "-p", p, "+tries=1", "+time=3", "r3.kmon.test"}),
              0);
    ASSERT_EQ(
        RunIn(client_cg_, {"dig", server, "-p", p, "+tcp", "+tries=1", "+time=3", "r2.kmon.test"}),
        0);
  }
  auto fams = Scrape(collector_.get());
  ExpectAnswered(fams, client_cg_, "NOERROR", 2);
  ExpectAnswered(fams, client_cg_, "NXDOMAIN", 2);
  ExpectAnswered(fams, client_cg_, "SERVFAIL", 2);
  EXPECT_EQ(AllAnswered(fams, client_cg_), 6u);
  EXPECT_EQ(Timeouts(fams, client_cg_), 0);
  EXPECT_EQ(Malformed(), 0u);
}

// Queries nobody answers are found by user space once the timeout has passed;
// answers that come after it are timeouts too, not latencies.
TEST_F(DnsRootTest, UnansweredAndLateQueriesAreTimeouts) {
  ASSERT_EQ(Python(client_cg_, port_,
                   {"silent:4:silent.kmon.test:0", "send6:2:late.kmon.test:0",
                    "sendto4:1:r0.kmon.test:0"}),
            0);
  std::vector<prometheus::MetricFamily> fams;
  EXPECT_TRUE(Eventually(
      [&] {
        fams = Scrape(collector_.get());
        return Timeouts(fams, client_cg_) >= 6;
      },
      std::chrono::milliseconds(3000), std::chrono::milliseconds(100)));
  EXPECT_EQ(Timeouts(fams, client_cg_), 6);
  ExpectAnswered(fams, client_cg_, "NOERROR", 1);
  EXPECT_EQ(AllAnswered(fams, client_cg_), 1u);
  EXPECT_EQ(Timeouts(Scrape(collector_.get()), client_cg_), 6);
  EXPECT_EQ(MapEntries(*collector_, "pending"), 0) << "the sweep took the unanswered ones";
}

TEST_F(DnsRootTest, GarbageToTheDnsPortIsMalformedNotAQuery) {
  const uint64_t before = Malformed();
  ASSERT_EQ(Python(client_cg_, port_, {"garbage:1:x:0"}), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // past the timeout
  auto fams = Scrape(collector_.get());
  EXPECT_EQ(Malformed() - before, 2u);
  EXPECT_EQ(AllAnswered(fams, client_cg_), 0u);
  EXPECT_EQ(Timeouts(fams, client_cg_), -1) << "no query, so no series";
}

// A reload rewrites the control maps: a port taken out of `ports` is not timed,
// put back it is again, and new buckets restart the histograms; no program is
// loaded again.
TEST_F(DnsRootTest, ReconfigureChangesPortsAndBucketsInPlace) {
  auto program_id = [&] {
    const bpf_program* prog =
        bpf_object__find_program_by_name(collector_->BpfObject(), "kmon_dns_egress");
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (prog == nullptr || bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) != 0) {
      return 0u;
    }
    return info.id;
  };
  const uint32_t id = program_id();
  ASSERT_NE(id, 0u);
  Config other = DnsTestConfig(port_);
  other.collectors.Mutable<DnsConfig>().ports = {53};
  ASSERT_TRUE(collector_->Reconfigure(other).ok());
  ASSERT_EQ(Python(client_cg_, port_, {"sendto4:3:r0.kmon.test:0"}), 0);
  EXPECT_EQ(AllAnswered(Scrape(collector_.get()), client_cg_), 0u);

  ASSERT_TRUE(collector_->Reconfigure(DnsTestConfig(port_)).ok());
  ASSERT_EQ(Python(client_cg_, port_, {"sendto4:2:r0.kmon.test:0"}), 0);
  ExpectAnswered(Scrape(collector_.get()), client_cg_, "NOERROR", 2);

  Config buckets = DnsTestConfig(port_);
  buckets.collectors.Mutable<DnsConfig>().latency_buckets = {0.02, 0.2};
  ASSERT_TRUE(collector_->Reconfigure(buckets).ok());
  ASSERT_EQ(Python(client_cg_, port_, {"sendto4:1:r0.kmon.test:0"}), 0);
  auto fams = Scrape(collector_.get());
  const auto* m = FindSample(fams, "kmon_dns_request_duration_seconds",
                             {{"container", client_cg_.name()}, {"rcode", "NOERROR"}});
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->histogram.sample_count, 1u) << "the histogram restarted with its new buckets";
  ASSERT_EQ(m->histogram.bucket.size(), 3u);
  EXPECT_EQ(m->histogram.bucket[0].upper_bound, 0.02);
  EXPECT_EQ(m->histogram.bucket[0].cumulative_count, 0u);
  EXPECT_EQ(m->histogram.bucket[1].cumulative_count, 1u);
  EXPECT_EQ(program_id(), id) << "the program was loaded again";
}

// glibc's stub resolver, through /etc/resolv.conf, which can name no port: the
// server listens on 53 in a network namespace of the test's own, and the client
// sees a resolv.conf of its own in a mount namespace. `getent hosts` asks AAAA,
// then A (two connected sockets, sendto); `getent ahosts` asks A and AAAA at once
// with one sendmmsg (counted with strace on Debian 12's glibc 2.36).
TEST(DnsGlibcRootTest, GlibcResolverThroughResolvConf) {
  KMON_REQUIRE_ROOT();
  auto root = DetectCgroup2Root();
  ASSERT_TRUE(root.has_value());
  WorkloadResolver workloads(std::make_unique<CgroupFsPathSource>(*root), nullptr,
                             std::chrono::milliseconds(0));
  WatchedCgroups watched(&workloads);
  TestNetns netns;
  TestCgroup server_cg, client_cg;
  DnsServer server(server_cg, 53, netns.name());
  ASSERT_TRUE(server.ok()) << "the test server could not bind port 53 in " << netns.name();
  TempFile resolv("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n");
  ASSERT_TRUE(resolv.ok());
  DnsCollector c({.workloads = &workloads, .watched = &watched});
  absl::Status st = c.Start(DnsTestConfig(53));
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(RunIn(client_cg, {"getent", "hosts", "r0.kmon.test"}, netns.name(), resolv.path()), 0);
  ASSERT_EQ(RunIn(client_cg, {"getent", "ahosts", "r0.kmon.test"}, netns.name(), resolv.path()), 0);
  auto fams = Scrape(&c);
  ExpectAnswered(fams, client_cg, "NOERROR", 4);
  EXPECT_EQ(AllAnswered(fams, client_cg), 4u);
  EXPECT_EQ(Timeouts(fams, client_cg), 0);
}

}  // namespace
}  // namespace kmon
