#include "collectors/tcp.h"

#include <absl/strings/str_cat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <span>
#include <unordered_map>

#include "base/log.h"
#include "bpf/kmon_common.h"
#include "bpf/tcp.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/families.h"
#include "collectors/tcp_listeners.h"
#include "collectors/topology.h"

namespace kmon {
namespace {

constexpr char kName[] = "tcp";

// Open connections from an active_* sum: up at each open, down at each close, so a
// close whose open went to an entry deleted since (a gone cgroup's) reads below zero.
int64_t Active(uint64_t sum) { return std::max<int64_t>(0, static_cast<int64_t>(sum)); }

std::vector<uint64_t> SumSlots(std::span<const tcp_hist> per_cpu, size_t nslots, uint64_t* count,
                               uint64_t* sum_ns) {
  std::vector<uint64_t> slots(nslots, 0);
  *count = 0;
  *sum_ns = 0;
  for (const auto& h : per_cpu) {
    *count += h.count;
    *sum_ns += h.sum_ns;
    for (size_t i = 0; i < nslots && i <= KMON_TCP_MAX_BOUNDS; ++i) slots[i] += h.slots[i];
  }
  return slots;
}

class BpfTcpDataSource : public TcpDataSource {
 public:
  explicit BpfTcpDataSource(tcp_bpf* skel) : skel_(skel) {}

  absl::Status ReadEdges(size_t nslots, std::vector<EdgeHist>* out) override {
    return ReadHashAs<tcp_edge_key, tcp_hist>(
        bpf_map__fd(skel_->maps.edges),
        [nslots](const tcp_edge_key& k, const tcp_hist& h) {
          EdgeHist e;
          e.client_cgroup = k.client_cgroup;
          e.server_cgroup = k.server_cgroup;
          std::memcpy(e.client_addr.data(), k.client_addr, 16);
          e.server_port = k.server_port;
          uint64_t sum_ns = 0;
          e.slots = SumSlots(std::span<const tcp_hist>(&h, 1), nslots, &e.count, &sum_ns);
          e.sum_seconds = static_cast<double>(sum_ns) / 1e9;
          return e;
        },
        out);
  }

  absl::Status Read(size_t nslots, TcpData* out) override {
    // The request histograms, one per server and port (no client).
    absl::Status st = ReadPerCpuHashAs<tcp_hist_key, tcp_hist>(
        bpf_map__fd(skel_->maps.req_hist),
        [nslots](const tcp_hist_key& k, std::span<const tcp_hist> per_cpu) {
          EdgeHist e;
          e.server_cgroup = k.cgroup_id;
          e.server_port = k.port;
          uint64_t sum_ns = 0;
          e.slots = SumSlots(per_cpu, nslots, &e.count, &sum_ns);
          e.sum_seconds = static_cast<double>(sum_ns) / 1e9;
          return e;
        },
        &out->edges);
    if (st.ok()) {
      st = ReadHashAs<tcp_hist_key, tcp_hist>(
          bpf_map__fd(skel_->maps.connect_hist),
          [nslots](const tcp_hist_key& k, const tcp_hist& v) {
            TcpConnectHist h{.cgroup_id = k.cgroup_id};
            uint64_t count = 0;
            h.slots = SumSlots(std::span<const tcp_hist>(&v, 1), nslots, &count, &h.sum_ns);
            return h;
          },
          &out->connects);
    }
    if (st.ok()) {
      st = ReadPerCpuHashAs<uint64_t, tcp_stats>(
          bpf_map__fd(skel_->maps.stats),
          [](uint64_t cg, std::span<const tcp_stats> per_cpu) {
            tcp_stats s{};
            for (const auto& v : per_cpu) AddStats(v, &s);
            return std::pair<uint64_t, tcp_stats>(cg, s);
          },
          &out->stats);
    }
    if (st.ok()) FoldNestedStats(&out->stats);
    return st;
  }

