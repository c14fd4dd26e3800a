// The cpu collector against the running kernel: workloads in cgroups of their own
// sleep, spin and contend for one CPU in known amounts, and kmon must measure those
// amounts; a function of known name blocks, and the off-CPU stacks must name it.
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include "collectors/cpu.h"
#include "collectors/kernel_features.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

// Blocks in nanosleep from a frame the kernel's user-stack walk is sure to see: the
// syscall instruction is in this function, so the user IP at the switch is in it.
// (Through glibc's nanosleep the IP would be in libc, which Debian builds without
// frame pointers, and the frame-pointer walk from there would skip this function.)
// Frame pointers here let the walk go on to the callers.
extern "C" __attribute__((noinline, used
#ifndef __clang__
                          ,
                          optimize("no-omit-frame-pointer")
#endif
                              )) long
kmon_test_sleepy_function(long ns) {
  struct timespec ts = {0, ns};
  long ret;
#if defined(__x86_64__)
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(SYS_nanosleep), "D"(&ts), "S"(0L)
               : "rcx", "r11", "memory");
#elif defined(__aarch64__)
  register long x8 asm("x8") = SYS_nanosleep;
  register long x0 asm("x0") = reinterpret_cast<long>(&ts);
  register long x1 asm("x1") = 0;
  asm volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1) : "memory");
  ret = x0;
#else
#error "kmon test: no raw syscall for this architecture"
#endif
  return ret;
}

namespace kmon {
namespace {

using testing::ExporterProcess;
using testing::RunInCgroup;
using testing::SampleValue;
using testing::TestCgroup;

constexpr double kMs = 1e-3;

// Sleeps a workload takes that kmon may not see as off-CPU episodes of their length.
// On 6.18 (EEVDF with delayed dequeue) about one sleep in several hundred shows a
// sched_wakeup ~0.1 ms after its switch-out, though the thread runs again only when
// its timer fires: the episode then ends, for kmon, at that wakeup, below
// offcpu_min. Every sleep is still a voluntary switch (those counts are exact).
constexpr int kMissedSleeps = 2;

Config CpuConfigYaml(const std::string& offcpu_min, const std::string& stacks = "on_demand") {
  ConfigResult r = ParseConfig(
      "collectors:\n  cpu:\n    offcpu_min: " + offcpu_min + "\n    stacks: " + stacks + "\n",
      ProcessEnv());
  EXPECT_TRUE(r.problems.empty());
  return r.config.value_or(DefaultConfig());
}

const prometheus::ClientMetric* Find(const std::vector<prometheus::MetricFamily>& fams,
                                     const std::string& name, const std::string& container,
                                     const std::map<std::string, std::string>& more = {}) {
  for (const auto& f : fams) {
    if (f.name != name) continue;
    for (const auto& m : f.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : m.label) labels[l.name] = l.value;
      if (labels["container"] != container) continue;
      bool all = true;
      for (const auto& [k, v] : more) all &= labels[k] == v;
      if (all) return &m;
    }
  }
  return nullptr;
}

double Counter(const std::vector<prometheus::MetricFamily>& fams, const std::string& name,
               const std::string& container, const std::map<std::string, std::string>& more = {}) {
  const auto* m = Find(fams, name, container, more);
  return m ? m->counter.value : -1;
}

void SleepMs(int n, int ms) {
  for (int i = 0; i < n; ++i) {
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, nullptr);
  }
}

// Spins on CPU `cpu` until `deadline` (CLOCK_MONOTONIC ns): pure user time, no syscalls.
void SpinOn(int cpu, int64_t deadline_ns) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) _exit(2);
  for (;;) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (ts.tv_sec * 1000000000LL + ts.tv_nsec >= deadline_ns) return;
  }
}

// The kernel's own accounting of this thread (CONFIG_SCHED_INFO): time on a CPU and
// time runnable on a run queue (/proc/self/schedstat), and preemptions
// (nonvoluntary_ctxt_switches in /proc/self/status).
//
// It is exact only up to a few microseconds per preemption: after a wakeup that
// preempts, the scheduler skips its next clock update (rq_clock_skip_update() in
// wakeup_preempt()), so schedstat dates the switch-out at the wakeup, inside the
// interrupt, while kmon dates it at the switch itself, after the interrupt's exit
// work (softirqs: tens of microseconds on a busy machine). Comparisons allow for it.
struct SchedStat {
  double run_s = -1, wait_s = -1;
  long preemptions = 0;
  long voluntary = 0;  // voluntary_ctxt_switches: blocked
};

SchedStat ReadSchedStat() {
  SchedStat s;
  std::ifstream in("/proc/self/schedstat");
  unsigned long long run = 0, wait = 0;
  if (in >> run >> wait) {
    s.run_s = run / 1e9;
    s.wait_s = wait / 1e9;
  }
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
      s.preemptions = std::stol(line.substr(27));
    if (line.rfind("voluntary_ctxt_switches:", 0) == 0) s.voluntary = std::stol(line.substr(24));
  }
  return s;
}

