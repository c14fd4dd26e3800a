#include "collectors/dns.h"

#include <absl/strings/str_cat.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <ctime>
#include <set>

#include "base/log.h"
#include "bpf/dns.h"
#include "bpf/dns.skel.h"
#include "bpf/kmon_common.h"
#include "collectors/bpf_util.h"
#include "collectors/families.h"
#include "provider/workload.h"

namespace kmon {
namespace {

constexpr char kName[] = "dns";

// The longest timeout the config takes: pending queries are kept that long.
constexpr std::chrono::nanoseconds kMaxTimeout = std::chrono::minutes(5);

DnsHist SumDnsHist(const dns_hist_key& k, std::span<const dns_hist> per_cpu) {
  DnsHist h{.cgroup_id = k.cgroup_id, .rcode = k.rcode};
  h.slots.assign(KMON_DNS_MAX_BOUNDS + 1, 0);
  for (const auto& v : per_cpu) {
    h.sum_ns += v.sum_ns;
    for (size_t i = 0; i < h.slots.size(); ++i) h.slots[i] += v.slots[i];
  }
  return h;
}

class BpfDnsDataSource : public DnsDataSource {
 public:
  explicit BpfDnsDataSource(dns_bpf* skel) : skel_(skel) {}
  absl::Status Read(std::vector<DnsHist>* hists, std::vector<DnsTimeouts>* timeouts) override {
    absl::Status st =
        ReadPerCpuHashAs<dns_hist_key, dns_hist>(bpf_map__fd(skel_->maps.hists), SumDnsHist, hists);
    if (!st.ok()) return st;
    return ReadPerCpuHashAs<uint64_t, dns_stats>(
        bpf_map__fd(skel_->maps.stats),
        [](uint64_t cg, std::span<const dns_stats> per_cpu) {
          DnsTimeouts t{.cgroup_id = cg};
          for (const auto& v : per_cpu) t.count += v.timeouts;
          return t;
        },
        timeouts);
  }

 private:
  dns_bpf* skel_;
};

// bpf_ktime_get_ns()'s clock.
uint64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

bool TimedOut(uint64_t start_ns, uint64_t now_ns, uint64_t timeout_ns) {
  return start_ns <= now_ns && now_ns - start_ns > timeout_ns;
}

}  // namespace

void ParseDnsSection(YamlParser& p, const YamlValue& v, DnsConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"ports",
                [&](const YamlValue& f) {
                  std::vector<uint16_t> ports;
                  p.PortSet(f, &ports);
                  if (f.node.IsSequence() && f.node.size() == 0) {
                    // Unlike tcp's, an empty list cannot mean "all": every packet
                    // would be read as DNS.
                    p.Report(f.key, f.line,
                             "must not be empty (set enabled: false to turn the collector off)");
                    return;
                  }
                  if (!ports.empty()) c->ports = std::move(ports);
                }},
               {"timeout",
                [&](const YamlValue& f) {
                  std::chrono::nanoseconds d{};
                  if (!p.Duration(f, &d)) return;
                  if (d <= std::chrono::nanoseconds(0) || d > kMaxTimeout) {
                    p.Report(f.key, f.line, "must be more than 0 and at most 5m");
                    return;
                  }
                  c->timeout = d;
                }},
               {"latency_buckets",
                [&](const YamlValue& f) {
                  ParseLatencyBuckets(p, f, KMON_DNS_MAX_BOUNDS, &c->latency_buckets);
                }},
           });
}

std::string DnsRcodeName(uint32_t rcode) {
  // RFC 1035 section 4.1.1 (0-5), RFC 2136 (6-10), RFC 8490 (11); the IANA
  // registry's names (RFC 6895), in upper case.
  static constexpr const char* kNames[] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                           "NOTIMP",  "REFUSED", "YXDOMAIN", "YXRRSET",
                                           "NXRRSET", "NOTAUTH", "NOTZONE",  "DSOTYPENOTIMP"};
  if (rcode < std::size(kNames)) return kNames[rcode];
  return std::to_string(rcode);
}

