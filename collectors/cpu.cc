#include "collectors/cpu.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "base/log.h"
#include "bpf/cpu.h"
#include "bpf/cpu.skel.h"
#include "bpf/kmon_common.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"
#include "collectors/offcpu/offcpu_service.h"

namespace kmon {
namespace {

constexpr char kName[] = "cpu";

const char* const kStateNames[KMON_CPU_KIND_MAX] = {"", "sleep", "io", "other"};

class BpfCpuDataSource : public CpuDataSource {
 public:
  BpfCpuDataSource(int counters_fd, int hists_fd)
      : counters_fd_(counters_fd), hists_fd_(hists_fd) {}
  absl::Status Read(std::vector<CpuCounters>* counters, std::vector<CpuHistogram>* hists) override {
    absl::Status st = ReadPerCpuHashAs<uint64_t, cpu_counters>(
        counters_fd_,
        [](uint64_t cg, std::span<const cpu_counters> per_cpu) {
          CpuCounters c{.cgroup_id = cg};
          for (const auto& v : per_cpu) {
            c.oncpu_ns += v.oncpu_ns;
            c.voluntary += v.voluntary;
            c.involuntary += v.involuntary;
          }
          return c;
        },
        counters);
    if (!st.ok()) return st;
    return ReadHashAs<cpu_hist_key, cpu_hist>(
        hists_fd_,
        [](const cpu_hist_key& k, const cpu_hist& v) {
          CpuHistogram h{.cgroup_id = k.cgroup_id, .kind = k.kind, .sum_ns = v.sum_ns};
          for (int i = 0; i < KMON_CPU_HIST_SLOTS; ++i) h.slots[i] = v.slots[i];
          return h;
        },
        hists);
  }

 private:
  int counters_fd_, hists_fd_;
};

class BpfOffCpuStackSource : public OffCpuStackSource {
 public:
  BpfOffCpuStackSource(int aggregates_fd, int stacks_fd, bpf_link* held, int cpu_lost_fd,
                       size_t stack_capacity)
      : aggregates_fd_(aggregates_fd),
        stacks_fd_(stacks_fd),
        held_(held),
        cpu_lost_fd_(cpu_lost_fd),
        stack_capacity_(stack_capacity) {}

  absl::Status Read(std::vector<OffCpuRawEntry>* out) override {
    std::vector<std::pair<offcpu_stack_key, offcpu_stack_value>> raw;
    absl::Status st = ReadHash(aggregates_fd_, &raw);
    if (!st.ok()) return st;
    out->clear();
    out->reserve(raw.size());
    for (const auto& [k, v] : raw) {
      OffCpuRawEntry e;
      e.key = k;
      e.totals = {v.ns, v.count};
      out->push_back(e);
    }
    return absl::OkStatus();
  }

  std::vector<uint64_t> Stack(int32_t id) override {
    if (id < 0) return {};
    std::vector<uint64_t> ips(KMON_CPU_STACK_DEPTH, 0);
    uint32_t key = static_cast<uint32_t>(id);
    if (bpf_map_lookup_elem(stacks_fd_, &key, ips.data()) != 0) return {};
    size_t n = 0;
    while (n < ips.size() && ips[n] != 0) ++n;
    ips.resize(n);
    return ips;
  }

  std::optional<OffCpuTotals> Take(const offcpu_stack_key& key) override {
    // BPF_MAP_LOOKUP_AND_DELETE_ELEM on a hash: the read and the delete are one step.
    offcpu_stack_value v{};
    if (bpf_map_lookup_and_delete_elem(aggregates_fd_, &key, &v) == 0) {
      return OffCpuTotals{v.ns, v.count};
    }
    offcpu_stack_value again{};
    if (bpf_map_lookup_elem(aggregates_fd_, &key, &again) != 0) return std::nullopt;
    bpf_map_delete_elem(aggregates_fd_, &key);  // kernels without lookup-and-delete for hashes
    return OffCpuTotals{again.ns, again.count};
  }

  std::vector<int32_t> StackIds() override {
    std::vector<int32_t> ids;
    uint32_t prev = 0, next = 0;
    bool have_prev = false;
    while (bpf_map_get_next_key(stacks_fd_, have_prev ? &prev : nullptr, &next) == 0) {
      ids.push_back(static_cast<int32_t>(next));
      prev = next;
      have_prev = true;
    }
    return ids;
  }