// Runs `body` in `cg` and returns what the kernel accounted to the child during it.
// Only the body: the child's waits before it first leaves a CPU inside `cg` (after
// fork, on the pipe RunInCgroup starts it with) belong, for kmon, to the cgroup it
// blocked in, the parent's; and the child runs without a break from its wakeup to
// the body's first read here, so the body's delta is exactly what kmon books to `cg`.
SchedStat RunAndMeasure(const TestCgroup& cg, const std::function<void()>& body) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  int rc = RunInCgroup(cg, [&] {
    const SchedStat start = ReadSchedStat();
    body();
    SchedStat s = ReadSchedStat();
    s.run_s -= start.run_s;
    s.wait_s -= start.wait_s;
    s.preemptions -= start.preemptions;
    s.voluntary -= start.voluntary;
    if (write(fds[1], &s, sizeof s) != sizeof s) _exit(4);
  });
  close(fds[1]);
  SchedStat s;
  if (read(fds[0], &s, sizeof s) != sizeof s || rc != 0) s = {};
  close(fds[0]);
  return s;
}

int64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// The highest CPU this process may run on.
int LastCpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  int last = 0;
  for (int i = 0; i < CPU_SETSIZE; ++i) {
    if (CPU_ISSET(i, &set)) last = i;
  }
  return last;
}

// The run time of another process so far, from its /proc/PID/schedstat.
double RunSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/schedstat");
  unsigned long long run = 0;
  return in >> run ? run / 1e9 : -1;
}

// A child reaped however the test ends (killed if it outlives the wait).
struct ChildGuard {
  pid_t pid;
  ~ChildGuard() {
    if (pid > 0) testing::WaitChild(pid, 5000);
  }
  int Wait() {
    const int rc = testing::WaitChild(pid);
    pid = -1;
    return rc;
  }
};

class CpuRootTest : public testing::CollectorRootTest {
 protected:
  CollectorDeps Deps() {
    return {workloads_.get(), watched_.get(),
            [this](const std::string& path, HttpHandler h) { handlers_[path] = std::move(h); }};
  }

  HttpResponse Get(const std::map<std::string, std::string>& query) {
    HttpRequest req;
    req.method = "GET";
    req.path = CpuCollector::kOffCpuPath;
    req.query = query;
    auto it = handlers_.find(CpuCollector::kOffCpuPath);
    if (it == handlers_.end()) {
      ADD_FAILURE() << "no handler for /debug/offcpu";
      return {};
    }
    return it->second(req);
  }

  std::map<std::string, HttpHandler> handlers_;
};

// Twenty 10 ms sleeps in a cgroup of their own: sleep episodes of their length,
// prompt wakeups, nothing lost.
void ExpectTwentySleepsCounted(CpuCollector& c) {
  TestCgroup cg;
  constexpr int kSleeps = 20;
  ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(kSleeps, 10); }), 0);

  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  const auto* sleep =
      Find(fams, "kmon_cpu_offcpu_duration_seconds", cg.name(), {{"state", "sleep"}});
  ASSERT_NE(sleep, nullptr);
  const auto& h = sleep->histogram;
  EXPECT_GE(h.sample_count, static_cast<uint64_t>(kSleeps - kMissedSleeps));
  EXPECT_LE(h.sample_count, static_cast<uint64_t>(kSleeps + 2));
  EXPECT_NEAR(h.sample_sum, kSleeps * 10 * kMs, kSleeps * 10 * kMs * 0.10);
  // Each 10 ms sleep lands in le=0.016384 (2^14 us), none below 8.192 ms.
  ASSERT_EQ(h.bucket.size(), static_cast<size_t>(KMON_CPU_HIST_SLOTS));
  EXPECT_DOUBLE_EQ(h.bucket[14].upper_bound, 0.016384);
  EXPECT_EQ(h.bucket[13].cumulative_count, 0u);
  EXPECT_GE(h.bucket[14].cumulative_count, static_cast<uint64_t>(kSleeps - kMissedSleeps));
  EXPECT_EQ(Find(fams, "kmon_cpu_offcpu_duration_seconds", cg.name(), {{"state", "io"}}), nullptr);
  // Sleeping is not running: little CPU, and the wakeups were served promptly.
  EXPECT_LT(Counter(fams, "kmon_cpu_oncpu_seconds_total", cg.name()), 0.05);
  const auto* runq = Find(fams, "kmon_cpu_runqueue_latency_seconds", cg.name());
  ASSERT_NE(runq, nullptr);
  EXPECT_GE(runq->histogram.sample_count, static_cast<uint64_t>(kSleeps - kMissedSleeps));
  EXPECT_LT(runq->histogram.sample_sum, 0.05);
  const auto lost = c.EventsLost();
  EXPECT_EQ(lost.at("map_full"), 0u);
  EXPECT_EQ(lost.at("offcpu_store_full"), 0u);
  EXPECT_EQ(lost.count("stack_collision"), 1u);  // its own reason, apart from map_full
  EXPECT_EQ(lost.at("map_read_error"), 0u);
}

