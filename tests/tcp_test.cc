#include "collectors/tcp.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "bpf/tcp.h"
#include "collectors/tcp_listeners.h"
#include "collectors/topology.h"
#include "collectors/workload_labeler.h"
#include "exporter/exposition.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

TEST(TcpListenersTest, ParsesListenStateOnly) {
  const char* v4 =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
      "inode\n"
      "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
      "12345 1 0000000000000000 100 0 0 10 0\n"
      "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
      "12346 1 0000000000000000 100 0 0 10 0\n"
      "   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 "
      "12347 1 0000000000000000 20 4 30 10 -1\n";
  EXPECT_EQ(ParseProcNetTcpListeners(v4),
            (std::vector<Listener>{{.port = 8080, .ino = 12345}, {.port = 22, .ino = 12346}}));
  const char* v6 =
      "  sl  local_address                         remote_address                        st\n"
      "   0: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 0A "
      "00000000:00000000 00:00000000 00000000     0        0 777 1\n";
  EXPECT_EQ(ParseProcNetTcpListeners(v6), (std::vector<Listener>{{.port = 9090, .ino = 777}}));
  EXPECT_TRUE(ParseProcNetTcpListeners("").empty());
  EXPECT_TRUE(ParseProcNetTcpListeners("header\n   0: garbage\n").empty());
}

TEST(TcpTest, BoundsToNanosRounds) {
  EXPECT_EQ(BoundsToNanos({0.0001, 0.00025, 1, 10}),
            (std::vector<uint64_t>{100000, 250000, 1000000000, 10000000000}));
}

// A nested program's twin key folds into its cgroup's entry; the active gauges,
// raised under one key and lowered under the other, sum back (as u64s) to what is
// open.
TEST(TcpTest, NestedTwinKeysFoldIntoTheirCgroup) {
  tcp_stats a{}, twin{}, other{};
  a.opened_inbound = 3;
  a.active_inbound = 3;
  a.tcp_bytes_received = 100;
  twin.opened_inbound = 1;
  twin.active_inbound = static_cast<uint64_t>(-2);  // two of a's closed in a softirq
  twin.resets_received = 1;
  other.retransmits = 7;
  std::vector<std::pair<uint64_t, tcp_stats>> stats = {
      {42, a}, {9, other}, {42 | KMON_TCP_NESTED_CGROUP, twin}};
  FoldNestedStats(&stats);
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].first, 9u);
  EXPECT_EQ(stats[0].second.retransmits, 7u);
  EXPECT_EQ(stats[1].first, 42u);
  EXPECT_EQ(stats[1].second.opened_inbound, 4u);
  EXPECT_EQ(stats[1].second.active_inbound, 1u);
  EXPECT_EQ(stats[1].second.tcp_bytes_received, 100u);
  EXPECT_EQ(stats[1].second.resets_received, 1u);

  std::vector<std::pair<uint64_t, tcp_stats>> plain = {{9, other}, {5, a}};
  FoldNestedStats(&plain);  // no twins: left as read
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_EQ(plain[0].first, 9u);
  EXPECT_EQ(plain[1].first, 5u);
}

TEST(TopologyTest, HistogramQuantileInterpolatesLikePromql) {
  const std::vector<double> bounds{0.1, 0.2, 0.4};
  // 10 in (0,0.1], 10 in (0.1,0.2], 0 in (0.2,0.4], 0 in +Inf.
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.5, bounds, {10, 10, 0, 0}), 0.1);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.75, bounds, {10, 10, 0, 0}), 0.15);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.25, bounds, {10, 10, 0, 0}), 0.05);
  // Mass in +Inf: the highest finite bound, as histogram_quantile answers.
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.95, bounds, {0, 0, 0, 5}), 0.4);
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.95, bounds, {0, 0, 0, 0})));
}

TEST(TopologyTest, FormatsAddresses) {
  std::array<uint8_t, 16> v4{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2};
  EXPECT_EQ(FormatAddress(v4), "198.18.1.2");
  std::array<uint8_t, 16> v6{};
  v6[15] = 1;
  EXPECT_EQ(FormatAddress(v6), "::1");
}