  // The task-local states are read through the kmon_cpu_held iterator: two ids per
  // thread off CPU. Unknown (no iterator): every id is kept rather than one in use.
  std::vector<int32_t> StackIdsHeldByThreads() override {
    const int fd = held_ != nullptr ? bpf_iter_create(bpf_link__fd(held_)) : -1;
    if (fd < 0) return StackIds();
    std::vector<int32_t> ids;
    int32_t buf[1024];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
      ids.insert(ids.end(), buf, buf + n / static_cast<ssize_t>(sizeof(int32_t)));
    }
    close(fd);
    return n < 0 ? StackIds() : ids;
  }

  void DeleteStack(int32_t id) override {
    uint32_t key = static_cast<uint32_t>(id);
    bpf_map_delete_elem(stacks_fd_, &key);
  }

  size_t StackCapacity() const override { return stack_capacity_; }

  uint64_t StackCollisions() override {
    auto sums = ReadPerCpuU64Array(cpu_lost_fd_, KMON_CPU_LOST_MAX);
    return sums.ok() ? (*sums)[KMON_CPU_LOST_STACK_COLLISION] : 0;
  }

 private:
  int aggregates_fd_, stacks_fd_;
  bpf_link* held_;
  int cpu_lost_fd_;
  size_t stack_capacity_;
};

}  // namespace

const std::vector<double>& CpuHistogramBounds() {
  static const std::vector<double> bounds = Log2MicrosecondBounds(KMON_CPU_HIST_BOUNDS);
  return bounds;
}

absl::Status CheckSchedSwitchHasPrevState(const btf* vmlinux) {
  // typedef void (*btf_trace_sched_switch)(void *__data, bool preempt,
  //     struct task_struct *prev, struct task_struct *next, unsigned int prev_state);
  const int id = btf__find_by_name_kind(vmlinux, "btf_trace_sched_switch", BTF_KIND_TYPEDEF);
  if (id <= 0) {
    return absl::FailedPreconditionError(
        "collector=cpu: the kernel's BTF has no sched_switch tracepoint (btf_trace_sched_switch)");
  }
  const btf_type* t = btf__type_by_id(vmlinux, btf__type_by_id(vmlinux, id)->type);
  if (t != nullptr && btf_is_ptr(t)) t = btf__type_by_id(vmlinux, t->type);
  if (t == nullptr || !btf_is_func_proto(t)) {
    return absl::FailedPreconditionError(
        "collector=cpu: btf_trace_sched_switch in the kernel's BTF is not a function pointer");
  }
  const int args = btf_vlen(t) - 1;  // without the tracepoint's __data
  if (args < 4) {
    return absl::FailedPreconditionError(absl::StrCat(
        "collector=cpu: needs Linux 5.18 or later: this kernel's sched_switch tracepoint passes ",
        args,
        " arguments, without prev_state (added in 5.18 by commit fa2c3254d7cf, "
        "\"sched/tracing: Don't re-read p->state when emitting sched_switch event\")"));
  }
  return absl::OkStatus();
}

bool RunQueueClockReachable(const btf* vmlinux) {
  return StructHasMember(vmlinux, "sched_entity", "cfs_rq") &&
         StructHasMember(vmlinux, "cfs_rq", "rq") && StructHasMember(vmlinux, "rq", "clock");
}

bool KernelAccountsRunQueueWaits(const btf* vmlinux) {
  return StructHasMember(vmlinux, "task_struct", "sched_info") &&
         StructHasMember(vmlinux, "sched_info", "run_delay") &&
         StructHasMember(vmlinux, "sched_info", "last_queued") && RunQueueClockReachable(vmlinux);
}