TEST_F(CpuRootTest, SleepsAreOffCpuSleepEpisodesOfTheirLength) {
  CpuCollector c(Deps());
  absl::Status st = c.Start(CpuConfigYaml("1ms"));
  ASSERT_TRUE(st.ok()) << st;
  // This kernel keeps its own account of run-queue waits: no sched_wakeup hook.
  EXPECT_TRUE(c.waits_from_kernel());
  EXPECT_TRUE(c.clock_from_run_queue());
  EXPECT_EQ(c.Detail(), "run-queue waits: the kernel's sched_info (no sched_wakeup hook)");
  ExpectTwentySleepsCounted(c);
}

// The running kernel's BTF with every member called `member` renamed (BTF keeps one
// copy of each name): a kernel without that member, so the collector must choose
// what it does without it. The programs still load against the real kernel.
class RenamedMemberFeatures : public RunningKernelFeatures {
 public:
  explicit RenamedMemberFeatures(const std::string& member) {
    btf* real = btf__load_vmlinux_btf();
    if (real == nullptr) return;
    uint32_t size = 0;
    const auto* raw = static_cast<const char*>(btf__raw_data(real, &size));
    std::string copy(raw, size);
    btf__free(real);
    const std::string name = std::string(1, '\0') + member + std::string(1, '\0');
    const size_t at = copy.find(name);
    if (at == std::string::npos) return;
    copy[at + 1] = static_cast<char>(std::toupper(copy[at + 1]));
    btf_ = btf__new(copy.data(), static_cast<uint32_t>(copy.size()));
  }
  ~RenamedMemberFeatures() override { btf__free(btf_); }
  absl::StatusOr<const btf*> VmlinuxBtf() override {
    if (btf_ == nullptr) return absl::InternalError("no patched BTF");
    return btf_;
  }
  void Release() override {}

 private:
  btf* btf_ = nullptr;
};

// Without sched_info's last_queued (CONFIG_SCHED_INFO off) waits come from hooking
// sched_wakeup, and the run queue's clock still dates everything. Without rq.clock
// every timestamp comes from bpf_ktime_get_ns(), and with no clock to read
// sched_info against, waits come from the wakeup hook too. The same sleeps are
// counted the same either way.
TEST_F(CpuRootTest, WithoutTheKernelsAccountOrTheRunQueuesClockTheSameSleepsCount) {
  const std::pair<const char*, bool> cases[] = {{"last_queued", true}, {"clock", false}};
  for (const auto& [member, rq_clock] : cases) {
    SCOPED_TRACE(member);
    RenamedMemberFeatures features(member);
    CollectorDeps deps = Deps();
    deps.features = &features;
    CpuCollector c(deps);
    absl::Status st = c.Start(CpuConfigYaml("1ms"));
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_FALSE(c.waits_from_kernel());
    EXPECT_EQ(c.clock_from_run_queue(), rq_clock);
    EXPECT_EQ(c.Detail(), "run-queue waits: tp_btf/sched_wakeup");
    ExpectTwentySleepsCounted(c);
  }
}

TEST_F(CpuRootTest, EverySleepIsAVoluntaryContextSwitch) {
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms")).ok());
  TestCgroup cg;
  constexpr int kSleeps = 50;
  const SchedStat truth = RunAndMeasure(cg, [] { SleepMs(kSleeps, 2); });
  ASSERT_GE(truth.run_s, 0);
  ASSERT_GE(truth.voluntary, kSleeps);  // the kernel's own count of the sleeper's blocking
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  const double voluntary =
      Counter(fams, "kmon_cpu_context_switches_total", cg.name(), {{"kind", "voluntary"}});
  EXPECT_GE(voluntary, kSleeps);
  EXPECT_GE(voluntary, truth.voluntary);
  // Beyond the body kmon also sees the child's last moments (the pipe, its exit).
  EXPECT_LE(voluntary, truth.voluntary + 10);
  // A sleeper that runs microseconds at a time is seldom preempted: kmon counts what
  // the kernel counted in the body, plus at most a few around it.
  const double involuntary =
      Counter(fams, "kmon_cpu_context_switches_total", cg.name(), {{"kind", "involuntary"}});
  EXPECT_GE(involuntary, truth.preemptions);
  EXPECT_LE(involuntary, truth.preemptions + 5);
  EXPECT_LT(involuntary, kSleeps);
}

