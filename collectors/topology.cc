#include "collectors/topology.h"

#include <absl/strings/str_cat.h>
#include <arpa/inet.h>

#include <cmath>
#include <limits>
#include <unordered_set>

#include "base/http_params.h"
#include "base/log.h"
#include "collectors/families.h"
#include "collectors/workload_labeler.h"
#include "provider/workload.h"

namespace kmon {
namespace {

constexpr char kName[] = "topology";
constexpr auto kKeepSnapshots = std::chrono::minutes(10);
// Snapshots kept for the API's windows are this far apart (at most 61 held): one per
// scrape held every edge 600 times over at a scrape a second.
constexpr auto kSnapshotEvery = std::chrono::seconds(10);
constexpr size_t kMaxCachedNames = 65536;

std::string EdgeId(const TopologyNode& c, const TopologyNode& s, uint16_t port) {
  return absl::StrCat(c.id, "->", s.id, ":", port);
}

}  // namespace

double HistogramQuantile(double q, const std::vector<double>& bounds,
                         const std::vector<uint64_t>& slots) {
  uint64_t total = 0;
  for (uint64_t s : slots) total += s;
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  const double rank = q * static_cast<double>(total);
  double seen = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    const double before = seen;
    seen += static_cast<double>(slots[i]);
    if (seen < rank || slots[i] == 0) continue;
    if (i >= bounds.size()) return bounds.empty() ? 0 : bounds.back();  // +Inf: last bound
    const double lo = i == 0 ? 0 : bounds[i - 1];
    return lo + (bounds[i] - lo) * (rank - before) / static_cast<double>(slots[i]);
  }
  return bounds.empty() ? 0 : bounds.back();
}

std::string FormatAddress(const std::array<uint8_t, 16>& addr) {
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  char buf[INET6_ADDRSTRLEN] = {};
  if (std::equal(kMapped, kMapped + 12, addr.begin())) {
    inet_ntop(AF_INET, addr.data() + 12, buf, sizeof buf);
  } else {
    inet_ntop(AF_INET6, addr.data(), buf, sizeof buf);
  }
  return buf;
}

void ParseTopologySection(YamlParser& p, const YamlValue& v, TopologyConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"granularity",
                [&](const YamlValue& f) {
                  p.OneOf(f, {"pod", "workload"}, &c->granularity);
                }},
               {"external_peers",
                [&](const YamlValue& f) {
                  p.OneOf(f, {"aggregate", "address"}, &c->external_peers);
                }},
               {"service_graph_metrics",
                [&](const YamlValue& f) { p.Bool(f, &c->service_graph_metrics); }},
           });
}

std::vector<prometheus::MetricFamily> BuildTopologyFamilies(
    const std::map<std::string, NamedEdge>& edges, const std::vector<double>& bounds,
    bool service_graph_metrics, WorkloadLabeler* labeler) {
  const std::vector<std::string> labels{"client", "server", "client_namespace", "server_namespace",
                                        "server_port"};
  FamilyBuilder reqs("kmon_topology_requests_total",
                     "Requests from client to server, measured at the server.",
                     prometheus::MetricType::Counter, labels);
  FamilyBuilder dur("kmon_topology_request_duration_seconds",
                    "Server-side latency of requests from client to server.",
                    prometheus::MetricType::Histogram, labels);
  FamilyBuilder sg_total("traces_service_graph_request_total",
                         "Requests between two nodes (Grafana service graph).",
                         prometheus::MetricType::Counter, {"client", "server"});
  FamilyBuilder sg_secs("traces_service_graph_request_server_seconds",
                        "Server-side request latency between two nodes (Grafana service graph).",
                        prometheus::MetricType::Histogram, {"client", "server"});
  // An edge is a counter and a histogram (its buckets, _sum and _count); with the
  // service-graph names, twice that. Edges are visited in id order, so the same
  // edges win the budget on every scrape.
  const int64_t per_edge =
      (1 + static_cast<int64_t>(bounds.size()) + 3) * (service_graph_metrics ? 2 : 1);
  for (const auto& [id, e] : edges) {
    std::vector<std::string> v{e.client.id, e.server.id, e.client.namespace_, e.server.namespace_,
                               std::to_string(e.hist.server_port)};
    std::vector<std::string> sg{e.client.id, e.server.id};
    if (!labeler->Fits(id, per_edge)) {
      v.assign(v.size(), kOverflowLabel);
      sg.assign(sg.size(), kOverflowLabel);
    }
    reqs.AddCounter(v, static_cast<double>(e.hist.count));
    dur.AddHistogram(v, bounds, e.hist.slots, e.hist.sum_seconds);
    if (service_graph_metrics) {
      sg_total.AddCounter(sg, static_cast<double>(e.hist.count));
      sg_secs.AddHistogram(sg, bounds, e.hist.slots, e.hist.sum_seconds);
    }
  }
  std::vector<prometheus::MetricFamily> out{reqs.Build(), dur.Build()};
  if (service_graph_metrics) {
    out.push_back(sg_total.Build());
    out.push_back(sg_secs.Build());
  }
  return out;
}

