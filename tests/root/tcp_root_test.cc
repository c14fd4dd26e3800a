// The tcp and topology collectors against the running kernel: servers and clients
// in cgroups (and network namespaces) of their own make known numbers of requests
// with a known think time, and kmon must count exactly those.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <signal.h>
#include <cmath>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "collectors/bpf_util.h"
#include "collectors/tcp.h"
#include "collectors/topology.h"
#include "collectors/topology_feed.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::SpawnInCgroup;
using testing::TestCgroup;
using testing::TestNetns;
using testing::WaitChild;

// ---- a tiny request/response protocol: the request is "<think ms>\n", the server
// sleeps that long and answers "ok\n". kmon never looks at the bytes.

bool SendAll(int fd, const std::string& s) {
  return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

// Reads until '\n'; the line without it, or nullopt at EOF/error.
std::optional<std::string> ReadLine(int fd) {
  std::string line;
  char c;
  while (true) {
    ssize_t n = recv(fd, &c, 1, 0);
    if (n <= 0) return std::nullopt;
    if (c == '\n') return line;
    line.push_back(c);
  }
}

int Listen(int family, const std::string& addr, uint16_t* port) {
  int fd = socket(family, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    inet_pton(AF_INET, addr.c_str(), &a->sin_addr);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    inet_pton(AF_INET6, addr.c_str(), &a->sin6_addr);
    len = sizeof *a;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 128) != 0) return -1;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                  : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return fd;
}

int Connect(int family, const std::string& addr, uint16_t port) {
  int fd = socket(family, SOCK_STREAM, 0);
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, addr.c_str(), &a->sin_addr);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, addr.c_str(), &a->sin6_addr);
    len = sizeof *a;
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Serves `connections` connections one after another, then exits.
struct Server {
  pid_t pid = -1;
  uint16_t port = 0;
};

Server StartServer(const TestCgroup& cg, int family, const std::string& addr, int connections,
                   const std::string& netns = "") {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  Server s;
  s.pid = SpawnInCgroup(
      cg,
      [&] {
        close(p[0]);
        uint16_t port = 0;
        // The listener is made inside the cgroup: accepted sockets inherit its cgroup.
        int lfd = Listen(family, addr, &port);
        if (write(p[1], &port, sizeof port) != sizeof port) _exit(5);
        if (lfd < 0) _exit(6);
        for (int c = 0; c < connections; ++c) {
          int fd = accept(lfd, nullptr, nullptr);
          if (fd < 0) _exit(7);
          while (auto line = ReadLine(fd)) {
            int ms = std::atoi(line->c_str());
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            if (!SendAll(fd, "ok\n")) break;
          }
          close(fd);
        }
      },
      netns);
  close(p[1]);
  EXPECT_EQ(read(p[0], &s.port, sizeof s.port), static_cast<ssize_t>(sizeof s.port));
  close(p[0]);
  EXPECT_NE(s.port, 0);
  return s;
}

// One keep-alive connection, `n` requests with think time `ms`. Exits non-zero on error.
void Requests(int family, const std::string& addr, uint16_t port, int n, int ms) {
  int fd = Connect(family, addr, port);
  if (fd < 0) _exit(10);
  for (int i = 0; i < n; ++i) {
    if (!SendAll(fd, std::to_string(ms) + "\n") || !ReadLine(fd)) _exit(11);
  }
  close(fd);
}

// ---- reading the families

// Cumulative count of the bucket with upper bound `le`.
uint64_t BucketAt(const prometheus::ClientMetric& m, double le) {
  for (const auto& b : m.histogram.bucket) {
    if (std::abs(b.upper_bound - le) < 1e-12) return b.cumulative_count;
  }
  ADD_FAILURE() << "no bucket le=" << le;
  return 0;
}

class TcpRootTest : public testing::CollectorRootTest {
 protected:
  void SetUp() override {
    testing::CollectorRootTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    config_ = DefaultConfig();
  }
  CollectorDeps Deps() {
    return {.workloads = workloads_.get(), .watched = watched_.get(), .topology = &feed_};
  }
  std::vector<prometheus::MetricFamily> Collect(Collector& c) {
    std::vector<prometheus::MetricFamily> fams;
    c.Collect(&fams);
    return fams;
  }

