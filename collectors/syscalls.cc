#include "collectors/syscalls.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include <absl/strings/str_cat.h>

#include "bpf/kmon_common.h"
#include "bpf/syscalls.h"
#include "bpf/syscalls.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/watched_cgroups.h"
#include "base/log.h"

namespace kmon {
namespace {

constexpr char kName[] = "syscalls";

class BpfSyscallCountSource : public SyscallCountSource {
 public:
  explicit BpfSyscallCountSource(int fd) : fd_(fd) {}
  absl::Status Read(std::vector<SyscallCount>* out) override {
    std::vector<std::pair<syscall_key, std::vector<syscall_value>>> raw;
    absl::Status st = ReadPerCpuHash(fd_, KMON_SYSCALL_COUNTS_MAX, &raw);
    if (!st.ok()) return st;
    out->clear();
    out->reserve(raw.size());
    for (const auto& [k, per_cpu] : raw) {
      SyscallCount c;
      c.cgroup_id = k.cgroup_id;
      c.nr = static_cast<int>(k.nr);
      for (const auto& v : per_cpu) {
        c.count += v.count;
        c.errors += v.errors;
      }
      out->push_back(c);
    }
    return absl::OkStatus();
  }

 private:
  int fd_;
};

}  // namespace

std::vector<prometheus::MetricFamily> BuildSyscallFamilies(
    const std::vector<SyscallCount>& counts, const std::map<int, std::string>& names,
    WorkloadResolver* workloads, SeriesBudget* budget, int64_t max_series) {
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
  budget->Begin(max_series);
  for (const SyscallCount* c : sorted) {
    std::optional<WorkloadLabels> wl = workloads->Lookup(c->cgroup_id);
    if (!wl) continue;  // the cgroup is gone; its entries are dropped below
    WorkloadLabels l = budget->Admit(*wl, series_per_cgroup[c->cgroup_id]);
    std::vector<std::string> values{l.namespace_, l.pod, l.container, names.at(c->nr)};
    calls.AddCounter(values, static_cast<double>(c->count));
    errors.AddCounter(values, static_cast<double>(c->errors));
  }
  return {calls.Build(), errors.Build()};
}

SyscallsCollector::SyscallsCollector(const CollectorDeps& deps) : deps_(deps) {}

SyscallsCollector::~SyscallsCollector() { Stop(); }

absl::Status SyscallsCollector::Start(const Config& config) {
  skel_ = syscalls_bpf__open();
  if (skel_ == nullptr) return BpfError(kName, "open", errno);
  absl::Status st = CheckMapLayout(kName, skel_->maps.counts, sizeof(syscall_key),
                                   sizeof(syscall_value));
  if (!st.ok()) return st;
  int err = syscalls_bpf__load(skel_);
  if (err) return BpfError(kName, "load", err);
  st = Reconfigure(config);
  if (!st.ok()) return st;
  if (deps_.watched != nullptr) {
    st = deps_.watched->Register(bpf_map__fd(skel_->maps.filter_config),
                                 bpf_map__fd(skel_->maps.watched_cgroups));
    if (!st.ok()) return st;
  }
  err = syscalls_bpf__attach(skel_);
  if (err) return BpfError(kName, "attach tp_btf/sys_exit", err);
  source_ = std::make_unique<BpfSyscallCountSource>(bpf_map__fd(skel_->maps.counts));
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

absl::Status SyscallsCollector::Reconfigure(const Config& config) {
  const SyscallsConfig& sc = config.collectors.syscalls;
  for (const auto& name : sc.unavailable) {
    LogWarn("syscall does not exist on this architecture; not counted",
            {{"collector", kName}, {"syscall", name}});
  }
  absl::Status st = WriteSyscallSet(sc.numbers);
  if (!st.ok()) return st;
  std::lock_guard<std::mutex> lock(mu_);
  names_.clear();
  for (size_t i = 0; i < sc.numbers.size() && i < sc.syscalls.size(); ++i) {
    names_[sc.numbers[i]] = sc.syscalls[i];
  }
  max_series_ = config.limits.max_series_per_collector;
  return absl::OkStatus();
}

void SyscallsCollector::DropStale(const std::vector<SyscallCount>& counts) {
  if (skel_ == nullptr) return;
  int fd = bpf_map__fd(skel_->maps.counts);
  missing_.Begin();
  for (const auto& c : counts) {
    bool gone = !names_.count(c.nr) ||
                (!deps_.workloads->Lookup(c.cgroup_id).has_value() && missing_.Gone(c.cgroup_id));
    if (!gone) continue;
    syscall_key k{};
    k.cgroup_id = c.cgroup_id;
    k.nr = static_cast<uint32_t>(c.nr);
    bpf_map_delete_elem(fd, &k);
  }
  missing_.End();
}

void SyscallsCollector::Collect(std::vector<prometheus::MetricFamily>* out) noexcept {
  if (!source_) return;
  try {
    std::vector<SyscallCount> counts;
    absl::Status st = source_->Read(&counts);
    if (!st.ok()) {
      ++read_errors_;
      LogWarn("reading BPF map failed", {{"collector", kName}, {"err", st.ToString()}});
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto families = BuildSyscallFamilies(counts, names_, deps_.workloads, &budget_, max_series_);
    DropStale(counts);
    for (auto& f : families) out->push_back(std::move(f));
  } catch (const std::exception& e) {
    LogError("collect failed", {{"collector", kName}, {"err", e.what()}});
  }
}

void SyscallsCollector::Stop() {
  source_.reset();
  if (skel_ != nullptr) {
    if (deps_.watched != nullptr) deps_.watched->Unregister(bpf_map__fd(skel_->maps.filter_config));
    syscalls_bpf__destroy(skel_);
    skel_ = nullptr;
  }
}

const bpf_object* SyscallsCollector::BpfObject() const { return skel_ ? skel_->obj : nullptr; }

std::map<std::string, uint64_t> SyscallsCollector::EventsLost() const {
  return StandardEventsLost(skel_ ? skel_->maps.lost : nullptr, read_errors_.load());
}

uint64_t SyscallsCollector::SeriesOverflow() const {
  std::lock_guard<std::mutex> lock(mu_);
  return budget_.Overflowed();
}

}  // namespace kmon