 private:
  tcp_bpf* skel_;
};

}  // namespace

void AddStats(const tcp_stats& v, tcp_stats* s) {
  s->opened_inbound += v.opened_inbound;
  s->opened_outbound += v.opened_outbound;
  s->connect_failures += v.connect_failures;
  s->retransmits += v.retransmits;
  s->resets_sent += v.resets_sent;
  s->resets_received += v.resets_received;
  s->tcp_bytes_sent += v.tcp_bytes_sent;
  s->tcp_bytes_received += v.tcp_bytes_received;
  s->udp_bytes_sent += v.udp_bytes_sent;
  s->udp_bytes_received += v.udp_bytes_received;
  s->active_inbound += v.active_inbound;  // wraps back: see bpf/tcp.h
  s->active_outbound += v.active_outbound;
}

void FoldNestedStats(std::vector<std::pair<uint64_t, tcp_stats>>* stats) {
  std::map<uint64_t, tcp_stats> by_cgroup;
  bool twins = false;
  for (const auto& [cg, s] : *stats) {
    twins |= (cg & KMON_TCP_NESTED_CGROUP) != 0;
    AddStats(s, &by_cgroup[cg & ~KMON_TCP_NESTED_CGROUP]);
  }
  if (twins) stats->assign(by_cgroup.begin(), by_cgroup.end());
}

void ParseTcpSection(YamlParser& p, const YamlValue& v, TcpConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"ports", [&](const YamlValue& f) { p.PortSet(f, &c->ports); }},
               {"latency_buckets",
                [&](const YamlValue& f) {
                  ParseLatencyBuckets(p, f, KMON_TCP_MAX_BOUNDS, &c->latency_buckets);
                }},
           });
}

std::vector<uint64_t> BoundsToNanos(const std::vector<double>& seconds) {
  std::vector<uint64_t> ns;
  for (double s : seconds) ns.push_back(static_cast<uint64_t>(std::llround(s * 1e9)));
  return ns;
}