// Fixed contents of the tcp data maps: cgroup 100 is nginx.service (a server on
// 8080), 200 a pod's container (a client of it), 999 a cgroup that is gone.
TcpData FixedTcpData() {
  TcpData d;
  // Bounds 0.001, 0.01, 0.1: slots are (0,1ms], (1ms,10ms], (10ms,100ms], +Inf.
  EdgeHist from_pod;
  from_pod.client_cgroup = 200;
  from_pod.server_cgroup = 100;
  from_pod.server_port = 8080;
  from_pod.slots = {5, 3, 1, 1};
  from_pod.count = 10;
  from_pod.sum_seconds = 0.5;
  EdgeHist from_outside = from_pod;  // another client of the same server and port
  from_outside.client_cgroup = 0;
  from_outside.slots = {0, 2, 0, 0};
  from_outside.count = 2;
  from_outside.sum_seconds = 0.01;
  EdgeHist to_gone = from_pod;
  to_gone.server_cgroup = 999;
  d.edges = {from_pod, from_outside, to_gone};
  d.connects = {{200, {4, 0, 0, 0}, 2'000'000}};
  tcp_stats nginx{};
  nginx.opened_inbound = 12;
  nginx.resets_sent = 1;
  nginx.tcp_bytes_sent = 1050;
  nginx.tcp_bytes_received = 420;
  nginx.udp_bytes_received = 64;
  nginx.active_inbound = 1;  // one connection open
  tcp_stats pod{};
  pod.opened_outbound = 4;
  pod.connect_failures = 1;
  pod.retransmits = 3;
  pod.resets_received = 1;
  pod.tcp_bytes_sent = 20;
  pod.tcp_bytes_received = 50;
  pod.active_outbound = 1;
  tcp_stats gone{};
  gone.opened_inbound = 7;
  d.stats = {{100, nginx}, {200, pod}, {999, gone}};
  return d;
}

TEST(TcpFamiliesTest, GoldenTextPassesPromtool) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler labeler(&workloads);
  auto families = BuildTcpFamilies(FixedTcpData(), {0.001, 0.01, 0.1}, &labeler);
  ExpectGoldenMetrics(Serialize(families, ExpositionFormat::kText004), "tcp_metrics.prom");
}

TEST(TcpFamiliesTest, SamplesAreExact) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler labeler(&workloads);
  auto fams = BuildTcpFamilies(FixedTcpData(), {0.001, 0.01, 0.1}, &labeler);
  ASSERT_EQ(fams.size(), 8u);
  // The server's histogram is the sum of its edges: 12 requests, 0.51 s.
  const auto* req = FindSample(fams, "kmon_tcp_request_duration_seconds",
                               {{"container", "nginx.service"}, {"port", "8080"}});
  ASSERT_NE(req, nullptr);
  EXPECT_EQ(req->histogram.sample_count, 12u);
  EXPECT_DOUBLE_EQ(req->histogram.sample_sum, 0.51);
  ASSERT_EQ(req->histogram.bucket.size(), 4u);
  EXPECT_EQ(req->histogram.bucket[0].cumulative_count, 5u);
  EXPECT_EQ(req->histogram.bucket[1].cumulative_count, 10u);
  EXPECT_EQ(req->histogram.bucket[2].cumulative_count, 11u);
  // Bytes: counted as they pass, open connections' too.
  const auto* sent =
      FindSample(fams, "kmon_network_bytes_total",
                 {{"container", "nginx.service"}, {"protocol", "tcp"}, {"direction", "sent"}});
  ASSERT_NE(sent, nullptr);
  EXPECT_EQ(sent->counter.value, 1050);
  const auto* active_in = FindSample(fams, "kmon_tcp_connections_active",
                                     {{"container", "nginx.service"}, {"direction", "inbound"}});
  ASSERT_NE(active_in, nullptr);
  EXPECT_EQ(active_in->gauge.value, 1);
  const auto* active_out = FindSample(fams, "kmon_tcp_connections_active",
                                      {{"container", "4f2a9c1b7d3e"}, {"direction", "outbound"}});
  ASSERT_NE(active_out, nullptr);
  EXPECT_EQ(active_out->gauge.value, 1);
  const auto* connect =
      FindSample(fams, "kmon_tcp_connect_duration_seconds", {{"container", "4f2a9c1b7d3e"}});
  ASSERT_NE(connect, nullptr);
  EXPECT_EQ(connect->histogram.sample_count, 4u);
  EXPECT_DOUBLE_EQ(connect->histogram.sample_sum, 0.002);
  // The gone cgroup exports nothing.
  for (const auto& f : fams) {
    for (const auto& m : f.metric) {
      for (const auto& l : m.label) EXPECT_NE(l.value, "999");
    }
  }
  EXPECT_EQ(labeler.Overflowed(), 0u);
}