std::vector<prometheus::MetricFamily> BuildCpuFamilies(const std::vector<CpuCounters>& counters,
                                                       const std::vector<CpuHistogram>& hists,
                                                       WorkloadLabeler* labeler) {
  const std::vector<std::string> wl{"namespace", "pod", "container"};
  FamilyBuilder oncpu("kmon_cpu_oncpu_seconds_total",
                      "Time threads of the workload ran on a CPU, up to the scrape.",
                      prometheus::MetricType::Counter, wl);
  FamilyBuilder switches("kmon_cpu_context_switches_total",
                         "Context switches away from the workload's threads: voluntary when a "
                         "thread blocked, involuntary when it was preempted while runnable.",
                         prometheus::MetricType::Counter,
                         {"namespace", "pod", "container", "kind"});
  FamilyBuilder offcpu("kmon_cpu_offcpu_duration_seconds",
                       "Off-CPU episodes (switch-out to wakeup) of at least "
                       "collectors.cpu.offcpu_min, by the state the thread blocked in: sleep "
                       "(interruptible), io (uninterruptible), other.",
                       prometheus::MetricType::Histogram,
                       {"namespace", "pod", "container", "state"});
  FamilyBuilder runq("kmon_cpu_runqueue_latency_seconds",
                     "Time runnable threads waited for a CPU: wakeup, or preemption, to switch-in.",
                     prometheus::MetricType::Histogram, wl);

  // A histogram is KMON_CPU_HIST_SLOTS buckets plus _sum and _count in the TSDB.
  constexpr int64_t kHistSeries = KMON_CPU_HIST_SLOTS + 2;
  std::unordered_map<uint64_t, int64_t> series;
  for (const auto& c : counters) series[c.cgroup_id] += 3;
  for (const auto& h : hists) {
    if (h.kind < KMON_CPU_KIND_MAX) series[h.cgroup_id] += kHistSeries;
  }
  std::vector<uint64_t> cgroups;
  for (const auto& [cg, n] : series) cgroups.push_back(cg);
  std::sort(cgroups.begin(), cgroups.end());  // the same workloads win the budget every scrape

  std::unordered_map<uint64_t, const WorkloadLabels*> admitted;
  for (uint64_t cg : cgroups) {
    const WorkloadLabels* l = labeler->Labels(cg, series[cg]);
    if (l == nullptr) continue;  // the cgroup is gone; its entries are dropped by the collector
    admitted[cg] = l;
  }

  std::vector<const CpuCounters*> sc;
  for (const auto& c : counters) sc.push_back(&c);
  std::sort(sc.begin(), sc.end(),
            [](const CpuCounters* a, const CpuCounters* b) { return a->cgroup_id < b->cgroup_id; });
  for (const CpuCounters* c : sc) {
    auto it = admitted.find(c->cgroup_id);
    if (it == admitted.end()) continue;
    const WorkloadLabels& l = *it->second;
    oncpu.AddCounter({l.namespace_, l.pod, l.container}, c->oncpu_ns / 1e9);
    switches.AddCounter({l.namespace_, l.pod, l.container, "voluntary"},
                        static_cast<double>(c->voluntary));
    switches.AddCounter({l.namespace_, l.pod, l.container, "involuntary"},
                        static_cast<double>(c->involuntary));
  }
  const std::vector<double>& bounds = CpuHistogramBounds();
  for (const auto& h : hists) {
    auto it = admitted.find(h.cgroup_id);
    if (it == admitted.end() || h.kind >= KMON_CPU_KIND_MAX) continue;
    const WorkloadLabels& l = *it->second;
    const std::span<const uint64_t> counts(h.slots);
    if (h.kind == KMON_CPU_KIND_RUNQ) {
      runq.AddHistogram({l.namespace_, l.pod, l.container}, bounds, counts, h.sum_ns / 1e9);
    } else {
      offcpu.AddHistogram({l.namespace_, l.pod, l.container, kStateNames[h.kind]}, bounds, counts,
                          h.sum_ns / 1e9);
    }
  }
  return BuildAll({&oncpu, &switches, &offcpu, &runq});
}

void ParseCpuSection(YamlParser& p, const YamlValue& v, CpuConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               // 0 is allowed: it records every off-CPU episode, however short.
               {"offcpu_min", [&](const YamlValue& f) { p.Duration(f, &c->offcpu_min); }},
               {"stacks",
                [&](const YamlValue& f) {
                  if (YamlParser::IsPlainBool(f)) {
                    p.Report(f.key, f.line,
                             "must be one of on_demand, always, off; a boolean is no longer "
                             "taken (true was what is now always, false off)");
                    return;
                  }
                  std::string s;
                  if (p.OneOf(f, {"on_demand", "always", "off"}, &s)) {
                    c->stacks = *ParseOffCpuStacks(s);
                  }
                }},
           });
}

CpuCollector::CpuCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, cpu_bpf__create_skeleton,
                   {{"cpu_config", sizeof(uint32_t), sizeof(cpu_config)},
                    {"cpu_cache", sizeof(uint32_t), sizeof(cpu_cache)},
                    {"task_state", sizeof(uint32_t), sizeof(cpu_task_state)},
                    {"cg_counters", sizeof(uint64_t), sizeof(cpu_counters)},
                    {"cg_hists", sizeof(cpu_hist_key), sizeof(cpu_hist)},
                    {"offcpu_stacks", sizeof(offcpu_stack_key), sizeof(offcpu_stack_value)},
                    {"stacks", sizeof(uint32_t), KMON_CPU_STACK_DEPTH * sizeof(uint64_t)}}) {}

CpuCollector::~CpuCollector() { Stop(); }

