#include "collectors/tcp.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <set>

#include <absl/strings/str_cat.h>

#include "bpf/kmon_common.h"
#include "bpf/tcp.h"
#include "bpf/tcp.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/tcp_listeners.h"
#include "collectors/watched_cgroups.h"
#include "base/log.h"

namespace kmon {
namespace {

constexpr char kName[] = "tcp";

std::vector<uint64_t> SumSlots(const std::vector<tcp_hist>& per_cpu, size_t nslots,
                               uint64_t* count, uint64_t* sum_ns) {
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

}  // namespace

std::vector<uint64_t> BoundsToNanos(const std::vector<double>& seconds) {
  std::vector<uint64_t> ns;
  for (double s : seconds) ns.push_back(static_cast<uint64_t>(std::llround(s * 1e9)));
  return ns;
}

TcpCollector::TcpCollector(const CollectorDeps& deps) : deps_(deps) {}

TcpCollector::~TcpCollector() { Stop(); }

absl::Status TcpCollector::Start(const Config& config) {
  skel_ = tcp_bpf__open();
  if (skel_ == nullptr) return BpfError(kName, "open", errno);
  for (auto [map, k, v] : {std::tuple{skel_->maps.edges, sizeof(tcp_edge_key), sizeof(tcp_hist)},
                           {skel_->maps.connect_hist, sizeof(tcp_hist_key), sizeof(tcp_hist)},
                           {skel_->maps.stats, sizeof(uint64_t), sizeof(tcp_stats)},
                           {skel_->maps.conns, sizeof(uint64_t), sizeof(tcp_conn)},
                           {skel_->maps.tcp_config, sizeof(uint32_t), sizeof(tcp_config)}}) {
    absl::Status st = CheckMapLayout(kName, map, k, v);
    if (!st.ok()) return st;
  }
  int err = tcp_bpf__load(skel_);
  if (err) return BpfError(kName, "load", err);
  absl::Status st = WriteControlMaps(config);
  if (!st.ok()) return st;
  if (deps_.watched != nullptr) {
    st = deps_.watched->Register(bpf_map__fd(skel_->maps.filter_config),
                                 bpf_map__fd(skel_->maps.watched_cgroups));
    if (!st.ok()) return st;
  }
  // Listeners that exist already, in every network namespace; BPF follows changes.
  int listen_fd = bpf_map__fd(skel_->maps.listen_ports);
  uint8_t one = 1;
  size_t listeners = 0;
  for (const auto& [netns, port] : ScanListeners()) {
    tcp_listen_key k{};
    k.netns = netns;
    k.port = port;
    if (bpf_map_update_elem(listen_fd, &k, &one, BPF_ANY) == 0) ++listeners;
  }
  err = tcp_bpf__attach(skel_);
  if (err) return BpfError(kName, "attach", err);
  LogInfo("tcp: listening ports found at start", {{"count", std::to_string(listeners)}});
  if (deps_.topology != nullptr) {
    deps_.topology->SetReader([this](std::vector<EdgeHist>* e, std::vector<double>* b) {
      return ReadEdges(e, b);
    });
  }
  return absl::OkStatus();
}

absl::Status TcpCollector::WriteControlMaps(const Config& config) {
  const TcpConfig& tc = config.collectors.tcp;
  if (tc.latency_buckets.size() > KMON_TCP_MAX_BOUNDS) {
    return absl::InvalidArgumentError(absl::StrCat(
        "collector=tcp: latency_buckets has ", tc.latency_buckets.size(),
        " bounds; at most ", KMON_TCP_MAX_BOUNDS, " fit the kernel's histogram"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  tcp_config cfg{};
  std::vector<uint64_t> ns = BoundsToNanos(tc.latency_buckets);
  for (size_t i = 0; i < ns.size(); ++i) cfg.bounds_ns[i] = ns[i];
  cfg.nbounds = static_cast<uint32_t>(ns.size());
  cfg.filter_ports = tc.ports.empty() ? 0 : 1;
  cfg.topology = config.collectors.topology.enabled ? 1 : 0;
  cfg.peer_address = config.collectors.topology.external_peers == "address" ? 1 : 0;

  // New bounds change what every slot means: start the histograms afresh (a counter
  // reset to Prometheus) rather than export counts under the wrong `le`.
  const bool bounds_changed = !bounds_.empty() && bounds_ != tc.latency_buckets;
  uint32_t zero = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.tcp_config), &zero, &cfg, BPF_ANY) != 0) {
    return BpfError(kName, "map=tcp_config: update", errno);
  }
  if (bounds_changed) {
    ClearHash(bpf_map__fd(skel_->maps.connect_hist), sizeof(tcp_hist_key));
    ClearHash(bpf_map__fd(skel_->maps.edges), sizeof(tcp_edge_key));
    LogInfo("tcp: latency buckets changed; histograms restart", {{"collector", kName}});
  }
  bounds_ = tc.latency_buckets;

  int ports_fd = bpf_map__fd(skel_->maps.ports);
  ClearHash(ports_fd, sizeof(uint16_t));
  uint8_t one = 1;
  for (uint16_t p : tc.ports) {
    if (bpf_map_update_elem(ports_fd, &p, &one, BPF_ANY) != 0) {
      return BpfError(kName, "map=ports: update", errno);
    }
  }
  max_series_ = config.limits.max_series_per_collector;
  return absl::OkStatus();
}

absl::Status TcpCollector::Reconfigure(const Config& config) { return WriteControlMaps(config); }

std::optional<WorkloadLabels> TcpCollector::LabelsOf(uint64_t cgroup_id) {
  if (cgroup_id == 0) return WorkloadLabels{};  // node level: no socket, or a kernel one
  return deps_.workloads->Lookup(cgroup_id);
}

absl::Status TcpCollector::ReadEdges(std::vector<EdgeHist>* edges, std::vector<double>* bounds) {
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ == nullptr) return absl::FailedPreconditionError("tcp collector stopped");
  std::vector<std::pair<tcp_edge_key, std::vector<tcp_hist>>> raw;
  absl::Status st = ReadPerCpuHash(bpf_map__fd(skel_->maps.edges), KMON_TCP_EDGES_MAX, &raw);
  if (!st.ok()) return st;
  *bounds = bounds_;
  edges->clear();
  for (const auto& [k, per_cpu] : raw) {
    EdgeHist e;
    e.client_cgroup = k.client_cgroup;
    e.server_cgroup = k.server_cgroup;
    std::memcpy(e.client_addr.data(), k.client_addr, 16);
    e.server_port = k.server_port;
    uint64_t sum_ns = 0;
    e.slots = SumSlots(per_cpu, bounds_.size() + 1, &e.count, &sum_ns);
    e.sum_seconds = static_cast<double>(sum_ns) / 1e9;
    edges->push_back(std::move(e));
  }
  return absl::OkStatus();
}

void TcpCollector::CollectLocked(std::vector<prometheus::MetricFamily>* out) {
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

  const size_t nslots = bounds_.size() + 1;
  std::vector<std::pair<tcp_edge_key, std::vector<tcp_hist>>> edges;
  std::vector<std::pair<tcp_hist_key, std::vector<tcp_hist>>> connects;
  std::vector<std::pair<uint64_t, std::vector<tcp_stats>>> stats;
  std::vector<std::pair<uint64_t, tcp_conn>> conns;
  absl::Status st = ReadPerCpuHash(bpf_map__fd(skel_->maps.edges), KMON_TCP_EDGES_MAX, &edges);
  if (st.ok()) {
    st = ReadPerCpuHash(bpf_map__fd(skel_->maps.connect_hist), KMON_TCP_HIST_MAX, &connects);
  }
  if (st.ok()) st = ReadPerCpuHash(bpf_map__fd(skel_->maps.stats), KMON_TCP_STATS_MAX, &stats);
  if (st.ok()) st = ReadHash(bpf_map__fd(skel_->maps.conns), KMON_TCP_CONNS_MAX, &conns);
  if (!st.ok()) {
    ++read_errors_;
    LogWarn("reading BPF map failed", {{"collector", kName}, {"err", st.ToString()}});
    return;
  }

  // Request histograms per server and port: the sum of that server's edges.
  struct Hist {
    std::vector<uint64_t> slots;
    uint64_t sum_ns = 0;
  };
  std::map<std::pair<uint64_t, uint16_t>, Hist> hists;
  for (const auto& [k, per_cpu] : edges) {
    uint64_t count, sum_ns;
    auto slots = SumSlots(per_cpu, nslots, &count, &sum_ns);
    Hist& h = hists[{k.server_cgroup, k.server_port}];
    if (h.slots.empty()) h.slots.assign(nslots, 0);
    for (size_t i = 0; i < nslots; ++i) h.slots[i] += slots[i];
    h.sum_ns += sum_ns;
  }
  // Bytes of open connections are still in their state, not yet in `stats`.
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> live_bytes;
  for (const auto& [sk, c] : conns) {
    live_bytes[c.cgroup_id].first += c.bytes_sent;
    live_bytes[c.cgroup_id].second += c.bytes_received;
  }

  // Budget: every series a workload adds, so the same workloads win on every scrape.
  std::map<uint64_t, int64_t> cost;
  for (const auto& [k, v] : hists) cost[k.first] += static_cast<int64_t>(nslots) + 2;
  for (const auto& [k, v] : connects) cost[k.cgroup_id] += static_cast<int64_t>(nslots) + 2;
  for (const auto& [cg, v] : stats) cost[cg] += 10;
  for (const auto& [sk, c] : conns) cost[c.cgroup_id] += 1;
  for (const auto& [cg, b] : live_bytes) cost[cg] += 0;  // named even with only live bytes
  budget_.Begin(max_series_);
  std::unordered_map<uint64_t, std::optional<WorkloadLabels>> labels;
  for (const auto& [cg, n] : cost) {
    auto l = LabelsOf(cg);
    labels[cg] = l ? std::optional(budget_.Admit(*l, n)) : std::nullopt;
  }
  auto values = [&](uint64_t cg, std::vector<std::string> extra) -> std::vector<std::string> {
    const WorkloadLabels& l = *labels[cg];
    std::vector<std::string> v{l.namespace_, l.pod, l.container};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  };

  for (const auto& [k, h] : hists) {
    if (!labels[k.first]) continue;
    req.AddHistogram(values(k.first, {std::to_string(k.second)}), bounds_, h.slots,
                     static_cast<double>(h.sum_ns) / 1e9);
  }
  for (const auto& [k, per_cpu] : connects) {
    if (!labels[k.cgroup_id]) continue;
    uint64_t count, sum_ns;
    auto slots = SumSlots(per_cpu, nslots, &count, &sum_ns);
    connect.AddHistogram(values(k.cgroup_id, {}), bounds_, slots,
                         static_cast<double>(sum_ns) / 1e9);
  }
  std::map<uint64_t, tcp_stats> totals;
  for (const auto& [cg, per_cpu] : stats) {
    tcp_stats& s = totals[cg];
    for (const auto& v : per_cpu) {
      s.opened_inbound += v.opened_inbound;
      s.opened_outbound += v.opened_outbound;
      s.connect_failures += v.connect_failures;
      s.retransmits += v.retransmits;
      s.resets_sent += v.resets_sent;
      s.resets_received += v.resets_received;
      s.tcp_bytes_sent += v.tcp_bytes_sent;
      s.tcp_bytes_received += v.tcp_bytes_received;
      s.udp_bytes_sent += v.udp_bytes_sent;
      s.udp_bytes_received += v.udp_bytes_received;
    }
  }
  for (const auto& [cg, b] : live_bytes) {
    if (b.first == 0 && b.second == 0) continue;
    totals[cg].tcp_bytes_sent += b.first;
    totals[cg].tcp_bytes_received += b.second;
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
  for (const auto& [sk, c] : conns) {
    if (!labels[c.cgroup_id] || c.role == TCP_ROLE_UNKNOWN) continue;
    if (c.role == TCP_ROLE_CLIENT && c.lport == 0) continue;  // still connecting
    active.AddGauge(values(c.cgroup_id, {c.role == TCP_ROLE_SERVER ? "inbound" : "outbound"}), 1);
  }
  for (const FamilyBuilder* b : {&req, &opened, &active, &connect, &failures, &retrans, &resets,
                                 &bytes}) {
    out->push_back(b->Build());
  }

  // Entries of cgroups that are gone: their series go, and so do their slots.
  for (const auto& [cg, l] : labels) {
    if (l || cg == 0) continue;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.stats), &cg);
    tcp_hist_key ck{};
    ck.cgroup_id = cg;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.connect_hist), &ck);
  }
}