std::vector<prometheus::MetricFamily> BuildDnsFamilies(const std::vector<DnsHist>& hists,
                                                       const std::vector<DnsTimeouts>& timeouts,
                                                       const std::vector<double>& bounds,
                                                       WorkloadLabeler* labeler) {
  using prometheus::MetricType;
  FamilyBuilder req("kmon_dns_request_duration_seconds",
                    "DNS query latency at the client: query sent to its answer received, by the "
                    "answer's rcode.",
                    MetricType::Histogram, {"namespace", "pod", "container", "rcode"});
  FamilyBuilder lost("kmon_dns_timeouts_total",
                     "DNS queries not answered within the timeout (collectors.dns.timeout).",
                     MetricType::Counter, {"namespace", "pod", "container"});
  const size_t nslots = bounds.size() + 1;
  // Budget: every series a workload adds, visited in cgroup order so the same
  // workloads win on every scrape. Every workload seen has a timeouts series.
  std::map<uint64_t, int64_t> cost;
  std::map<uint64_t, uint64_t> timed_out;
  for (const DnsHist& h : hists) cost[h.cgroup_id] += static_cast<int64_t>(nslots) + 2;
  for (const DnsTimeouts& t : timeouts) timed_out[t.cgroup_id] += t.count;
  for (auto& [cg, n] : cost) timed_out.emplace(cg, 0);
  for (const auto& [cg, n] : timed_out) cost[cg] += 1;
  std::map<uint64_t, std::optional<WorkloadLabels>> labels;
  for (const auto& [cg, n] : cost) labels[cg] = labeler->LabelsFor(cg, n);

  std::vector<const DnsHist*> sorted;
  for (const DnsHist& h : hists) sorted.push_back(&h);
  std::sort(sorted.begin(), sorted.end(), [](const DnsHist* a, const DnsHist* b) {
    return std::tie(a->cgroup_id, a->rcode) < std::tie(b->cgroup_id, b->rcode);
  });
  for (const DnsHist* h : sorted) {
    const std::optional<WorkloadLabels>& l = labels[h->cgroup_id];
    if (!l) continue;  // the cgroup is gone; its entries are dropped by the collector
    std::vector<uint64_t> slots(nslots, 0);
    std::copy_n(h->slots.begin(), std::min(nslots, h->slots.size()), slots.begin());
    req.AddHistogram({l->namespace_, l->pod, l->container, DnsRcodeName(h->rcode)}, bounds, slots,
                     static_cast<double>(h->sum_ns) / 1e9);
  }
  for (const auto& [cg, n] : timed_out) {
    const std::optional<WorkloadLabels>& l = labels[cg];
    if (!l) continue;
    lost.AddCounter({l->namespace_, l->pod, l->container}, static_cast<double>(n));
  }
  return {req.Build(), lost.Build()};
}

DnsCollector::DnsCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, dns_bpf__create_skeleton,
                   {{"hists", sizeof(dns_hist_key), sizeof(dns_hist)},
                    {"stats", sizeof(uint64_t), sizeof(dns_stats)},
                    {"pending", sizeof(dns_pending_key), sizeof(dns_pending)},
                    {"dns_config", sizeof(uint32_t), sizeof(dns_config)},
                    {"dns_ports", sizeof(uint32_t), sizeof(uint8_t)},
                    {"dns_lost", sizeof(uint32_t), sizeof(uint64_t)},
                    {"tcp_state", sizeof(uint64_t), sizeof(dns_tcp_state)}}) {}

absl::Status DnsCollector::Configure(const CollectorConfig& config) {
  const DnsConfig& dc = config.collectors.Get<DnsConfig>();
  if (dc.latency_buckets.size() > KMON_DNS_MAX_BOUNDS) {
    return absl::InvalidArgumentError(
        absl::StrCat("collector=dns: latency_buckets has ", dc.latency_buckets.size(),
                     " bounds; at most ", KMON_DNS_MAX_BOUNDS, " fit the kernel's histogram"));
  }
  dns_config cfg{};
  for (size_t i = 0; i < dc.latency_buckets.size(); ++i) {
    cfg.bounds_ns[i] = static_cast<uint64_t>(std::llround(dc.latency_buckets[i] * 1e9));
  }
  cfg.nbounds = static_cast<uint32_t>(dc.latency_buckets.size());
  cfg.timeout_ns = static_cast<uint64_t>(dc.timeout.count());
  absl::Status written = WriteControlEntry(kName, skel_->maps.dns_config, &cfg);
  if (!written.ok()) return written;
  // New bounds change what every slot means: the histograms start afresh (a
  // counter reset to Prometheus) rather than show counts under the wrong `le`.
  if (!bounds_.empty() && bounds_ != dc.latency_buckets) {
    ClearHash(bpf_map__fd(skel_->maps.hists), sizeof(dns_hist_key));
    LogInfo("dns: latency buckets changed; histograms restart", {{"collector", kName}});
  }
  bounds_ = dc.latency_buckets;
  timeout_ns_ = cfg.timeout_ns;

  // Only the ports that change are written: set the new ones first, so a port
  // kept across the reload is never off.
  const int ports_fd = bpf_map__fd(skel_->maps.dns_ports);
  const std::set<uint16_t> want(dc.ports.begin(), dc.ports.end());
  for (uint16_t p : want) {
    uint32_t k = p;
    uint8_t one = 1;
    if (bpf_map_update_elem(ports_fd, &k, &one, BPF_ANY) != 0) {
      return BpfError(kName, "map=dns_ports: update", errno);
    }
  }
  for (uint16_t p : ports_) {
    if (want.count(p)) continue;
    uint32_t k = p;
    uint8_t off = 0;
    if (bpf_map_update_elem(ports_fd, &k, &off, BPF_ANY) != 0) {
      return BpfError(kName, "map=dns_ports: update", errno);
    }
  }
  ports_.assign(want.begin(), want.end());
  return absl::OkStatus();
}