TEST(TcpFamiliesTest, SeriesBudgetFoldsTheLaterWorkload) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  // nginx (cgroup 100): request histogram 4+2, stats 10, active inbound 1 = 17 series.
  WorkloadLabeler labeler(&workloads, 17);
  auto fams = BuildTcpFamilies(FixedTcpData(), {0.001, 0.01, 0.1}, &labeler);
  EXPECT_NE(FindSample(fams, "kmon_tcp_retransmits_total", {{"container", "nginx.service"}}),
            nullptr);
  const auto* folded = FindSample(fams, "kmon_tcp_retransmits_total", {{"pod", "__overflow__"}});
  ASSERT_NE(folded, nullptr);
  EXPECT_EQ(folded->counter.value, 3);  // the pod's retransmits, under __overflow__
  // The pod's series: connect histogram 4+2, stats 10, active outbound 1.
  EXPECT_EQ(labeler.Overflowed(), 17u);
}

TEST(TopologyFamiliesTest, EdgesBeyondTheBudgetAreFoldedIntoOne) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  auto edge = [](const char* client, const char* server, uint64_t count) {
    NamedEdge e;
    e.client = {client, ""};
    e.server = {server, ""};
    e.hist.server_port = 80;
    e.hist.slots = {count, 0};  // one bound: (0, 0.1], +Inf
    e.hist.count = count;
    e.hist.sum_seconds = 0.01 * static_cast<double>(count);
    return e;
  };
  std::map<std::string, NamedEdge> edges{{"a->s:80", edge("a", "s", 5)},
                                         {"b->s:80", edge("b", "s", 7)},
                                         {"c->s:80", edge("c", "s", 1)}};
  // An edge is its counter and its histogram: 1 + (1 bound + Inf + _sum + _count) = 5.
  WorkloadLabeler labeler(&workloads, 5);
  auto fams = BuildTopologyFamilies(edges, {0.1}, false, &labeler);
  ASSERT_EQ(fams.size(), 2u);
  EXPECT_EQ(FindSample(fams, "kmon_topology_requests_total", {{"client", "a"}})->counter.value, 5);
  const auto* folded = FindSample(
      fams, "kmon_topology_requests_total",
      {{"client", "__overflow__"}, {"server", "__overflow__"}, {"server_port", "__overflow__"}});
  ASSERT_NE(folded, nullptr);
  EXPECT_EQ(folded->counter.value, 8);  // b's 7 and c's 1
  EXPECT_EQ(fams[0].metric.size(), 2u);
  EXPECT_EQ(labeler.Overflowed(), 10u);  // two edges of five series, each counted once
  // With Grafana's service-graph names too, an edge costs twice as much.
  WorkloadLabeler both(&workloads, 10);
  fams = BuildTopologyFamilies(edges, {0.1}, true, &both);
  ASSERT_EQ(fams.size(), 4u);
  EXPECT_EQ(
      FindSample(fams, "traces_service_graph_request_total", {{"client", "a"}})->counter.value, 5);
  EXPECT_EQ(both.Overflowed(), 20u);
}