absl::Status CpuCollector::BeforeLoad(const CollectorConfig& config) {
  // A clear message on kernels before 5.18 rather than the verifier's.
  absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
  if (!vmlinux.ok()) {
    return absl::Status(vmlinux.status().code(),
                        absl::StrCat("collector=cpu: ", vmlinux.status().message()));
  }
  absl::Status st = CheckSchedSwitchHasPrevState(*vmlinux);
  if (!st.ok()) return st;
  // The kernel's account of run-queue waits, where it has one, spares a hook on
  // every wakeup (bpf/cpu.bpf.c: sched_info).
  const bool kernel_waits = KernelAccountsRunQueueWaits(*vmlinux);
  waits_from_kernel_ = kernel_waits;
  skel_->rodata->sched_info = kernel_waits ? 1 : 0;
  // Timestamps from the run queue's clock where the BTF lets BPF reach it, else
  // from a helper call that costs more than the rest of a switch (bpf/cpu.bpf.c:
  // rq_clock).
  const bool rq_clock = RunQueueClockReachable(*vmlinux);
  clock_from_run_queue_ = rq_clock;
  skel_->rodata->rq_clock = rq_clock ? 1 : 0;
  bpf_program__set_autoload(skel_->progs.kmon_cpu_wakeup, !kernel_waits);
  const char* how = kernel_waits ? "run-queue waits from the kernel's sched_info; sched_wakeup "
                                   "not hooked"
                                 : "run-queue waits from sched_wakeup (the kernel's BTF has no "
                                   "sched_info run_delay/last_queued or cfs_rq->rq->clock)";
  LogInfo("cpu: how run-queue waits are measured",
          {{"collector", kName},
           {"waits", how},
           {"clock", rq_clock ? "rq->clock" : "bpf_ktime_get_ns (no cfs_rq->rq->clock in BTF)"}});
  SetDetail(kernel_waits ? "run-queue waits: the kernel's sched_info (no sched_wakeup hook)"
                         : "run-queue waits: tp_btf/sched_wakeup");
  // Run from user space on each CPU (FlushOnCpuTime), never attached.
  bpf_program__set_autoattach(skel_->progs.kmon_cpu_flush, false);
  // An iterator: its link is made in AfterAttach, and it is not an attach point.
  bpf_program__set_autoattach(skel_->progs.kmon_cpu_held, false);
  // With `always` stacks come all the time and collide more: the larger map. A
  // reload that changes the mode keeps the size the collector started with.
  const bool always = config.collectors.Get<CpuConfig>().stacks == OffCpuStacks::kAlways;
  bpf_map__set_max_entries(skel_->maps.stacks,
                           always ? KMON_CPU_STACKS_MAX : KMON_CPU_STACKS_ON_DEMAND);
  return absl::OkStatus();
}

absl::Status CpuCollector::AfterAttach(const CollectorConfig& config) {
  // Threads running now have no state yet: their time counts from here. Once the
  // flush is known to run on every CPU, counts may wait in the per-CPU cache.
  if (FlushOnCpuTime()) {
    std::lock_guard<std::mutex> lock(config_mu_);
    cache_ = true;
    absl::Status st = WriteCpuConfig();
    if (!st.ok()) return st;
  }
  source_ = std::make_unique<BpfCpuDataSource>(bpf_map__fd(skel_->maps.cg_counters),
                                               bpf_map__fd(skel_->maps.cg_hists));
  held_link_ = bpf_program__attach_iter(skel_->progs.kmon_cpu_held, nullptr);
  if (held_link_ == nullptr) {
    // Without it the stack map is swept of nothing (every id might be held).
    LogWarn("attaching the kmon_cpu_held iterator failed; stack ids are never swept",
            {{"collector", kName}, {"err", std::strerror(errno)}});
  }
  offcpu_ = std::make_unique<OffCpuService>(
      std::make_unique<BpfOffCpuStackSource>(
          bpf_map__fd(skel_->maps.offcpu_stacks), bpf_map__fd(skel_->maps.stacks), held_link_,
          bpf_map__fd(skel_->maps.cpu_lost), bpf_map__max_entries(skel_->maps.stacks)),
      NewProcFrameResolver(), deps().workloads, [this](bool on) { return SetCapture(on); });
  offcpu_->SetStacks(config.collectors.Get<CpuConfig>().stacks);
  offcpu_->Start();
  if (deps().handle_http) deps().handle_http(kOffCpuPath, offcpu_->Handler());
  return absl::OkStatus();
}