// The per-CPU write-back cache, on (the flush runs) and off (as after a flush that
// could not run): the voluntary switches of a sleeper are the kernel's count either
// way, and what a way held when the cache went off still reaches the map.
TEST_F(CpuRootTest, SwitchesAreCountedWithTheCacheOnAndOff) {
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms")).ok());
  std::optional<cpu_config> cfg = testing::ReadControl<cpu_config>(c.BpfObject(), "cpu_config");
  ASSERT_TRUE(cfg.has_value());
  EXPECT_EQ(cfg->cache, 1u) << "the flush runs here, so the cache is on";
  constexpr int kSleeps = 30;
  auto voluntary = [&](const TestCgroup& cg) {
    std::vector<prometheus::MetricFamily> fams;
    c.Collect(&fams);
    return Counter(fams, "kmon_cpu_context_switches_total", cg.name(), {{"kind", "voluntary"}});
  };
  TestCgroup on, off;
  const SchedStat truth_on = RunAndMeasure(on, [] { SleepMs(kSleeps, 1); });
  ASSERT_GE(truth_on.voluntary, kSleeps);
  const double on_count = voluntary(on);
  EXPECT_GE(on_count, truth_on.voluntary);
  EXPECT_LE(on_count, truth_on.voluntary + 10);

  cfg->cache = 0;
  ASSERT_TRUE(testing::WriteControl(c.BpfObject(), "cpu_config", *cfg));
  const SchedStat truth_off = RunAndMeasure(off, [] { SleepMs(kSleeps, 1); });
  ASSERT_GE(truth_off.voluntary, kSleeps);
  const double off_count = voluntary(off);
  EXPECT_GE(off_count, truth_off.voluntary);
  EXPECT_LE(off_count, truth_off.voluntary + 10);
  EXPECT_EQ(voluntary(on), on_count);
}

// A thread that never leaves its CPU is counted as it runs: scraped mid-run, its
// on-CPU time is what it has run so far (the kernel's schedstat), not zero until it
// switches out.
TEST_F(CpuRootTest, ASpinnerIsCountedWhileItRuns) {
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms")).ok());
  TestCgroup cg;
  const int cpu = LastCpu();
  const int64_t deadline = MonotonicNs() + 3'000'000'000LL;
  // Real-time, so that on a busy machine it still has its CPU to itself for long
  // stretches (ordinary tasks there get the fair server's 5%): a spinner preempted
  // every few ms would be counted right even without the flush. (Where real-time
  // is not allowed, e.g. RT group scheduling without a budget, it spins as it is.)
  ChildGuard child{testing::SpawnInCgroup(cg, [&] {
    struct sched_param rt = {};
    rt.sched_priority = 1;
    sched_setscheduler(0, SCHED_FIFO, &rt);
    SpinOn(cpu, deadline);
  })};
  ASSERT_GT(child.pid, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));

  // The flush happens somewhere inside Collect, which a loaded machine can make
  // last a while: the truth is read on both sides of it.
  std::vector<prometheus::MetricFamily> fams;
  const double truth0 = RunSeconds(child.pid);
  c.Collect(&fams);
  const double truth1 = RunSeconds(child.pid);
  const double kmon1 = Counter(fams, "kmon_cpu_oncpu_seconds_total", cg.name());
  ASSERT_GE(truth0, 0.3) << "the spinner hardly ran: the machine is too busy";
  EXPECT_GE(kmon1, 0.75 * truth0);
  EXPECT_LE(kmon1, 1.25 * truth1);
  const double preempted =
      Counter(fams, "kmon_cpu_context_switches_total", cg.name(), {{"kind", "involuntary"}});
  RecordProperty("preemptions_mid_run", std::to_string(preempted));

  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  fams.clear();
  const double truth_before2 = RunSeconds(child.pid);
  c.Collect(&fams);
  const double truth2 = RunSeconds(child.pid);
  const double kmon2 = Counter(fams, "kmon_cpu_oncpu_seconds_total", cg.name());
  ASSERT_GE(truth2, 0);  // still running: nothing was added at a switch-out of its exit
  // What it ran between the two flushes, bracketed by the reads around them.
  EXPECT_GE(kmon2 - kmon1, 0.75 * (truth_before2 - truth1) - 0.01);
  EXPECT_LE(kmon2 - kmon1, 1.25 * (truth2 - truth0) + 0.01);
  EXPECT_GE(kmon2, kmon1);

  EXPECT_EQ(child.Wait(), 0);
  fams.clear();
  c.Collect(&fams);
  const double kmon3 = Counter(fams, "kmon_cpu_oncpu_seconds_total", cg.name());
  EXPECT_GE(kmon3, kmon2);  // monotonic: the switch-out added only the rest of the slice
  EXPECT_LE(kmon3, kmon2 + 1.0);
}