TopologyCollector::TopologyCollector(const CollectorDeps& deps) : Collector(kName, deps) {}

absl::Status TopologyCollector::DoStart(const CollectorConfig& config) {
  if (deps().topology == nullptr || !deps().topology->HasReader()) {
    return absl::FailedPreconditionError(
        "collector=topology: fed by the tcp collector's requests, which is not running "
        "(collectors.tcp.enabled)");
  }
  absl::Status st = Configure(config);
  if (!st.ok()) return st;
  started_ = std::chrono::steady_clock::now();
  if (deps().handle_http) {
    deps().handle_http("/api/v1/topology", [this](const HttpRequest& req) {
      HttpResponse r;
      int64_t seconds = 60;
      if (auto it = req.query.find("seconds"); it != req.query.end()) {
        // A window reaches back at most as far as the snapshots kept.
        absl::StatusOr<int64_t> s = ParseWholeNumberParam(
            "seconds", it->second, {1, std::chrono::seconds(kKeepSnapshots).count()});
        if (!s.ok()) {
          r.status = 400;
          r.body = absl::StrCat(s.status().message(), "\n");
          return r;
        }
        seconds = *s;
      }
      try {
        r.body = Graph(std::chrono::seconds(seconds)).dump();
        r.content_type = "application/json";
        r.compressible = true;
      } catch (const std::exception& e) {
        r.status = 500;
        r.body = absl::StrCat("topology: ", e.what(), "\n");
      }
      return r;
    });
  }
  running_ = true;
  return absl::OkStatus();
}

absl::Status TopologyCollector::Configure(const CollectorConfig& config) {
  const TopologyConfig& tc = config.collectors.Get<TopologyConfig>();
  service_graph_metrics_ = tc.service_graph_metrics;
  const bool by_workload = tc.granularity == "workload";
  // Names are cached by cgroup; a change of granularity changes every one.
  if (by_workload != by_workload_) names_.clear();
  by_workload_ = by_workload;
  external_by_address_ = tc.external_peers == "address";
  return absl::OkStatus();
}

TopologyNode TopologyCollector::PodNode(const std::string& ns, const std::string& pod,
                                        const std::string& workload) const {
  // A pod's workload is known only from Kubernetes; before that it stands for itself.
  const std::string& name = by_workload_ && !workload.empty() ? workload : pod;
  return {ns.empty() ? name : absl::StrCat(ns, "/", name), ns};
}

TopologyNode TopologyCollector::NodeOf(uint64_t cgroup_id, const std::array<uint8_t, 16>& addr) {
  if (cgroup_id == 0) {
    bool any = false;
    for (uint8_t b : addr) any |= b != 0;
    if (!any) return {"external", ""};
    // A pod on another node, by the cluster-wide pod-IP index; an address nobody
    // claims (kept with external_peers: address, or a pod gone meanwhile) as itself.
    if (deps().peers != nullptr) {
      if (std::optional<PeerName> peer = deps().peers->Find(addr)) {
        return PodNode(peer->namespace_, peer->pod, peer->workload);
      }
    }
    return {external_by_address_ ? FormatAddress(addr) : "external", ""};
  }
  if (auto l = labeler().Lookup(cgroup_id)) {
    TopologyNode n = l->pod.empty() ? TopologyNode{l->container, l->namespace_}
                                    : PodNode(l->namespace_, l->pod, l->workload);
    if (names_.size() < kMaxCachedNames) names_[cgroup_id] = n;
    return n;
  }
  // A client that has exited keeps the name it had while it ran.
  if (auto it = names_.find(cgroup_id); it != names_.end()) return it->second;
  return {"external", ""};
}

