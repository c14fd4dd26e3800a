// `cpu`: per-workload CPU time, context switches, off-CPU episodes by state, and
// run-queue latency, from the scheduler's tracepoints (sched_switch, sched_wakeup,
// sched_wakeup_new); and off-CPU time by stack, served as flame graphs on
// /debug/offcpu (see offcpu/offcpu_service.h).
//
// The histograms have fixed log2 buckets (le = 2^i microseconds, 1us .. 67.1s, +Inf),
// so a Grafana heatmap of off-CPU episodes over time is
//   sum by (le) (rate(kmon_cpu_offcpu_duration_seconds_bucket{state="io"}[1m]))
// with the panel's data format set to "Time series buckets" (and likewise for
// kmon_cpu_runqueue_latency_seconds_bucket).
//
// collectors.cpu.offcpu_min gates both outputs of off-CPU time, as the spec means it
// ("off-CPU episodes ... above offcpu_min"): an episode shorter than it lands neither
// in kmon_cpu_offcpu_duration_seconds nor in the /debug/offcpu stacks (it is still a
// context switch, and its run-queue wait is still measured).
//
// kmon_cpu_oncpu_seconds_total is exact at every scrape: Collect first has each CPU
// add its running thread's time so far (see kmon_cpu_flush in bpf/cpu.bpf.c), so a
// thread that never leaves its CPU climbs steadily rather than in one jump.
//
// Needs Linux 5.18 or later (sched_switch's prev_state argument); Start says so on
// older kernels.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bpf/cpu.h"
#include "collectors/bpf_collector.h"
#include "collectors/data_source.h"
#include "collectors/offcpu/on_demand.h"

struct cpu_bpf;
struct btf;
struct bpf_link;

namespace kmon {

/// collectors.cpu
struct CpuConfig : CollectorSectionOf<CpuConfig> {
  static constexpr char kName[] = "cpu";
  std::chrono::nanoseconds offcpu_min = std::chrono::milliseconds(1);
  OffCpuStacks stacks = OffCpuStacks::kOnDemand;
};
/// `stacks` takes on_demand, always or off; the boolean it was before is refused
/// with a message saying what each value became (true: always, false: off).
void ParseCpuSection(YamlParser& p, const YamlValue& v, CpuConfig* c);

/// Counters of one cgroup, summed over CPUs.
struct CpuCounters {
  uint64_t cgroup_id = 0;
  uint64_t oncpu_ns = 0;
  uint64_t voluntary = 0;
  uint64_t involuntary = 0;
};

/// One histogram (enum kmon_cpu_kind) of one cgroup, summed over CPUs.
struct CpuHistogram {
  uint64_t cgroup_id = 0;
  uint32_t kind = KMON_CPU_KIND_RUNQ;
  std::array<uint64_t, KMON_CPU_HIST_SLOTS> slots{};  // per slot, last is +Inf
  uint64_t sum_ns = 0;
};

/// The data maps (collectors/data_source.h).
using CpuDataSource = DataSource<CpuCounters, CpuHistogram>;

/// The histograms' upper bounds in seconds: 2^i us for i = 0..26 (the +Inf slot
/// is implicit).
const std::vector<double>& CpuHistogramBounds();

/// Whether the kernel's sched_switch tracepoint passes prev_state (Linux 5.18+),
/// from the func proto of the `btf_trace_sched_switch` typedef in its BTF; an error
/// names the minimum kernel.
absl::Status CheckSchedSwitchHasPrevState(const struct btf* vmlinux);

/// Whether BPF can read a task's run queue's clock (sched_entity.cfs_rq, cfs_rq.rq,
/// rq.clock in the kernel's BTF): then the cpu programs date events by it rather than
/// by bpf_ktime_get_ns().
bool RunQueueClockReachable(const struct btf* vmlinux);

/// Whether the kernel keeps its own account of run-queue waits that BPF can read at
/// sched_switch (CONFIG_SCHED_INFO: task_struct.sched_info's run_delay and last_queued,
/// and the per-CPU run queues' clock): then blocked threads' waits come from it and
/// sched_wakeup is not hooked; else kmon_cpu_wakeup dates each wakeup.
bool KernelAccountsRunQueueWaits(const struct btf* vmlinux);

/// Turns counters and histograms into the four families, resolving cgroups.
/// Pure apart from the labeler: golden tests feed it fixed input.
std::vector<prometheus::MetricFamily> BuildCpuFamilies(const std::vector<CpuCounters>& counters,
                                                       const std::vector<CpuHistogram>& hists,
                                                       WorkloadLabeler* labeler);

class OffCpuService;

class CpuCollector : public BpfCollector {
 public:
  explicit CpuCollector(const CollectorDeps& deps);
  ~CpuCollector() override;

  /// Whether the running collector takes run-queue waits from the kernel's account
  /// (KernelAccountsRunQueueWaits) rather than from hooking sched_wakeup.
  bool waits_from_kernel() const { return waits_from_kernel_; }
  /// Whether the running collector dates events by the run queues' clock
  /// (RunQueueClockReachable) rather than by bpf_ktime_get_ns().
  bool clock_from_run_queue() const { return clock_from_run_queue_; }

  /// Where /debug/offcpu is served.
  static constexpr char kOffCpuPath[] = "/debug/offcpu";

 private:
  /// The kernel must pass sched_switch's prev_state; kmon_cpu_flush is run, not attached.
  absl::Status BeforeLoad(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override;
  /// Also starts the off-CPU stack thread and registers /debug/offcpu.
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override;
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  void AddOwnEventsLost(std::map<std::string, uint64_t>* lost) const override;
  void DropStale(const std::vector<CpuCounters>& counters, const std::vector<CpuHistogram>& hists);
  /// Runs kmon_cpu_flush on every CPU: each CPU's cache of counts, and running
  /// threads' time so far, into the maps. False when it could not be run (warned
  /// once); the cache is then switched off (cpu_config.cache).
  bool FlushOnCpuTime();
  /// /debug/offcpu's switch (on_demand): capture on for a window, with a new stack
  /// generation, and off after.
  absl::Status SetCapture(bool on);
  /// Writes cpu_config from the config in force and the window state (config_mu_ held).
  absl::Status WriteCpuConfig();

  cpu_bpf* skel_ = nullptr;
  std::unique_ptr<CpuDataSource> source_;
  // Kept after Stop() (until a new start): its handler answers 503, EventsLost()
  // still reads it.
  std::unique_ptr<OffCpuService> offcpu_;
  std::atomic<bool> flush_warned_{false};
  bpf_link* held_link_ = nullptr;  // the kmon_cpu_held iterator
  // What cpu_config holds: the config in force, and whether a window is open.
  std::mutex config_mu_;
  uint64_t offcpu_min_ns_ = 0;
  OffCpuStacks stacks_ = OffCpuStacks::kOnDemand;
  bool window_open_ = false;
  uint32_t gen_ = 0;
  bool cache_ = false;  // counts go through cpu_cache: the flush runs on every CPU
  std::atomic<bool> waits_from_kernel_{false};
  std::atomic<bool> clock_from_run_queue_{false};
  // One flush at a time: on the calling CPU it runs with interrupts on, and another
  // scrape's flush arriving there by IPI would count that thread's slice twice.
  std::mutex flush_mu_;
};

}  // namespace kmon