// /api/v1/topology?seconds= without root: the collector runs over a feed with no
// edges. A window that is not a whole number of seconds in 1..600 is a 400 that says
// so, never read as some other number (strtol took "1e2" as 1 and "30s" as 30).
TEST(TopologyApiTest, SecondsIsAWholeNumberInRange) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  TopologyFeed feed;
  feed.SetReader([](std::vector<EdgeHist>*, std::vector<double>*) { return absl::OkStatus(); });
  HttpHandler api;
  CollectorDeps deps;
  deps.workloads = &workloads;
  deps.topology = &feed;
  deps.handle_http = [&](const std::string& path, HttpHandler h) {
    if (path == "/api/v1/topology") api = std::move(h);
  };
  TopologyCollector topo(deps);
  ASSERT_TRUE(topo.Start(CollectorConfig{}).ok());
  ASSERT_TRUE(api);
  auto get = [&](std::map<std::string, std::string> query) {
    HttpRequest req;
    req.method = "GET";
    req.path = "/api/v1/topology";
    req.query = std::move(query);
    return api(req);
  };
  EXPECT_EQ(get({}).status, 200);
  for (const char* ok : {"1", "60", "600"}) {
    const HttpResponse r = get({{"seconds", ok}});
    EXPECT_EQ(r.status, 200) << ok << ": " << r.body;
    EXPECT_EQ(r.content_type, "application/json");
  }
  for (const std::string bad : {"1e2", "30s", "-5", "+5", " 5", "0", "601", ""}) {
    const HttpResponse r = get({{"seconds", bad}});
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_EQ(r.body, "seconds: want a whole number from 1 to 600, got \"" + bad + "\"\n");
  }
  topo.Stop();
}

// A scrape a second used to keep a snapshot of every edge per scrape for the API's
// 10-minute window: 600 copies of each edge. Snapshots are kept 10 s apart, so a
// burst of scrapes holds one, and the API still answers from the newest counts.
TEST(TopologyApiTest, ScrapesDoNotPileUpSnapshots) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  TopologyFeed feed;
  uint64_t served = 0;
  feed.SetReader([&](std::vector<EdgeHist>* edges, std::vector<double>* bounds) {
    *bounds = {0.1};
    EdgeHist e;
    e.client_cgroup = 100;
    e.server_cgroup = 200;
    e.server_port = 8080;
    e.count = ++served;
    e.slots = {e.count, 0};
    edges->push_back(e);
    return absl::OkStatus();
  });
  CollectorDeps deps;
  deps.workloads = &workloads;
  deps.topology = &feed;
  deps.handle_http = [](const std::string&, HttpHandler) {};
  TopologyCollector topo(deps);
  ASSERT_TRUE(topo.Start(CollectorConfig{}).ok());
  for (int i = 0; i < 100; ++i) {
    std::vector<prometheus::MetricFamily> fams;
    topo.Collect(&fams);
  }
  EXPECT_EQ(topo.SnapshotsHeld(), 1u);
  // No snapshot is 60 s old yet: the counts since the start, read now (the 101st).
  const nlohmann::json g = topo.Graph(std::chrono::seconds(60));
  ASSERT_EQ(g["edges"].size(), 1u);
  EXPECT_EQ(g["edges"][0]["requests"].get<uint64_t>(), 101u);
  EXPECT_EQ(topo.SnapshotsHeld(), 1u);
  topo.Stop();
}

// Clients on other nodes are named through the pod-IP index; granularity workload
// names pods (local ones from Kubernetes metadata, remote ones from the index) by
// their top owner; an address the index does not know is "external".
class FixedPeers : public PeerNames {
 public:
  std::optional<PeerName> Find(const PeerAddress& addr) const override {
    auto it = names.find(addr);
    if (it == names.end()) return std::nullopt;
    return it->second;
  }
  void ForEachAddress(const std::function<void(const PeerAddress&)>& fn) const override {
    for (const auto& [a, n] : names) fn(a);
  }
  uint64_t Generation() const override { return 1; }
  std::map<PeerAddress, PeerName> names;
};