// Two processes spin on one CPU for 2 s: each runs about half the time and waits on
// the run queue the other half. The kernel's schedstat of each is the exact truth
// (the CPU may also run other work on a shared machine); kmon must agree with it.
TEST_F(CpuRootTest, TwoSpinnersOnOneCpuEachWaitHalfTheTime) {
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms")).ok());
  TestCgroup a, b, alone;
  const int cpu = LastCpu();
  const int64_t deadline = MonotonicNs() + 2'000'000'000LL;
  SchedStat truth_a, truth_b;
  std::thread ta([&] { truth_a = RunAndMeasure(a, [&] { SpinOn(cpu, deadline); }); });
  std::thread tb([&] { truth_b = RunAndMeasure(b, [&] { SpinOn(cpu, deadline); }); });
  ta.join();
  tb.join();
  ASSERT_GE(truth_a.run_s, 0);
  ASSERT_GE(truth_b.run_s, 0);
  const int64_t alone_deadline = MonotonicNs() + 1'000'000'000LL;
  const SchedStat truth_alone = RunAndMeasure(alone, [&] { SpinOn(cpu, alone_deadline); });
  ASSERT_GE(truth_alone.run_s, 0);

  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  // Tolerance: 10 ms for the child's exit and its moments in the cgroup before the
  // body, 50 us per preemption for schedstat's skew (see SchedStat), and 10% of the
  // time for interrupts: kmon counts the time an interrupt takes to the thread it
  // interrupted (it dates switches by the clock), schedstat leaves it out (IRQ time
  // accounting); with another process doing I/O on the same CPU that was 7%.
  auto near = [](const SchedStat& t) {
    return 0.01 + 50e-6 * t.preemptions + 0.10 * std::max(t.run_s, t.wait_s);
  };
  // Whether the two had the CPU to themselves (other work on a shared machine takes
  // its share too): then each ran and waited about half of the two seconds.
  const bool cpu_was_theirs = truth_a.run_s + truth_b.run_s >= 1.8;
  for (auto [cg, truth] : {std::pair{&a, truth_a}, std::pair{&b, truth_b}}) {
    SCOPED_TRACE(cg->name());
    const auto* runq = Find(fams, "kmon_cpu_runqueue_latency_seconds", cg->name());
    ASSERT_NE(runq, nullptr);
    const double oncpu = Counter(fams, "kmon_cpu_oncpu_seconds_total", cg->name());
    EXPECT_NEAR(runq->histogram.sample_sum, truth.wait_s, near(truth));
    EXPECT_NEAR(oncpu, truth.run_s, near(truth));
    EXPECT_GE(runq->histogram.sample_sum, 0.6);
    if (cpu_was_theirs) {
      EXPECT_GE(oncpu, 0.6);
      EXPECT_LE(oncpu, 1.4);
    }
    // Taking turns on one CPU is preemption: involuntary switches, one per preemption
    // (kmon also sees those of the child's exit, outside the measured body). With
    // slices of a few ms, two seconds of taking turns are hundreds; 50 is a floor no
    // scheduler setting gets under.
    const double involuntary =
        Counter(fams, "kmon_cpu_context_switches_total", cg->name(), {{"kind", "involuntary"}});
    EXPECT_GE(involuntary, 50);
    EXPECT_GE(involuntary, truth.preemptions);
    EXPECT_LE(involuntary, truth.preemptions * 1.1 + 10);
    // They never block: hardly a voluntary switch (the pipe and exit around the body).
    EXPECT_LE(Counter(fams, "kmon_cpu_context_switches_total", cg->name(), {{"kind", "voluntary"}}),
              truth.voluntary + 10);
  }
  SCOPED_TRACE("alone");
  const auto* runq = Find(fams, "kmon_cpu_runqueue_latency_seconds", alone.name());
  const double alone_wait = runq != nullptr ? runq->histogram.sample_sum : 0;
  EXPECT_NEAR(alone_wait, truth_alone.wait_s, near(truth_alone));
  EXPECT_NEAR(Counter(fams, "kmon_cpu_oncpu_seconds_total", alone.name()), truth_alone.run_s,
              near(truth_alone));
  // Alone it hardly waits: when nothing else claimed the CPU meanwhile, under 50 ms.
  if (truth_alone.wait_s < 0.04) {
    EXPECT_LT(alone_wait, 0.05);
  }
}

// The first line of folded text naming `fn`, or "".
std::string LineWith(const std::string& folded, const std::string& fn) {
  std::istringstream in(folded);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(";" + fn + ";") != std::string::npos) return line;
  }
  return "";
}

std::vector<std::string> Frames(const std::string& line) {
  std::vector<std::string> frames;
  std::string stack = line.substr(0, line.rfind(' '));
  std::istringstream in(stack);
  std::string f;
  while (std::getline(in, f, ';')) frames.push_back(f);
  return frames;
}

std::string RunShell(const std::string& cmd, int* rc) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  return out;
}