  TopologyFeed feed_;
  Config config_;
};

TEST_F(TcpRootTest, RequestCountIsExactAndLatencyFollowsThinkTime) {
  TcpCollector tcp(Deps());
  ASSERT_TRUE(tcp.Start(config_).ok());
  TestCgroup server_cg, client_cg;
  Server srv = StartServer(server_cg, AF_INET, "127.0.0.1", 2);
  const std::string port = std::to_string(srv.port);

  // 40 requests with 12 ms think time: all in (0.01, 0.025].
  ASSERT_EQ(testing::RunInCgroup(client_cg, [&] { Requests(AF_INET, "127.0.0.1", srv.port, 40, 12); }),
            0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // server sees the close
  auto fams = Collect(tcp);
  const auto* h = FindSample(fams, "kmon_tcp_request_duration_seconds",
                       {{"container", server_cg.name()}, {"port", port}});
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->histogram.sample_count, 40u);
  EXPECT_EQ(BucketAt(*h, 0.01), 0u);
  EXPECT_EQ(BucketAt(*h, 0.025), 40u);
  EXPECT_NEAR(h->histogram.sample_sum, 40 * 0.012, 40 * 0.006);

  // The think time changes to 60 ms: 10 more, all in (0.05, 0.1].
  ASSERT_EQ(testing::RunInCgroup(client_cg, [&] { Requests(AF_INET, "127.0.0.1", srv.port, 10, 60); }),
            0);
  EXPECT_EQ(WaitChild(srv.pid), 0);
  fams = Collect(tcp);
  h = FindSample(fams, "kmon_tcp_request_duration_seconds",
           {{"container", server_cg.name()}, {"port", port}});
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->histogram.sample_count, 50u);
  EXPECT_EQ(BucketAt(*h, 0.05), 40u);
  EXPECT_EQ(BucketAt(*h, 0.1), 50u);

  // Connections: 2 accepted by the server, 2 opened by the client, none left open.
  const auto* in = FindSample(fams, "kmon_tcp_connections_opened_total",
                        {{"container", server_cg.name()}, {"direction", "inbound"}});
  ASSERT_NE(in, nullptr);
  EXPECT_EQ(in->counter.value, 2);
  const auto* out = FindSample(fams, "kmon_tcp_connections_opened_total",
                         {{"container", client_cg.name()}, {"direction", "outbound"}});
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(out->counter.value, 2);
  const auto* connect = FindSample(fams, "kmon_tcp_connect_duration_seconds",
                             {{"container", client_cg.name()}});
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->histogram.sample_count, 2u);
  EXPECT_EQ(FindSample(fams, "kmon_tcp_connections_active",
                 {{"container", server_cg.name()}, {"direction", "inbound"}}),
            nullptr);
  // Bytes: the client sent "12\n" x40 + "60\n" x10 and read "ok\n" x50.
  const auto* sent = FindSample(fams, "kmon_network_bytes_total",
                          {{"container", client_cg.name()}, {"protocol", "tcp"},
                           {"direction", "sent"}});
  ASSERT_NE(sent, nullptr);
  EXPECT_EQ(sent->counter.value, 150);
  const auto* recvd = FindSample(fams, "kmon_network_bytes_total",
                           {{"container", server_cg.name()}, {"protocol", "tcp"},
                            {"direction", "received"}});
  ASSERT_NE(recvd, nullptr);
  EXPECT_EQ(recvd->counter.value, 150);
}