std::vector<prometheus::MetricFamily> BuildTcpFamilies(const TcpData& data,
                                                       const std::vector<double>& bounds,
                                                       WorkloadLabeler* labeler) {
  const std::vector<std::string> wl{"namespace", "pod", "container"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> l = wl;
    l.insert(l.end(), extra.begin(), extra.end());
    return l;
  };
  using prometheus::MetricType;
  FamilyBuilder req("kmon_tcp_request_duration_seconds",
                    "Server-side TCP request latency: first byte of a request received to the "
                    "last byte of its reply sent.",
                    MetricType::Histogram, with({"port"}));
  FamilyBuilder opened("kmon_tcp_connections_opened_total", "TCP connections opened.",
                       MetricType::Counter, with({"direction"}));
  FamilyBuilder active("kmon_tcp_connections_active", "TCP connections open now.",
                       MetricType::Gauge, with({"direction"}));
  FamilyBuilder connect("kmon_tcp_connect_duration_seconds",
                        "Time from connect() to the connection being established (active opens).",
                        MetricType::Histogram, wl);
  FamilyBuilder failures("kmon_tcp_connect_failures_total",
                         "Active opens that never became established.", MetricType::Counter, wl);
  FamilyBuilder retrans("kmon_tcp_retransmits_total", "TCP segments retransmitted.",
                        MetricType::Counter, wl);
  FamilyBuilder resets("kmon_tcp_resets_total", "TCP resets sent and received.",
                       MetricType::Counter, with({"direction"}));
  FamilyBuilder bytes("kmon_network_bytes_total",
                      "Bytes passed between sockets and applications, by protocol and direction.",
                      MetricType::Counter, with({"protocol", "direction"}));

  const size_t nslots = bounds.size() + 1;
  // Request histograms per server and port: the sum of that server's edges.
  struct Hist {
    std::vector<uint64_t> slots;
    double sum_seconds = 0;
  };
  std::map<std::pair<uint64_t, uint16_t>, Hist> hists;
  for (const EdgeHist& e : data.edges) {
    Hist& h = hists[{e.server_cgroup, e.server_port}];
    if (h.slots.empty()) h.slots.assign(nslots, 0);
    for (size_t i = 0; i < nslots && i < e.slots.size(); ++i) h.slots[i] += e.slots[i];
    h.sum_seconds += e.sum_seconds;
  }
  const std::map<uint64_t, tcp_stats> totals(data.stats.begin(), data.stats.end());
  // Budget: every series a workload adds, visited in cgroup order so the same
  // workloads win on every scrape.
  std::map<uint64_t, int64_t> cost;
  for (const auto& [k, v] : hists) cost[k.first] += static_cast<int64_t>(nslots) + 2;
  for (const auto& h : data.connects) cost[h.cgroup_id] += static_cast<int64_t>(nslots) + 2;
  for (const auto& [cg, s] : totals) {
    cost[cg] += 10 + (Active(s.active_inbound) > 0) + (Active(s.active_outbound) > 0);
  }
  std::unordered_map<uint64_t, std::optional<WorkloadLabels>> labels;
  for (const auto& [cg, n] : cost) labels[cg] = labeler->LabelsFor(cg, n);
  auto values = [&](uint64_t cg, std::vector<std::string> extra) -> std::vector<std::string> {
    const WorkloadLabels& l = *labels[cg];
    std::vector<std::string> v{l.namespace_, l.pod, l.container};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  };

  for (const auto& [k, h] : hists) {
    if (!labels[k.first]) continue;
    req.AddHistogram(values(k.first, {std::to_string(k.second)}), bounds, h.slots, h.sum_seconds);
  }
  for (const auto& h : data.connects) {
    if (!labels[h.cgroup_id]) continue;
    connect.AddHistogram(values(h.cgroup_id, {}), bounds, h.slots,
                         static_cast<double>(h.sum_ns) / 1e9);
  }
  for (const auto& [cg, s] : totals) {
    if (!labels[cg]) continue;
    auto d = [](uint64_t v) { return static_cast<double>(v); };
    opened.AddCounter(values(cg, {"inbound"}), d(s.opened_inbound));
    opened.AddCounter(values(cg, {"outbound"}), d(s.opened_outbound));
    failures.AddCounter(values(cg, {}), d(s.connect_failures));
    retrans.AddCounter(values(cg, {}), d(s.retransmits));
    resets.AddCounter(values(cg, {"sent"}), d(s.resets_sent));
    resets.AddCounter(values(cg, {"received"}), d(s.resets_received));
    bytes.AddCounter(values(cg, {"tcp", "sent"}), d(s.tcp_bytes_sent));
    bytes.AddCounter(values(cg, {"tcp", "received"}), d(s.tcp_bytes_received));
    bytes.AddCounter(values(cg, {"udp", "sent"}), d(s.udp_bytes_sent));
    bytes.AddCounter(values(cg, {"udp", "received"}), d(s.udp_bytes_received));
  }
  // A gauge while connections are open, none once the last one closed.
  for (const auto& [cg, s] : totals) {
    if (!labels[cg]) continue;
    const int64_t in = Active(s.active_inbound), out = Active(s.active_outbound);
    if (in > 0) active.AddGauge(values(cg, {"inbound"}), static_cast<double>(in));
    if (out > 0) active.AddGauge(values(cg, {"outbound"}), static_cast<double>(out));
  }
  std::vector<prometheus::MetricFamily> out;
  for (const FamilyBuilder* b :
       {&req, &opened, &active, &connect, &failures, &retrans, &resets, &bytes}) {
    out.push_back(b->Build());
  }
  return out;
}

TcpCollector::TcpCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, tcp_bpf__create_skeleton,
                   {{"edges", sizeof(tcp_edge_key), sizeof(tcp_hist)},
                    {"connect_hist", sizeof(tcp_hist_key), sizeof(tcp_hist)},
                    {"stats", sizeof(uint64_t), sizeof(tcp_stats)},
                    {"req_hist", sizeof(tcp_hist_key), sizeof(tcp_hist)},
                    {"client_socks", sizeof(tcp_client_key), sizeof(uint64_t)},
                    {"conns", sizeof(int), sizeof(tcp_conn)},
                    {"tcp_config", sizeof(uint32_t), sizeof(tcp_config)},
                    {"req_cache", sizeof(uint32_t), sizeof(tcp_req_cache)}}) {}