// Entries of the map `name` that the program `prog_id` uses.
int64_t MapEntries(uint32_t prog_id, const std::string& name) {
  const int prog = bpf_prog_get_fd_by_id(prog_id);
  if (prog < 0) return -1;
  uint32_t map_ids[64];
  bpf_prog_info pinfo{};
  pinfo.nr_map_ids = 64;
  pinfo.map_ids = reinterpret_cast<uint64_t>(map_ids);
  uint32_t plen = sizeof pinfo;
  const int rc = bpf_obj_get_info_by_fd(prog, &pinfo, &plen);
  close(prog);
  if (rc != 0) return -1;
  for (uint32_t i = 0; i < std::min<uint32_t>(pinfo.nr_map_ids, 64); ++i) {
    const int fd = bpf_map_get_fd_by_id(map_ids[i]);
    if (fd < 0) continue;
    bpf_map_info info{};
    uint32_t len = sizeof info;
    int64_t n = -1;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && name == info.name) {
      std::vector<char> key(info.key_size), next(info.key_size);
      n = 0;
      for (void* k = nullptr; bpf_map_get_next_key(fd, k, next.data()) == 0; k = key.data()) {
        key.swap(next);
        ++n;
      }
    }
    close(fd);
    if (n >= 0) return n;
  }
  return -1;
}

// 60 sleeps of 25 ms in kmon_test_sleepy_function, in a process named kmon-sleeper.
constexpr int kSleeps = 60;
constexpr long kSleepNs = 25'000'000;
void SleepyWorkload() {
  prctl(PR_SET_NAME, "kmon-sleeper");
  for (int i = 0; i < kSleeps; ++i) kmon_test_sleepy_function(kSleepNs);
}

// With `stacks: on_demand` (the default) nothing is captured until a request asks;
// the request profiles the next `seconds` and its answer holds exactly the sleeps
// taken in them, by the workload and the process's name, with the frames that
// blocked; after it the maps are empty again.
TEST_F(CpuRootTest, OffCpuStacksNameTheFunctionThatBlocked) {
  const uint32_t before = testing::MaxBpfProgramId();
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms")).ok());
  const auto progs = testing::BpfProgramIds("kmon_cpu_switch", before);
  ASSERT_FALSE(progs.empty());
  const uint32_t prog = progs.front();
  TestCgroup cg;
  // No request outstanding: the sleeps take no stacks.
  ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(20, 2); }), 0);
  EXPECT_EQ(MapEntries(prog, "stacks"), 0);
  EXPECT_EQ(MapEntries(prog, "offcpu_stacks"), 0);

  // The window (5 s) opens when the handler runs; the workload starts 0.5 s later
  // and takes 1.5 s, well inside it.
  HttpResponse folded;
  std::thread request([&] {
    folded = Get({{"format", "folded"}, {"container", cg.name()}, {"seconds", "5"}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(Get({{"format", "svg"}}).status, 429);  // one window at a time
  ASSERT_EQ(RunInCgroup(cg, SleepyWorkload), 0);
  request.join();
  ASSERT_EQ(folded.status, 200) << folded.body;
  EXPECT_EQ(folded.headers["X-Kmon-Window-Seconds"], "5");
  EXPECT_EQ(MapEntries(prog, "stacks"), 0);  // emptied after the window
  EXPECT_EQ(MapEntries(prog, "offcpu_stacks"), 0);
  ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(20, 2); }), 0);
  EXPECT_EQ(MapEntries(prog, "stacks"), 0);  // and they stay so
  EXPECT_EQ(MapEntries(prog, "offcpu_stacks"), 0);

  const std::string line = LineWith(folded.body, "kmon_test_sleepy_function");
  ASSERT_NE(line, "") << folded.body;
  std::vector<std::string> frames = Frames(line);
  ASSERT_GE(frames.size(), 2u);
  EXPECT_EQ(frames[0], cg.name());       // the workload is the root frame
  EXPECT_EQ(frames[1], "kmon-sleeper");  // then the process
  size_t fn = 0;
  while (fn < frames.size() && frames[fn] != "kmon_test_sleepy_function") ++fn;
  bool kernel_below = false;
  for (size_t i = fn + 1; i < frames.size(); ++i) {
    kernel_below |=
        frames[i] == "hrtimer_nanosleep" || frames[i] == "do_nanosleep" || frames[i] == "schedule";
  }
  EXPECT_TRUE(kernel_below) << line;
  EXPECT_EQ(frames.back(), "__schedule") << line;  // tracing frames cut off above it
  // Every sleep is in the window, each at least its 25 ms and at most a few ms
  // more on a loaded machine; kMissedSleeps may end early at a spurious wakeup.
  const double ns = std::stod(line.substr(line.rfind(' ') + 1));
  EXPECT_GE(ns, (kSleeps - kMissedSleeps) * kSleepNs) << line;
  EXPECT_LE(ns, kSleeps * kSleepNs * 1.2) << line;
  // Nothing else of this cgroup is in the output, the filter holds.
  std::istringstream lines(folded.body);
  std::string l;
  while (std::getline(lines, l)) EXPECT_EQ(l.rfind(cg.name() + ";", 0), 0u) << l;
}

