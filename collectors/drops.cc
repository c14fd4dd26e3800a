#include "collectors/drops.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <tuple>

#include "base/log.h"
#include "bpf/drops.h"
#include "bpf/drops.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"

namespace kmon {
namespace {

constexpr char kName[] = "drops";

DropCount SumDropCount(const drop_key& k, std::span<const drop_value> per_cpu) {
  DropCount c{
      .cgroup_id = k.cgroup_id, .location = k.location, .reason = k.reason, .protocol = k.protocol};
  for (const auto& v : per_cpu) c.count += v.count;
  return c;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

absl::StatusOr<std::map<uint32_t, std::string>> DropReasonNames(const btf* kernel_btf) {
  if (kernel_btf == nullptr) return absl::InvalidArgumentError("no BTF");
  int id = btf__find_by_name_kind(kernel_btf, "skb_drop_reason", BTF_KIND_ENUM);
  if (id < 0) id = btf__find_by_name_kind(kernel_btf, "skb_drop_reason", BTF_KIND_ENUM64);
  if (id < 0) {
    return absl::NotFoundError(
        "enum skb_drop_reason is not in the kernel's BTF (kernels before v5.17 have no drop "
        "reasons)");
  }
  const btf_type* t = btf__type_by_id(kernel_btf, id);
  std::map<uint32_t, std::string> names;
  const int n = btf_vlen(t);
  for (int i = 0; i < n; ++i) {
    const char* raw = nullptr;
    uint64_t value = 0;
    if (btf_is_enum(t)) {
      const struct btf_enum* e = btf_enum(t) + i;
      raw = btf__name_by_offset(kernel_btf, e->name_off);
      value = static_cast<uint32_t>(e->val);
    } else {
      const struct btf_enum64* e = btf_enum64(t) + i;
      raw = btf__name_by_offset(kernel_btf, e->name_off);
      value = btf_enum64_value(e);
    }
    if (raw == nullptr || value > UINT32_MAX) continue;
    std::string name = raw;
    if (name == "SKB_DROP_REASON_MAX" || name == "SKB_DROP_REASON_SUBSYS_MASK") continue;
    for (const char* prefix : {"SKB_DROP_REASON_", "SKB_"}) {
      if (name.rfind(prefix, 0) == 0) {
        name = name.substr(std::strlen(prefix));
        break;
      }
    }
    names.emplace(static_cast<uint32_t>(value), Lower(name));
  }
  if (names.empty()) return absl::NotFoundError("enum skb_drop_reason has no values");
  return names;
}

std::string DropReasonLabel(const std::map<uint32_t, std::string>& names, uint32_t reason) {
  auto it = names.find(reason);
  if (it != names.end()) return it->second;
  return absl::StrCat("unknown_", reason);
}

std::string DropProtocolLabel(uint32_t protocol) {
  // By enum kmon_drop_proto value.
  static constexpr const char* kNames[KMON_DROP_PROTO_MAX] = {"other", "tcp", "udp", "icmp",
                                                              "icmpv6"};
  return protocol < KMON_DROP_PROTO_MAX ? kNames[protocol] : "other";
}

std::optional<std::string> DropFunctionName(const KernelSymbols* symbols, uint64_t addr) {
  if (symbols == nullptr || addr == 0) return std::nullopt;
  // kfree_skb's location is its return address: the call before it belongs to the
  // dropping function even when it is that function's last instruction.
  std::optional<std::string> name = symbols->Lookup(addr - 1);
  if (!name) return std::nullopt;
  // The function alone: a module symbol may come with its "\t[module]" suffix.
  return name->substr(0, name->find_first_of("\t "));
}

std::string DropLocationLabel(const KernelSymbols* symbols, uint64_t addr) {
  if (std::optional<std::string> name = DropFunctionName(symbols, addr)) return *name;
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(addr));
  return hex;
}

prometheus::MetricFamily BuildDropFamily(const std::vector<DropCount>& counts,
                                         const std::map<uint32_t, std::string>& reasons,
                                         const std::function<std::string(uint64_t)>& location_name,
                                         WorkloadLabeler* labeler) {
  FamilyBuilder drops(
      "kmon_skb_drops_total",
      "Packets the kernel dropped, by the workload owning the packet's socket (empty for "
      "packets without one), L4 protocol, the kernel's drop reason and the dropping function.",
      prometheus::MetricType::Counter,
      {"namespace", "pod", "container", "protocol", "reason", "location"});

  // Visit in a fixed order so the same workloads win the budget on every scrape.
  std::vector<const DropCount*> sorted;
  sorted.reserve(counts.size());
  for (const auto& c : counts) sorted.push_back(&c);
  std::sort(sorted.begin(), sorted.end(), [](const DropCount* a, const DropCount* b) {
    return std::tie(a->cgroup_id, a->location, a->reason, a->protocol) <
           std::tie(b->cgroup_id, b->location, b->reason, b->protocol);
  });

  // Labels first: a workload costs one series per distinct (protocol, reason,
  // location) label set it ends up with, and many addresses in one function (or
  // several cgroups of one workload) make a single series.
  struct Row {
    WorkloadLabels workload;
    std::vector<std::string> rest;  // protocol, reason, location
    double count;
  };
  std::vector<Row> rows;
  rows.reserve(sorted.size());
  std::map<std::vector<std::string>, std::set<std::vector<std::string>>> series_of;
  for (const DropCount* c : sorted) {
    // No socket (cgroup 0): node level, namespace="", pod="", container="".
    std::optional<WorkloadLabels> wl = labeler->Lookup(c->cgroup_id);
    if (!wl) continue;  // the cgroup is gone; its entries are dropped by the collector
    Row r{std::move(*wl),
          {DropProtocolLabel(c->protocol), DropReasonLabel(reasons, c->reason),
           location_name(c->location)},
          static_cast<double>(c->count)};
    series_of[{r.workload.namespace_, r.workload.pod, r.workload.container}].insert(r.rest);
    rows.push_back(std::move(r));
  }

  for (const Row& r : rows) {
    const auto& series =
        series_of.at({r.workload.namespace_, r.workload.pod, r.workload.container});
    WorkloadLabels l = labeler->Admit(r.workload, static_cast<int64_t>(series.size()));
    drops.AddCounter({l.namespace_, l.pod, l.container, r.rest[0], r.rest[1], r.rest[2]}, r.count);
  }
  return drops.Build();
}

void ParseDropsSection(YamlParser& p, const YamlValue& v, DropsConfig* c) {
  ParseEnabledOnlySection(p, v, c);
}

DropsCollector::DropsCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, drops_bpf__create_skeleton,
                   {{"counts", sizeof(drop_key), sizeof(drop_value)}}) {}

absl::Status DropsCollector::BeforeLoad(const CollectorConfig&) {
  // Names first: both are read once here, not per sample. Of the vmlinux BTF only
  // the reason names are kept.
  absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
  if (!vmlinux.ok()) {
    return absl::Status(vmlinux.status().code(),
                        absl::StrCat("collector=drops: ", vmlinux.status().message()));
  }
  absl::StatusOr<std::map<uint32_t, std::string>> reasons = DropReasonNames(*vmlinux);
  if (!reasons.ok()) {
    return absl::Status(reasons.status().code(),
                        absl::StrCat("collector=drops: ", reasons.status().message()));
  }
  // Kernel addresses are KASLR-randomized: only the running kernel's table names
  // them. The table is the process-wide one; Read asks for it again each scrape.
  absl::Status why;
  std::shared_ptr<const KernelSymbols> symbols = KernelSymbols::Shared(&why);
  if (symbols == nullptr) {
    LogWarn("no kernel symbols; drop locations are shown as addresses",
            {{"collector", kName}, {"err", why.ToString()}});
  }
  reasons_ = std::move(*reasons);
  symbols_ = std::move(symbols);
  location_cache_.clear();
  return absl::OkStatus();
}

absl::Status DropsCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<PerCpuHashSource<drop_key, drop_value, DropCount>>(
      bpf_map__fd(skel_->maps.counts), SumDropCount);
  return absl::OkStatus();
}