absl::Status TcpCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<BpfTcpDataSource>(skel_);
  // Listeners that exist already, in every network namespace; BPF follows changes.
  // Entered after attach so that none opened in between is missed, each by a run of
  // kmon_tcp_listener_found, the tracepoint's own code: a socket both see counts once.
  // One that closed between being read and being entered left a count no tracepoint
  // takes away; a second look finds those and kmon_tcp_listener_gone takes them back
  // (one that closed after being entered was taken away by the tracepoint already).
  auto run = [](bpf_program* prog, const Listener& l, bool* changed) -> absl::Status {
    uint64_t args[3] = {l.ino, l.netns, l.port};
    LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = args, .ctx_size_in = sizeof args);
    if (bpf_prog_test_run_opts(bpf_program__fd(prog), &opts) != 0) {
      return BpfError(kName, absl::StrCat("prog=", bpf_program__name(prog), ": run"), errno);
    }
    *changed = opts.retval == 1;
    return absl::OkStatus();
  };
  // Requests may wait in the per-CPU cache once the flush is known to run on every
  // CPU.
  absl::Status cached = cache_.Start(skel_->progs.kmon_tcp_flush, [this](bool on) {
    config_.cache = on ? 1 : 0;
    return WriteControlEntry(kName, skel_->maps.tcp_config, &config_);
  });
  if (!cached.ok()) return cached;
  const std::set<Listener> found = ScanListeners();
  bool changed = false;
  for (const Listener& l : found) {
    absl::Status st = run(skel_->progs.kmon_tcp_listener_found, l, &changed);
    if (!st.ok()) return st;
  }
  size_t gone = 0;
  const std::set<Listener> still = ScanListeners();
  for (const Listener& l : found) {
    if (still.count(l)) continue;
    absl::Status st = run(skel_->progs.kmon_tcp_listener_gone, l, &changed);
    if (!st.ok()) return st;
    if (changed) ++gone;
  }
  LogInfo("tcp: listening sockets found at start",
          {{"count", std::to_string(found.size())}, {"closed_meanwhile", std::to_string(gone)}});
  peer_addrs_ = std::make_unique<PeerAddressMap>(bpf_map__fd(skel_->maps.peer_addrs));
  absl::Status peers = OnProviderChange();
  if (!peers.ok()) LogWarn("tcp: pod addresses", {{"err", peers.ToString()}});
  if (deps().topology != nullptr) {
    deps().topology->SetReader(
        [this](std::vector<EdgeHist>* e, std::vector<double>* b) { return ReadEdges(e, b); },
        [this](const std::vector<EdgeHist>& e) { DropEdges(e); });
  }
  return absl::OkStatus();
}

void TcpCollector::BeforeDestroy() {
  // The topology collector may be inside ReadEdges: the feed waits for it.
  if (deps().topology != nullptr) deps().topology->ClearReader();
  std::lock_guard<std::mutex> lock(mu_);
  source_.reset();
  peer_addrs_.reset();
  cache_.Stop();
}

absl::Status TcpCollector::OnProviderChange() {
  if (peer_addrs_ == nullptr || deps().peers == nullptr) return absl::OkStatus();
  return peer_addrs_->Sync(*deps().peers);
}