TEST_F(TcpRootTest, ConnectionOpenedBeforeKmonStartsIsMeasured) {
  TestCgroup server_cg, client_cg;
  Server srv = StartServer(server_cg, AF_INET, "127.0.0.1", 1);
  int ready[2], go[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(go), 0);
  pid_t client = SpawnInCgroup(client_cg, [&] {
    int fd = Connect(AF_INET, "127.0.0.1", srv.port);
    if (fd < 0) _exit(10);
    if (!SendAll(fd, "1\n") || !ReadLine(fd)) _exit(11);  // traffic before kmon too
    char c = 'r';
    if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1) _exit(12);
    for (int i = 0; i < 25; ++i) {
      if (!SendAll(fd, "12\n") || !ReadLine(fd)) _exit(11);
    }
    close(fd);
  });
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);

  TcpCollector tcp(Deps());  // starts while the connection is open
  ASSERT_TRUE(tcp.Start(config_).ok());
  ASSERT_EQ(write(go[1], "g", 1), 1);
  EXPECT_EQ(WaitChild(client), 0);
  EXPECT_EQ(WaitChild(srv.pid), 0);
  for (int fd : {ready[0], ready[1], go[0], go[1]}) close(fd);

  auto fams = Collect(tcp);
  const auto* h = FindSample(fams, "kmon_tcp_request_duration_seconds",
                       {{"container", server_cg.name()}, {"port", std::to_string(srv.port)}});
  ASSERT_NE(h, nullptr) << "the pre-existing connection was not taken as the server side";
  EXPECT_EQ(h->histogram.sample_count, 25u);
  EXPECT_EQ(BucketAt(*h, 0.01), 0u);
  EXPECT_EQ(BucketAt(*h, 0.025), 25u);
}

TEST_F(TcpRootTest, Ipv6Loopback) {
  TcpCollector tcp(Deps());
  ASSERT_TRUE(tcp.Start(config_).ok());
  TestCgroup server_cg, client_cg;
  Server srv = StartServer(server_cg, AF_INET6, "::1", 1);
  ASSERT_EQ(testing::RunInCgroup(client_cg, [&] { Requests(AF_INET6, "::1", srv.port, 30, 4); }),
            0);
  EXPECT_EQ(WaitChild(srv.pid), 0);
  auto fams = Collect(tcp);
  const auto* h = FindSample(fams, "kmon_tcp_request_duration_seconds",
                       {{"container", server_cg.name()}, {"port", std::to_string(srv.port)}});
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->histogram.sample_count, 30u);
  EXPECT_EQ(BucketAt(*h, 0.0025), 0u);
  EXPECT_EQ(BucketAt(*h, 0.025), 30u);
}

TEST_F(TcpRootTest, ChurnLeavesNoConnectionState) {
  TcpCollector tcp(Deps());
  ASSERT_TRUE(tcp.Start(config_).ok());
  const bpf_object* obj = tcp.BpfObject();
  auto count = [&](const char* map) {
    return CountMapEntries(bpf_object__find_map_by_name(obj, map)).value_or(~0ull);
  };
  TestCgroup server_cg, client_cg;
  constexpr int kConnections = 10000;
  Server srv = StartServer(server_cg, AF_INET, "127.0.0.1", kConnections);
  const uint64_t conns_before = count("conns"), clients_before = count("client_socks");
  ASSERT_EQ(testing::RunInCgroup(client_cg,
                                 [&] {
                                   for (int i = 0; i < kConnections; ++i) {
                                     Requests(AF_INET, "127.0.0.1", srv.port, 1, 0);
                                   }
                                 }),
            0);
  EXPECT_EQ(WaitChild(srv.pid, 120000), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // Other connections on the host may come and go meanwhile: allow a little slack.
  EXPECT_LE(count("conns"), conns_before + 5);
  EXPECT_LE(count("client_socks"), clients_before + 5);
  auto fams = Collect(tcp);
  const auto* in = FindSample(fams, "kmon_tcp_connections_opened_total",
                        {{"container", server_cg.name()}, {"direction", "inbound"}});
  ASSERT_NE(in, nullptr);
  EXPECT_EQ(in->counter.value, kConnections);
  const auto* h = FindSample(fams, "kmon_tcp_request_duration_seconds",
                       {{"container", server_cg.name()}, {"port", std::to_string(srv.port)}});
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->histogram.sample_count, static_cast<uint64_t>(kConnections));
}