class CartPodMeta : public PodMetadataSource {
 public:
  std::optional<PodMeta> PodByUid(const std::string& uid) const override {
    if (uid != "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc") return std::nullopt;
    PodMeta m;
    m.namespace_ = "shop";
    m.name = "cart-7d9f-x2k4p";
    m.workload = "cart";
    return m;
  }
  uint64_t Generation() const override { return 1; }
};

std::string LabelValue(const prometheus::ClientMetric& m, const std::string& name) {
  for (const auto& l : m.label) {
    if (l.name == name) return l.value;
  }
  return "<none>";
}

PeerAddress V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d};
}

TEST(TopologyNamesTest, RemoteClientsByPodIpIndexAndWorkloads) {
  CartPodMeta pods;
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), &pods);
  FixedPeers peers;
  peers.names[V4(10, 244, 1, 7)] = {"web", "frontend-5c6b-abcde", "frontend"};
  TopologyFeed feed;
  feed.SetReader([](std::vector<EdgeHist>* edges, std::vector<double>* bounds) {
    *bounds = {0.1};
    auto edge = [](uint64_t client, PeerAddress addr, uint64_t n) {
      EdgeHist e;
      e.client_cgroup = client;
      e.client_addr = addr;
      e.server_cgroup = 200;
      e.server_port = 8080;
      e.slots = {n, 0};
      e.count = n;
      e.sum_seconds = 0.001 * static_cast<double>(n);
      return e;
    };
    edges->push_back(edge(0, V4(10, 244, 1, 7), 7));  // a pod on another node
    edges->push_back(edge(0, V4(198, 18, 0, 9), 3));  // kept, but no pod has it now
    edges->push_back(edge(0, PeerAddress{}, 2));      // an aggregated remote client
    edges->push_back(edge(100, PeerAddress{}, 5));    // nginx.service on this node
    return absl::OkStatus();
  });
  CollectorDeps deps;
  deps.workloads = &workloads;
  deps.topology = &feed;
  deps.peers = &peers;
  deps.handle_http = [](const std::string&, HttpHandler) {};
  TopologyCollector topo(deps);
  CollectorConfig config;
  ASSERT_TRUE(topo.Start(config).ok());
  auto requests = [&](const std::string& client) -> double {
    std::vector<prometheus::MetricFamily> fams;
    topo.Collect(&fams);
    const auto* s = FindSample(fams, "kmon_topology_requests_total", {{"client", client}});
    return s == nullptr ? -1 : s->counter.value;
  };
  EXPECT_EQ(requests("web/frontend-5c6b-abcde"), 7);
  EXPECT_EQ(requests("external"), 5);  // the unknown address folds with the aggregate
  EXPECT_EQ(requests("nginx.service"), 5);
  {
    std::vector<prometheus::MetricFamily> fams;
    topo.Collect(&fams);
    const auto* s =
        FindSample(fams, "kmon_topology_requests_total", {{"client", "web/frontend-5c6b-abcde"}});
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(LabelValue(*s, "server"), "shop/cart-7d9f-x2k4p");
    EXPECT_EQ(LabelValue(*s, "client_namespace"), "web");
    EXPECT_EQ(LabelValue(*s, "server_namespace"), "shop");
  }
  config.collectors.Mutable<TopologyConfig>().granularity = "workload";
  config.collectors.Mutable<TopologyConfig>().external_peers = "address";
  ASSERT_TRUE(topo.Reconfigure(config).ok());
  EXPECT_EQ(requests("web/frontend"), 7);
  EXPECT_EQ(requests("198.18.0.9"), 3);
  EXPECT_EQ(requests("external"), 2);
  std::vector<prometheus::MetricFamily> fams;
  topo.Collect(&fams);
  const auto* s = FindSample(fams, "kmon_topology_requests_total", {{"client", "web/frontend"}});
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(LabelValue(*s, "server"), "shop/cart");
  topo.Stop();
}

}  // namespace
}  // namespace kmon