// With `stacks: always` a request looks back, in every format.
TEST_F(CpuRootTest, AlwaysLooksBackInEveryFormat) {
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms", "always")).ok());
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, SleepyWorkload), 0);
  HttpResponse windowed = Get({{"format", "folded"}, {"container", cg.name()}, {"seconds", "60"}});
  ASSERT_EQ(windowed.status, 200);
  const std::string line = LineWith(windowed.body, "kmon_test_sleepy_function");
  ASSERT_NE(line, "") << windowed.body;
  const double ns = std::stod(line.substr(line.rfind(' ') + 1));
  EXPECT_GE(ns, (kSleeps - kMissedSleeps) * kSleepNs) << line;
  EXPECT_LE(ns, kSleeps * kSleepNs * 1.2) << line;

  HttpResponse svg = Get({{"format", "svg"}, {"container", cg.name()}});
  ASSERT_EQ(svg.status, 200);
  EXPECT_EQ(svg.content_type, "image/svg+xml");
  EXPECT_NE(svg.body.find("data-n=\"kmon_test_sleepy_function\""), std::string::npos);

  HttpResponse pprof = Get({{"format", "pprof"}, {"container", cg.name()}});
  ASSERT_EQ(pprof.status, 200);
  ASSERT_GE(pprof.body.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(pprof.body[0]), 0x1f);  // gzip
  EXPECT_EQ(static_cast<unsigned char>(pprof.body[1]), 0x8b);
  const TempFile pb(pprof.body);
  int rc = -1;
  const std::string decoded = RunShell(
      "gzip -dc " + pb.path() + " | protoc --decode perftools.profiles.Profile -I " +
          KMON_SOURCE_DIR + " " + KMON_SOURCE_DIR + "/collectors/offcpu/profile.proto 2>&1",
      &rc);
  EXPECT_EQ(rc, 0) << decoded;
  EXPECT_NE(decoded.find("string_table: \"kmon_test_sleepy_function\""), std::string::npos)
      << decoded.substr(0, 2000);
  EXPECT_NE(decoded.find("string_table: \"" + cg.name() + "\""), std::string::npos);
}

TEST_F(CpuRootTest, OffcpuMinAndStacksChangeInPlace) {
  CpuCollector c(Deps());
  const uint32_t before = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(CpuConfigYaml("50ms", "off")).ok());
  const auto ids = testing::BpfProgramIds("kmon_cpu_switch", before);
  ASSERT_EQ(ids.size(), 1u);
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(10, 10); }), 0);
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  // 10 ms sleeps are below offcpu_min: not episodes; they still switch.
  EXPECT_EQ(Find(fams, "kmon_cpu_offcpu_duration_seconds", cg.name(), {{"state", "sleep"}}),
            nullptr);
  EXPECT_GE(Counter(fams, "kmon_cpu_context_switches_total", cg.name(), {{"kind", "voluntary"}}),
            10);
  const HttpResponse off = Get({{"format", "folded"}});
  EXPECT_EQ(off.status, 503);  // stacks off
  EXPECT_NE(off.body.find("collectors.cpu.stacks: off"), std::string::npos) << off.body;

  ASSERT_TRUE(c.Reconfigure(CpuConfigYaml("1ms", "always")).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(10, 10); }), 0);
  fams.clear();
  c.Collect(&fams);
  const auto* sleep =
      Find(fams, "kmon_cpu_offcpu_duration_seconds", cg.name(), {{"state", "sleep"}});
  ASSERT_NE(sleep, nullptr);
  EXPECT_GE(sleep->histogram.sample_count, static_cast<uint64_t>(10 - kMissedSleeps));
  EXPECT_LE(sleep->histogram.sample_count, 12u);
  HttpResponse folded = Get({{"format", "folded"}, {"container", cg.name()}});
  EXPECT_EQ(folded.status, 200);
  EXPECT_NE(folded.body.find(cg.name() + ";"), std::string::npos) << folded.body;
  EXPECT_EQ(testing::BpfProgramIds("kmon_cpu_switch", before), ids);

  c.Stop();
  EXPECT_EQ(Get({{"format", "folded"}}).status, 503);  // the server keeps the handler
}

TEST_F(CpuRootTest, BadRequestsAreRejected) {
  CpuCollector c(Deps());
  ASSERT_TRUE(c.Start(CpuConfigYaml("1ms")).ok());
  EXPECT_EQ(Get({{"format", "json"}}).status, 400);
  EXPECT_EQ(Get({{"seconds", "-3"}}).status, 400);
  const HttpResponse off_grid = Get({{"seconds", "7"}});
  EXPECT_EQ(off_grid.status, 400);
  EXPECT_EQ(off_grid.body, "seconds: want a multiple of 5 from 5 to 600, got \"7\"\n");
  EXPECT_EQ(Get({{"color", "red"}}).status, 400);
  HttpRequest post;
  post.method = "POST";
  EXPECT_EQ(handlers_[CpuCollector::kOffCpuPath](post).status, 405);
}