// Three network namespaces with their own addresses, joined by veth pairs to a
// middle one (198.18.0.0/15 is the range set aside for benchmark tests), plus a
// loopback pair on the host: the exact set of edges with exact request counts.
TEST_F(TcpRootTest, TopologyAcrossNamespacesAndLoopback) {
  config_.collectors.Mutable<TopologyConfig>().enabled = true;
  TcpCollector tcp(Deps());
  ASSERT_TRUE(tcp.Start(config_).ok());
  TopologyCollector topo(Deps());
  ASSERT_TRUE(topo.Start(config_).ok());

  TestNetns left, middle, right;
  const std::string tag = std::to_string(getpid() % 100000);
  ASSERT_EQ(testing::Sh("ip link add kl" + tag + " netns " + left.name() + " type veth peer name km" +
                        tag + " netns " + middle.name()),
            0);
  ASSERT_EQ(testing::Sh("ip link add kr" + tag + " netns " + right.name() +
                        " type veth peer name kn" + tag + " netns " + middle.name()),
            0);
  ASSERT_EQ(testing::Sh("ip -n " + left.name() + " addr add 198.18.1.1/24 dev kl" + tag +
                        " && ip -n " + left.name() + " link set kl" + tag + " up" +
                        " && ip -n " + middle.name() + " addr add 198.18.1.2/24 dev km" + tag +
                        " && ip -n " + middle.name() + " link set km" + tag + " up" +
                        " && ip -n " + right.name() + " addr add 198.18.2.1/24 dev kr" + tag +
                        " && ip -n " + right.name() + " link set kr" + tag + " up" +
                        " && ip -n " + middle.name() + " addr add 198.18.2.2/24 dev kn" + tag +
                        " && ip -n " + middle.name() + " link set kn" + tag + " up"),
            0);

  TestCgroup server_cg, left_cg, right_cg, lo_server_cg, lo_client_cg;
  Server srv = StartServer(server_cg, AF_INET, "0.0.0.0", 2, middle.name());
  Server lo = StartServer(lo_server_cg, AF_INET, "127.0.0.1", 1);
  pid_t a = SpawnInCgroup(left_cg, [&] { Requests(AF_INET, "198.18.1.2", srv.port, 7, 1); },
                          left.name());
  EXPECT_EQ(WaitChild(a), 0);
  pid_t b = SpawnInCgroup(right_cg, [&] { Requests(AF_INET, "198.18.2.2", srv.port, 11, 1); },
                          right.name());
  EXPECT_EQ(WaitChild(b), 0);
  ASSERT_EQ(testing::RunInCgroup(lo_client_cg, [&] { Requests(AF_INET, "127.0.0.1", lo.port, 13, 1); }),
            0);
  EXPECT_EQ(WaitChild(srv.pid), 0);
  EXPECT_EQ(WaitChild(lo.pid), 0);

  std::vector<prometheus::MetricFamily> fams;
  topo.Collect(&fams);
  std::map<std::tuple<std::string, std::string, std::string>, double> edges;
  std::set<std::string> ours{server_cg.name(), left_cg.name(), right_cg.name(),
                             lo_server_cg.name(), lo_client_cg.name()};
  for (const auto& f : fams) {
    if (f.name != "kmon_topology_requests_total") continue;
    for (const auto& m : f.metric) {
      std::map<std::string, std::string> l;
      for (const auto& x : m.label) l[x.name] = x.value;
      if (!ours.count(l["server"])) continue;  // other traffic on the host
      edges[{l["client"], l["server"], l["server_port"]}] = m.counter.value;
    }
  }
  std::map<std::tuple<std::string, std::string, std::string>, double> want{
      {{left_cg.name(), server_cg.name(), std::to_string(srv.port)}, 7},
      {{right_cg.name(), server_cg.name(), std::to_string(srv.port)}, 11},
      {{lo_client_cg.name(), lo_server_cg.name(), std::to_string(lo.port)}, 13}};
  EXPECT_EQ(edges, want);

  // The API lists the same edges.
  nlohmann::json g = topo.Graph(std::chrono::seconds(60));
  int api_requests = 0;
  for (const auto& e : g["edges"]) {
    if (ours.count(e["target"].get<std::string>())) api_requests += e["requests"].get<int>();
  }
  EXPECT_EQ(api_requests, 7 + 11 + 13);
}