void DropsCollector::BeforeDestroy() {
  std::lock_guard<std::mutex> lock(mu_);
  source_.reset();
  symbols_.reset();  // the last holder frees the shared table
  location_cache_.clear();
}

std::string DropsCollector::LocationName(uint64_t addr) {
  auto it = location_cache_.find(addr);
  if (it != location_cache_.end()) return it->second;
  std::optional<std::string> name = DropFunctionName(symbols_.get(), addr);
  // An address the table cannot name (a module loaded since it was read) is shown
  // as an address for now but not remembered, so a newer table can name it.
  if (!name) return DropLocationLabel(nullptr, addr);
  location_cache_.emplace(addr, *name);
  return *name;
}

void DropsCollector::DropStale(const std::vector<DropCount>& counts) {
  int fd = bpf_map__fd(skel_->maps.counts);
  for (const auto& c : counts) {
    if (!labeler().Gone(c.cgroup_id)) continue;  // node level (0) never goes
    drop_key k{};
    k.cgroup_id = c.cgroup_id;
    k.location = c.location;
    k.reason = c.reason;
    k.protocol = c.protocol;
    bpf_map_delete_elem(fd, &k);
  }
}

absl::Status DropsCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  std::vector<DropCount> counts;
  absl::Status st = source_->Read(&counts);
  if (!st.ok()) return st;
  // The shared table is replaced after lookups missed (a module loaded since):
  // names come from the newest one, and are remembered per table.
  std::shared_ptr<const KernelSymbols> symbols = KernelSymbols::Shared();
  if (symbols != symbols_) {
    symbols_ = std::move(symbols);
    location_cache_.clear();
  }
  out->push_back(BuildDropFamily(
      counts, reasons_, [this](uint64_t addr) { return LocationName(addr); }, &labeler()));
  DropStale(counts);
  return absl::OkStatus();
}

}  // namespace kmon