// /debug/offcpu is served on the HTTP server's threads while scrapes and reloads go
// on: every answer is whole, and rendering holds up neither.
TEST_F(CpuRootTest, QueriesRunAlongsideScrapesAndReloads) {
  CpuCollector c(Deps());
  const Config config = CpuConfigYaml("1ms", "always");
  ASSERT_TRUE(c.Start(config).ok());
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(20, 5); }), 0);
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0}, failed{0}, scrapes{0}, reloads{0};
  std::vector<std::thread> threads;
  for (const char* format : {"svg", "pprof", "folded"}) {
    threads.emplace_back([&, format] {
      while (!stop) {
        const HttpResponse r = Get({{"format", format}});
        (r.status == 200 && !r.body.empty() ? answered : failed)++;
      }
    });
  }
  threads.emplace_back([&] {
    while (!stop) {
      std::vector<prometheus::MetricFamily> fams;
      c.Collect(&fams);
      if (fams.size() == 4) ++scrapes;
    }
  });
  threads.emplace_back([&] {
    while (!stop) {
      if (c.Reconfigure(config).ok()) ++reloads;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_GE(answered.load(), 3);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GE(scrapes.load(), 3);
  EXPECT_GE(reloads.load(), 3);
}

// --- the real exporter process ---

TEST(CpuExporterRootTest, ServesMetricsAndFlameGraphs) {
  KMON_REQUIRE_ROOT();
  // The defaults: stacks on_demand.
  const TempFile cfg("interval: 1s\ncollectors:\n  cpu:\n    offcpu_min: 1ms\n");
  std::vector<std::string> args{"--config.file=" + cfg.path()};
  for (const char* other :
       {"tcp", "topology", "drops", "blockio", "syscalls", "dns", "pagecache"}) {
    args.push_back(std::string("--no-collector.") + other);
  }
  ExporterProcess exporter(args);
  ASSERT_TRUE(exporter.WaitReady());
  TestCgroup cg;
  // The exporter watches a new cgroup from its next rescan (every interval): until it
  // does, what runs there is not counted. Wait for that with short warm-ups.
  auto sample = [&](const std::string& text, const std::string& name,
                    std::map<std::string, std::string> labels) {
    labels["container"] = cg.name();
    return SampleValue(text, name, labels);
  };
  std::string text;
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(RunInCgroup(cg, [] { SleepMs(1, 2); }), 0);
    text = exporter.Scrape();
    if (sample(text, "kmon_cpu_context_switches_total", {{"kind", "voluntary"}})) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double voluntary0 =
      sample(text, "kmon_cpu_context_switches_total", {{"kind", "voluntary"}}).value_or(-1);
  ASSERT_GE(voluntary0, 0) << "the exporter never counted the test's cgroup";
  const double episodes0 =
      sample(text, "kmon_cpu_offcpu_duration_seconds_count", {{"state", "sleep"}}).value_or(0);

  // A 5 s profile over HTTP, the workload inside it; a second request meanwhile is
  // refused with 429.
  testing::HttpResult folded;
  auto start_profile = [&] {
    return std::thread([&] {
      folded = testing::HttpGet(exporter.Url("/debug/offcpu?seconds=5&container=" + cg.name()));
    });
  };
  std::thread request = start_profile();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(testing::HttpGet(exporter.Url("/debug/offcpu?format=svg")).status, 429);
  ASSERT_EQ(RunInCgroup(cg, SleepyWorkload), 0);
  text = exporter.Scrape();
  EXPECT_GE(sample(text, "kmon_cpu_context_switches_total", {{"kind", "voluntary"}}).value_or(0) -
                voluntary0,
            60);
  EXPECT_GE(
      sample(text, "kmon_cpu_offcpu_duration_seconds_count", {{"state", "sleep"}}).value_or(0) -
          episodes0,
      60 - kMissedSleeps);
  EXPECT_EQ(SampleValue(text, "kmon_collector_up", {{"collector", "cpu"}}), 1);

  request.join();
  EXPECT_EQ(folded.status, 200);
  // kmon runs without CAP_SYS_ADMIN here (map_files unreadable): the function is
  // named all the same.
  std::string line = LineWith(folded.body, "kmon_test_sleepy_function");
  if (line.empty() && folded.body.find("[stack lost]") != std::string::npos) {
    // The sleeper's user stack met a bucket of the stack map that another stack of
    // the window held (about 1 in 8192 per stack held, all of the window's sleeps
    // alike): the product says so ([stack lost], counted as lost). Once more.
    request = start_profile();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ASSERT_EQ(RunInCgroup(cg, SleepyWorkload), 0);
    request.join();
    EXPECT_EQ(folded.status, 200);
    line = LineWith(folded.body, "kmon_test_sleepy_function");
  }
  EXPECT_NE(line, "") << folded.body;
  EXPECT_EQ(line.rfind(cg.name() + ";kmon-sleeper;", 0), 0u) << line;
  EXPECT_EQ(testing::HttpGet(exporter.Url("/debug/offcpu?seconds=7")).status, 400);
  EXPECT_EQ(testing::HttpGet(exporter.Url("/debug/offcpu?format=gif")).status, 400);
  EXPECT_EQ(exporter.Terminate(), 0);
}

}  // namespace
}  // namespace kmon