// The real exporter: the exported buckets are exactly the configured ones, a reload
// that changes them restarts the histograms without reloading any program, and the
// service-graph names and /api/v1/topology are served.
TEST(TcpExporterRootTest, ConfiguredBucketsReloadInPlaceAndTopologyApi) {
  KMON_REQUIRE_ROOT();
  auto yaml = [](const std::string& buckets) {
    return "interval: 1s\ncollectors:\n  syscalls: {enabled: false}\n"
           "  drops: {enabled: false}\n  blockio: {enabled: false}\n  cpu: {enabled: false}\n"
           "  dns: {enabled: false}\n  pagecache: {enabled: false}\n"
           "  tcp: {latency_buckets: [" + buckets + "]}\n"
           "  topology: {service_graph_metrics: true}\n";
  };
  const TempFile cfg_file(yaml("0.005, 0.05, 0.5"));
  const std::string& cfg_path = cfg_file.path();
  const uint32_t before = testing::MaxBpfProgramId();
  testing::ExporterProcess exporter({"--config.file=" + cfg_path});
  ASSERT_TRUE(exporter.WaitReady());
  const auto ids = testing::BpfProgramIds("kmon_tcp_recv", before);
  ASSERT_EQ(ids.size(), 1u);

  TestCgroup server_cg, client_cg;
  Server srv = StartServer(server_cg, AF_INET, "127.0.0.1", 2);
  ASSERT_EQ(testing::RunInCgroup(client_cg, [&] { Requests(AF_INET, "127.0.0.1", srv.port, 10, 20); }),
            0);
  const std::map<std::string, std::string> series{{"container", server_cg.name()},
                                                  {"port", std::to_string(srv.port)}};
  auto with_le = [&](const std::string& le) {
    auto m = series;
    m["le"] = le;
    return m;
  };
  std::string text = exporter.Scrape();
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.005")), 0);
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.05")), 10);
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.5")), 10);
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("+Inf")), 10);
  EXPECT_EQ(testing::SampleValue(text, "traces_service_graph_request_total",
                                 {{"client", client_cg.name()}, {"server", server_cg.name()}}),
            10);

  // /api/v1/topology over HTTP: the edge with its request count.
  auto api = testing::HttpGet(exporter.Url("/api/v1/topology?seconds=60"));
  ASSERT_EQ(api.status, 200);
  nlohmann::json g = nlohmann::json::parse(api.body);
  int found = 0;
  for (const auto& e : g["edges"]) {
    if (e["source"] == client_cg.name() && e["target"] == server_cg.name()) {
      EXPECT_EQ(e["requests"], 10);
      EXPECT_GT(e["p95_seconds"].get<double>(), 0.005);
      EXPECT_LE(e["p95_seconds"].get<double>(), 0.05);
      ++found;
    }
  }
  EXPECT_EQ(found, 1) << api.body;

  // New bounds by SIGHUP: histograms restart on exactly the new buckets, same program.
  const double stamp =
      testing::SampleValue(text, "kmon_config_last_reload_success_timestamp_seconds", {}).value_or(0);
  std::ofstream(cfg_path) << yaml("0.015, 0.08, 0.3");
  exporter.Signal(SIGHUP);
  for (int i = 0; i < 200; ++i) {
    text = exporter.Scrape();
    if (testing::SampleValue(text, "kmon_config_last_reload_success_timestamp_seconds", {})
            .value_or(0) > stamp) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(testing::RunInCgroup(client_cg, [&] { Requests(AF_INET, "127.0.0.1", srv.port, 5, 20); }),
            0);
  EXPECT_EQ(WaitChild(srv.pid), 0);
  text = exporter.Scrape();
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.015")), 0);
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.08")), 5);
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.3")), 5);
  EXPECT_FALSE(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_bucket", with_le("0.05")));
  EXPECT_EQ(testing::SampleValue(text, "kmon_tcp_request_duration_seconds_count", series), 5);
  EXPECT_EQ(testing::BpfProgramIds("kmon_tcp_recv", before), ids);
  EXPECT_EQ(exporter.Terminate(), 0);
}

}  // namespace
}  // namespace kmon