absl::Status DnsCollector::AfterAttach(const CollectorConfig&) {
  // cgroup_skb programs attach to a cgroup, which libbpf's attach step cannot
  // guess: the v2 root, so every socket on the host passes through them. The
  // links live in the skeleton, which detaches them when it goes.
  std::optional<std::string> root = DetectCgroup2Root();
  if (!root) return absl::FailedPreconditionError("collector=dns: no cgroup v2 hierarchy");
  const int fd = open(root->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return BpfError(kName, absl::StrCat("open ", *root), errno);
  struct {
    bpf_program* prog;
    bpf_link** link;
  } progs[] = {{skel_->progs.kmon_dns_egress, &skel_->links.kmon_dns_egress},
               {skel_->progs.kmon_dns_ingress, &skel_->links.kmon_dns_ingress}};
  for (const auto& p : progs) {
    *p.link = bpf_program__attach_cgroup(p.prog, fd);
    if (*p.link == nullptr) {
      const int err = errno;
      close(fd);
      return BpfError(
          kName, absl::StrCat("attach ", bpf_program__section_name(p.prog), " to ", *root), err);
    }
  }
  close(fd);
  source_ = std::make_unique<BpfDnsDataSource>(skel_);
  swept_.clear();
  return absl::OkStatus();
}

void DnsCollector::BeforeDestroy() {
  std::lock_guard<std::mutex> lock(mu_);
  source_.reset();
}

void DnsCollector::AddOwnEventsLost(std::map<std::string, uint64_t>* lost) const {
  (*lost)["malformed"] = 0;
  (*lost)["tcp_unsynced"] = 0;
  const int fd = MapFd("dns_lost");
  if (fd < 0) return;
  auto sums = ReadPerCpuU64Array(fd, DNS_LOST_MAX);
  if (!sums.ok()) return;
  (*lost)["malformed"] = (*sums)[DNS_LOST_MALFORMED];
  (*lost)["tcp_unsynced"] = (*sums)[DNS_LOST_TCP_UNSYNCED];
}

absl::Status DnsCollector::SweepTimedOut() {
  const int fd = bpf_map__fd(skel_->maps.pending);
  std::vector<std::pair<dns_pending_key, dns_pending>> all;
  absl::Status st = ReadHash<dns_pending_key, dns_pending>(fd, &all);
  if (!st.ok()) return st;
  const uint64_t now = MonotonicNs();
  for (const auto& [k, v] : all) {
    if (!TimedOut(v.start_ns, now, timeout_ns_)) continue;
    // Whoever deletes an entry owns it: the answer may be arriving right now.
    dns_pending taken{};
    if (bpf_map_lookup_and_delete_elem(fd, &k, &taken) != 0) continue;
    if (TimedOut(taken.start_ns, now, timeout_ns_)) {
      ++swept_[taken.cgroup_id];
      continue;
    }
    // Re-sent after the timeout since it was read: the kernel side counted the
    // first send's timeout and keeps timing the new one.
    bpf_map_update_elem(fd, &k, &taken, BPF_NOEXIST);
  }
  return absl::OkStatus();
}

void DnsCollector::DropStale(const std::vector<DnsHist>& hists,
                             const std::vector<DnsTimeouts>& timeouts) {
  for (const DnsHist& h : hists) {
    if (!labeler().Gone(h.cgroup_id)) continue;
    dns_hist_key k{};
    k.cgroup_id = h.cgroup_id;
    k.rcode = h.rcode;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.hists), &k);
  }
  for (const DnsTimeouts& t : timeouts) {
    if (!labeler().Gone(t.cgroup_id)) continue;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.stats), &t.cgroup_id);
    swept_.erase(t.cgroup_id);
  }
}

absl::Status DnsCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  absl::Status st = SweepTimedOut();
  if (!st.ok()) return st;
  std::vector<DnsHist> hists;
  std::vector<DnsTimeouts> timeouts;
  st = source_->Read(&hists, &timeouts);
  if (!st.ok()) return st;
  for (const auto& [cg, n] : swept_) timeouts.push_back({cg, n});
  for (auto& f : BuildDnsFamilies(hists, timeouts, bounds_, &labeler())) {
    out->push_back(std::move(f));
  }
  DropStale(hists, timeouts);
  return absl::OkStatus();
}

}  // namespace kmon