void TcpCollector::Collect(std::vector<prometheus::MetricFamily>* out) noexcept {
  try {
    std::lock_guard<std::mutex> lock(mu_);
    if (skel_ == nullptr) return;
    CollectLocked(out);
  } catch (const std::exception& e) {
    LogError("collect failed", {{"collector", kName}, {"err", e.what()}});
  }
}

void TcpCollector::Stop() {
  if (deps_.topology != nullptr) deps_.topology->ClearReader();
  std::lock_guard<std::mutex> lock(mu_);
  if (skel_ != nullptr) {
    if (deps_.watched != nullptr) deps_.watched->Unregister(bpf_map__fd(skel_->maps.filter_config));
    tcp_bpf__destroy(skel_);
    skel_ = nullptr;
  }
}

const bpf_object* TcpCollector::BpfObject() const { return skel_ ? skel_->obj : nullptr; }

std::map<std::string, uint64_t> TcpCollector::EventsLost() const {
  std::lock_guard<std::mutex> lock(mu_);
  return StandardEventsLost(skel_ ? skel_->maps.lost : nullptr, read_errors_);
}

uint64_t TcpCollector::SeriesOverflow() const {
  std::lock_guard<std::mutex> lock(mu_);
  return budget_.Overflowed();
}

}  // namespace kmon
