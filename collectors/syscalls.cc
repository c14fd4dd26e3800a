#include "collectors/syscalls.h"

#include <absl/strings/str_cat.h>
#include <seccomp.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "base/log.h"
#include "bpf/kmon_common.h"
#include "bpf/syscalls.h"
#include "bpf/syscalls.skel.h"
#include "collectors/bpf_util.h"

namespace kmon {
namespace {

constexpr char kName[] = "syscalls";

enum class SyscallKind { kNative, kOtherArch, kUnknown };

// libseccomp's tables know every architecture's syscalls; for one this CPU lacks
// it returns a negative pseudo number (__PNR_*), distinct from the plain error.
SyscallKind ResolveSyscall(const std::string& name, int* nr) {
  *nr = seccomp_syscall_resolve_name(name.c_str());
  if (*nr == __NR_SCMP_ERROR) return SyscallKind::kUnknown;
  if (*nr < 0) return SyscallKind::kOtherArch;
  return SyscallKind::kNative;
}

// Syscall names, resolved to this architecture's numbers now so the syscalls
// collector only writes numbers into its control map.
void ParseSyscallList(YamlParser& p, const YamlValue& v, SyscallsConfig* out) {
  std::vector<std::string> names;
  if (!p.StringSet(v, "syscall", &names)) return;
  if (names.empty()) {
    // Unlike ports or devices, empty cannot sensibly mean "all" here: the
    // collector counts a chosen set. Rather than silently counting nothing,
    // say how to turn it off.
    p.Report(v.key, v.line, "must not be empty (set enabled: false to turn the collector off)");
    return;
  }
  std::vector<std::string> native;
  std::vector<int> numbers;
  std::vector<std::string> unavailable;
  const size_t before = p.ProblemCount();
  for (size_t i = 0; i < names.size(); ++i) {
    int nr = 0;
    switch (ResolveSyscall(names[i], &nr)) {
      case SyscallKind::kNative:
        native.push_back(names[i]);
        numbers.push_back(nr);
        break;
      case SyscallKind::kOtherArch:
        unavailable.push_back(names[i]);
        break;
      case SyscallKind::kUnknown: {
        const YAML::Node element = v.node[i];
        const int line = YamlLineOf(element);
        p.Report(absl::StrCat(v.key, "[", i, "]"), line > 0 ? line : v.line,
                 absl::StrCat("unknown syscall ", Quote(names[i])));
        break;
      }
    }
  }
  if (p.ProblemCount() != before) return;
  out->syscalls = std::move(native);
  out->numbers = std::move(numbers);
  out->unavailable = std::move(unavailable);
}

SyscallCount SumSyscallCount(const syscall_key& k, std::span<const syscall_value> per_cpu) {
  SyscallCount c{.cgroup_id = k.cgroup_id, .nr = static_cast<int>(k.nr)};
  for (const auto& v : per_cpu) {
    c.count += v.count;
    c.errors += v.errors;
  }
  return c;
}

}  // namespace

std::unique_ptr<SyscallsConfig> DefaultSyscallsSection() {
  auto s = std::make_unique<SyscallsConfig>();
  std::vector<std::string> names = std::move(s->syscalls);
  s->syscalls.clear();
  // The built-in names are all real syscalls somewhere, so each is either
  // native here or (epoll_wait on arm64) set aside exactly as the parser does.
  for (std::string& name : names) {
    int nr = 0;
    if (ResolveSyscall(name, &nr) == SyscallKind::kNative) {
      s->syscalls.push_back(std::move(name));
      s->numbers.push_back(nr);
    } else {
      s->unavailable.push_back(std::move(name));
    }
  }
  return s;
}

void ParseSyscallsSection(YamlParser& p, const YamlValue& v, SyscallsConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"syscalls", [&](const YamlValue& f) { ParseSyscallList(p, f, c); }},
           });
}