absl::Status CpuCollector::WriteCpuConfig() {
  cpu_config value{};
  value.offcpu_min_ns = offcpu_min_ns_;
  value.stacks =
      stacks_ == OffCpuStacks::kAlways || (stacks_ == OffCpuStacks::kOnDemand && window_open_) ? 1
                                                                                               : 0;
  value.gen = gen_;
  value.cache = cache_ ? 1 : 0;
  return WriteControlEntry(kName, skel_->maps.cpu_config, &value);
}

absl::Status CpuCollector::SetCapture(bool on) {
  std::lock_guard<std::mutex> lock(config_mu_);
  if (skel_ == nullptr) return absl::FailedPreconditionError("collector=cpu: not running");
  window_open_ = on;
  if (on) ++gen_;  // stacks taken before this window are never aggregated in it
  return WriteCpuConfig();
}

absl::Status CpuCollector::Configure(const CollectorConfig& config) {
  const CpuConfig& cc = config.collectors.Get<CpuConfig>();
  {
    std::lock_guard<std::mutex> lock(config_mu_);
    offcpu_min_ns_ = static_cast<uint64_t>(std::max<int64_t>(0, cc.offcpu_min.count()));
    stacks_ = cc.stacks;
    absl::Status st = WriteCpuConfig();
    if (!st.ok()) return st;
  }
  if (offcpu_) offcpu_->SetStacks(cc.stacks);
  return absl::OkStatus();
}

void CpuCollector::DropStale(const std::vector<CpuCounters>& counters,
                             const std::vector<CpuHistogram>& hists) {
  for (const auto& c : counters) {
    if (labeler().Gone(c.cgroup_id)) {
      bpf_map_delete_elem(bpf_map__fd(skel_->maps.cg_counters), &c.cgroup_id);
    }
  }
  for (const auto& h : hists) {
    if (!labeler().Gone(h.cgroup_id)) continue;
    cpu_hist_key k{};
    k.cgroup_id = h.cgroup_id;
    k.kind = h.kind;
    bpf_map_delete_elem(bpf_map__fd(skel_->maps.cg_hists), &k);
  }
}

bool CpuCollector::FlushOnCpuTime() {
  if (skel_ == nullptr) return false;
  std::lock_guard<std::mutex> lock(flush_mu_);
  int cpu = -1;
  absl::Status st = RunOnEveryCpu(bpf_program__fd(skel_->progs.kmon_cpu_flush), &cpu);
  if (st.ok()) return true;
  // Without the flush, running threads' time still counts, at their switch-out,
  // and counts go straight into the maps from now on (what a CPU's cache holds
  // now reaches them when its way is next used).
  if (!flush_warned_.exchange(true)) {
    LogWarn(
        "running kmon_cpu_flush failed; on-CPU time of running threads is counted "
        "when they leave the CPU",
        {{"collector", kName}, {"cpu", std::to_string(cpu)}, {"err", st.ToString()}});
  }
  std::lock_guard<std::mutex> config_lock(config_mu_);
  if (cache_) {
    cache_ = false;
    absl::Status w = WriteCpuConfig();
    if (!w.ok()) LogWarn("cpu: switching the cache off", {{"err", w.ToString()}});
  }
  return false;
}

absl::Status CpuCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  FlushOnCpuTime();
  std::vector<CpuCounters> counters;
  std::vector<CpuHistogram> hists;
  absl::Status st = source_->Read(&counters, &hists);
  if (!st.ok()) return st;
  auto families = BuildCpuFamilies(counters, hists, &labeler());
  DropStale(counters, hists);
  for (auto& f : families) out->push_back(std::move(f));
  return absl::OkStatus();
}

void CpuCollector::BeforeDestroy() {
  if (offcpu_) offcpu_->Stop();  // the handler answers 503 from now on
  if (held_link_ != nullptr) {
    bpf_link__destroy(held_link_);
    held_link_ = nullptr;
  }
  {
    std::lock_guard<std::mutex> lock(config_mu_);
    window_open_ = false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  source_.reset();
}

void CpuCollector::AddOwnEventsLost(std::map<std::string, uint64_t>* lost) const {
  // Exited processes' stacks with no room in user space (each counted once).
  (*lost)["offcpu_store_full"] = offcpu_ ? offcpu_->StoreFull() : 0;
  // Stacks the stack map refused because their bucket held another (bpf/cpu.h).
  (*lost)["stack_collision"] = 0;
  const int fd = MapFd("cpu_lost");
  if (fd >= 0) {
    auto sums = ReadPerCpuU64Array(fd, KMON_CPU_LOST_MAX);
    if (sums.ok()) (*lost)["stack_collision"] = (*sums)[KMON_CPU_LOST_STACK_COLLISION];
  }
}

}  // namespace kmon