absl::Status TopologyCollector::ReadNamed(std::map<std::string, NamedEdge>* out,
                                          std::vector<double>* bounds, std::vector<EdgeHist>* gone,
                                          std::chrono::steady_clock::time_point* read_at) {
  std::vector<EdgeHist> edges;
  absl::Status st = deps().topology->Read(&edges, bounds);
  if (!st.ok()) return st;
  out->clear();
  const auto at = std::chrono::steady_clock::now();
  std::unordered_set<uint64_t> named_cgroups;
  for (auto& e : edges) {
    TopologyNode client = NodeOf(e.client_cgroup, e.client_addr);
    TopologyNode server = NodeOf(e.server_cgroup, {});
    // An end gone for the labeler's grace: the edge's series leave, as every series
    // of a gone cgroup does, and the edge with them.
    if (gone != nullptr && (labeler().Gone(e.client_cgroup) || labeler().Gone(e.server_cgroup))) {
      gone->push_back(std::move(e));
      continue;
    }
    named_cgroups.insert(e.client_cgroup);
    named_cgroups.insert(e.server_cgroup);
    std::string id = EdgeId(client, server, e.server_port);
    // Two cgroups may share a name (two containers of one pod): add them up.
    auto [it, inserted] = out->try_emplace(id, NamedEdge{client, server, e});
    if (!inserted) {
      EdgeHist& h = it->second.hist;
      h.count += e.count;
      h.sum_seconds += e.sum_seconds;
      for (size_t i = 0; i < h.slots.size() && i < e.slots.size(); ++i) h.slots[i] += e.slots[i];
    }
  }
  // A gone cgroup's name is kept while an edge still names it, and no longer.
  std::erase_if(names_, [&](const auto& n) { return !named_cgroups.count(n.first); });
  if (snapshots_.empty() || at - snapshots_.back().at >= kSnapshotEvery) {
    Snapshot snap{at, {}};
    for (const auto& [id, e] : *out) snap.edges.emplace(id, e.hist);
    snapshots_.push_back(std::move(snap));
  }
  while (!snapshots_.empty() && snapshots_.front().at < at - kKeepSnapshots) {
    snapshots_.pop_front();
  }
  if (read_at != nullptr) *read_at = at;
  return absl::OkStatus();
}

absl::Status TopologyCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  std::map<std::string, NamedEdge> named;
  std::vector<double> bounds;
  std::vector<EdgeHist> gone;
  absl::Status st = ReadNamed(&named, &bounds, &gone);
  if (!st.ok()) return st;
  deps().topology->Drop(gone);
  for (auto& f : BuildTopologyFamilies(named, bounds, service_graph_metrics_, &labeler())) {
    out->push_back(std::move(f));
  }
  return absl::OkStatus();
}

nlohmann::json TopologyCollector::Graph(std::chrono::seconds window) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!running_) throw std::runtime_error("the topology collector is not running");
  std::map<std::string, NamedEdge> named;
  std::vector<double> bounds;
  std::chrono::steady_clock::time_point now;
  absl::Status st = ReadNamed(&named, &bounds, nullptr, &now);
  if (!st.ok()) throw std::runtime_error(std::string(st.message()));
  // The baseline is the newest snapshot at least `window` old (so the window is up
  // to kSnapshotEvery longer than asked; window_seconds says how long); until there
  // is one, counts are since the collector started and so is the time they are
  // divided by.
  const Snapshot* base = nullptr;
  for (const auto& s : snapshots_) {
    if (s.at <= now - window) base = &s;
  }
  const double dt = std::chrono::duration<double>(now - (base ? base->at : started_)).count();
  nlohmann::json nodes = nlohmann::json::array(), edges = nlohmann::json::array();
  std::map<std::string, std::string> node_ns;
  for (const auto& [id, t] : named) {
    const TopologyNode& c = t.client;
    const TopologyNode& s = t.server;
    const EdgeHist& h = t.hist;
    EdgeHist d = h;
    if (base) {
      if (auto it = base->edges.find(id); it != base->edges.end()) {
        d.count -= std::min(d.count, it->second.count);
        for (size_t i = 0; i < d.slots.size() && i < it->second.slots.size(); ++i) {
          d.slots[i] -= std::min(d.slots[i], it->second.slots[i]);
        }
      }
    }
    node_ns[c.id] = c.namespace_;
    node_ns[s.id] = s.namespace_;
    const double p95 = HistogramQuantile(0.95, bounds, d.slots);
    nlohmann::json e = {{"id", id},
                        {"source", c.id},
                        {"target", s.id},
                        {"server_port", h.server_port},
                        {"requests", d.count},
                        {"requests_per_second", dt > 0 ? static_cast<double>(d.count) / dt : 0.0},
                        {"window_seconds", dt}};
    e["p95_seconds"] = std::isnan(p95) ? nlohmann::json(nullptr) : nlohmann::json(p95);
    e["mainstat"] = e["requests_per_second"];
    e["secondarystat"] = e["p95_seconds"];
    edges.push_back(std::move(e));
  }
  for (const auto& [id, ns] : node_ns) {
    nodes.push_back({{"id", id}, {"title", id}, {"namespace", ns}, {"subtitle", ns}});
  }
  return {{"nodes", nodes}, {"edges", edges}};
}

void TopologyCollector::DoStop() {
  std::lock_guard<std::mutex> lock(mu_);
  running_ = false;
}

}  // namespace kmon