absl::Status TcpCollector::Configure(const CollectorConfig& config) {
  const TcpConfig& tc = config.collectors.Get<TcpConfig>();
  // What the topology collector wants recorded: edges with their clients, and
  // unresolved clients' addresses.
  const TopologyConfig& topology = config.collectors.Get<TopologyConfig>();
  if (tc.latency_buckets.size() > KMON_TCP_MAX_BOUNDS) {
    return absl::InvalidArgumentError(
        absl::StrCat("collector=tcp: latency_buckets has ", tc.latency_buckets.size(),
                     " bounds; at most ", KMON_TCP_MAX_BOUNDS, " fit the kernel's histogram"));
  }
  // Connections flush and decide anew; the cache stays as it is.
  tcp_config cfg{.epoch = config_.epoch + 1, .cache = cache_.on() ? 1u : 0u};
  std::vector<uint64_t> ns = BoundsToNanos(tc.latency_buckets);
  for (size_t i = 0; i < ns.size(); ++i) cfg.bounds_ns[i] = ns[i];
  cfg.nbounds = static_cast<uint32_t>(ns.size());
  cfg.filter_ports = tc.ports.empty() ? 0 : 1;
  for (uint16_t p : tc.ports) cfg.port_bits[p / 64] |= uint64_t{1} << (p % 64);
  cfg.topology = topology.enabled ? 1 : 0;
  cfg.peer_address = topology.external_peers == "address" ? 1 : 0;

  // New bounds change what every slot means: start the histograms afresh (a counter
  // reset to Prometheus) rather than export counts under the wrong `le`.
  // The cache's ways drop what they hold from the old bounds.
  const bool bounds_changed = !bounds_.empty() && bounds_ != tc.latency_buckets;
  cfg.generation = config_.generation + (bounds_changed ? 1 : 0);
  absl::Status written = WriteControlEntry(kName, skel_->maps.tcp_config, &cfg);
  if (!written.ok()) return written;
  config_ = cfg;
  if (bounds_changed) {
    ClearHash(bpf_map__fd(skel_->maps.req_hist), sizeof(tcp_hist_key));
    ClearHash(bpf_map__fd(skel_->maps.connect_hist), sizeof(tcp_hist_key));
    ClearHash(bpf_map__fd(skel_->maps.edges), sizeof(tcp_edge_key));
    LogInfo("tcp: latency buckets changed; histograms restart", {{"collector", kName}});
  }
  bounds_ = tc.latency_buckets;

  return absl::OkStatus();
}

absl::Status TcpCollector::ReadEdges(std::vector<EdgeHist>* edges, std::vector<double>* bounds) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!source_) return absl::FailedPreconditionError("tcp collector stopped");
  *bounds = bounds_;
  cache_.Flush();
  return source_->ReadEdges(bounds_.size() + 1, edges);
}

void TcpCollector::DropEdges(const std::vector<EdgeHist>& edges) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!source_) return;
  for (const EdgeHist& e : edges) {
    tcp_edge_key k{};
    k.client_cgroup = e.client_cgroup;
    k.server_cgroup = e.server_cgroup;
    std::memcpy(k.client_addr, e.client_addr.data(), sizeof(k.client_addr));
    k.server_port = e.server_port;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.edges), &k);
  }
}

void TcpCollector::DropStale(const TcpData& data) {
  // Entries of cgroups that are gone: their series go, and so do their slots
  // (a gone server's request histograms: per-CPU memory). Edges are the topology
  // collector's to judge (it names their clients): it drops them through the feed.
  std::set<uint64_t> gone;
  for (const auto& [cg, s] : data.stats) {
    if (labeler().Gone(cg)) gone.insert(cg);
  }
  for (const auto& h : data.connects) {
    if (labeler().Gone(h.cgroup_id)) gone.insert(h.cgroup_id);
  }
  for (uint64_t cg : gone) {
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.stats), &cg);
    const uint64_t twin = cg | KMON_TCP_NESTED_CGROUP;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.stats), &twin);
    tcp_hist_key ck{};
    ck.cgroup_id = cg;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.connect_hist), &ck);
  }
  for (const EdgeHist& e : data.edges) {
    if (!labeler().Gone(e.server_cgroup)) continue;
    tcp_hist_key rk{};
    rk.cgroup_id = e.server_cgroup;
    rk.port = e.server_port;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.req_hist), &rk);
    rk.pad[0] = KMON_TCP_NESTED_HIST;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.req_hist), &rk);
  }
}

absl::Status TcpCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  TcpData data;
  cache_.Flush();
  absl::Status st = source_->Read(bounds_.size() + 1, &data);
  if (!st.ok()) return st;
  for (auto& f : BuildTcpFamilies(data, bounds_, &labeler())) out->push_back(std::move(f));
  DropStale(data);
  // A new epoch: each connection flushes its bytes at its next send or receive (and
  // asks again whether its cgroup is watched), for the next collection.
  ++config_.epoch;
  absl::Status written = WriteControlEntry(kName, skel_->maps.tcp_config, &config_);
  if (!written.ok()) LogWarn("tcp: epoch", {{"err", written.ToString()}});
  return absl::OkStatus();
}

}  // namespace kmon