std::vector<prometheus::MetricFamily> BuildSyscallFamilies(const std::vector<SyscallCount>& counts,
                                                           const std::map<int, std::string>& names,
                                                           WorkloadLabeler* labeler) {
  const std::vector<std::string> label_names{"namespace", "pod", "container", "syscall"};
  FamilyBuilder calls("kmon_syscalls_total", "Syscalls made, by workload and syscall.",
                      prometheus::MetricType::Counter, label_names);
  FamilyBuilder errors("kmon_syscall_errors_total",
                       "Syscalls that returned an error (-4095..-1), by workload and syscall.",
                       prometheus::MetricType::Counter, label_names);

  // Each workload costs two series per syscall it made; visit in a fixed order so
  // the same workloads win the budget on every scrape.
  std::vector<const SyscallCount*> sorted;
  std::unordered_map<uint64_t, int64_t> series_per_cgroup;
  for (const auto& c : counts) {
    if (!names.count(c.nr)) continue;
    sorted.push_back(&c);
    series_per_cgroup[c.cgroup_id] += 2;
  }
  std::sort(sorted.begin(), sorted.end(), [](const SyscallCount* a, const SyscallCount* b) {
    return std::tie(a->cgroup_id, a->nr) < std::tie(b->cgroup_id, b->nr);
  });
  for (const SyscallCount* c : sorted) {
    const WorkloadLabels* l = labeler->Labels(c->cgroup_id, series_per_cgroup[c->cgroup_id]);
    if (l == nullptr) continue;  // the cgroup is gone; its entries are dropped by the collector
    const LabelValues values{l->namespace_, l->pod, l->container, names.at(c->nr)};
    calls.AddCounter(values, static_cast<double>(c->count));
    errors.AddCounter(values, static_cast<double>(c->errors));
  }
  return BuildAll({&calls, &errors});
}

SyscallsCollector::SyscallsCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, syscalls_bpf__create_skeleton,
                   {{"counts", sizeof(syscall_key), sizeof(syscall_value)}}) {}

absl::Status SyscallsCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<PerCpuHashSource<syscall_key, syscall_value, SyscallCount>>(
      bpf_map__fd(skel_->maps.counts), KMON_SYSCALL_COUNTS_MAX, SumSyscallCount);
  return absl::OkStatus();
}

absl::Status SyscallsCollector::WriteSyscallSet(const std::vector<int>& numbers) {
  // Rewrite the whole array: set the wanted numbers, clear the rest. Each update is
  // atomic per slot, so a syscall kept across a reload is never missed.
  int fd = bpf_map__fd(skel_->maps.syscall_set);
  std::vector<uint8_t> want(KMON_MAX_SYSCALL_NR, 0);
  for (int nr : numbers) {
    if (nr < 0 || nr >= KMON_MAX_SYSCALL_NR) {
      return absl::InvalidArgumentError(
          absl::StrCat("collector=syscalls: syscall number ", nr, " is beyond the map"));
    }
    want[nr] = 1;
  }
  for (uint32_t i = 0; i < KMON_MAX_SYSCALL_NR; ++i) {
    if (bpf_map_update_elem(fd, &i, &want[i], BPF_ANY) != 0) {
      return BpfError(kName, "map=syscall_set: update", errno);
    }
  }
  return absl::OkStatus();
}

absl::Status SyscallsCollector::Configure(const CollectorConfig& config) {
  const SyscallsConfig& sc = config.collectors.Get<SyscallsConfig>();
  for (const auto& name : sc.unavailable) {
    LogWarn("syscall does not exist on this architecture; not counted",
            {{"collector", kName}, {"syscall", name}});
  }
  absl::Status st = WriteSyscallSet(sc.numbers);
  if (!st.ok()) return st;
  names_.clear();
  for (size_t i = 0; i < sc.numbers.size() && i < sc.syscalls.size(); ++i) {
    names_[sc.numbers[i]] = sc.syscalls[i];
  }
  return absl::OkStatus();
}

void SyscallsCollector::DropStale(const std::vector<SyscallCount>& counts) {
  int fd = bpf_map__fd(skel_->maps.counts);
  for (const auto& c : counts) {
    if (names_.count(c.nr) && !labeler().Gone(c.cgroup_id)) continue;
    syscall_key k{};
    k.cgroup_id = c.cgroup_id;
    k.nr = static_cast<uint32_t>(c.nr);
    bpf_map_delete_elem(fd, &k);
  }
}

absl::Status SyscallsCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  std::vector<SyscallCount> counts;
  absl::Status st = source_->Read(&counts);
  if (!st.ok()) return st;
  auto families = BuildSyscallFamilies(counts, names_, &labeler());
  DropStale(counts);
  for (auto& f : families) out->push_back(std::move(f));
  return absl::OkStatus();
}

}  // namespace kmon
