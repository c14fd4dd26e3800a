// Pure parts of the cpu collector: the histogram's bucket arithmetic (the very inline
// function the BPF program runs, from bpf/cpu.h), the kernel-version check on
// sched_switch's BTF, and the four families built from fixed kernel data (golden
// text, checked by promtool).
// KMON_UPDATE_GOLDEN=1 rewrites tests/golden/cpu_metrics.prom (review the diff).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>
#include <gtest/gtest.h>

#include "bpf/cpu.h"
#include "collectors/cpu.h"
#include "exporter/config.h"
#include "exporter/exposition.h"
#include "collectors/workload_labeler.h"
#include "provider/workload.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

// collectors.cpu.stacks: on_demand (the default), always or off; the boolean it was
// is refused with what each value became.
TEST(CpuConfigTest, StacksIsOnDemandAlwaysOrOff) {
  EXPECT_EQ(DefaultConfig().collectors.Get<CpuConfig>().stacks, OffCpuStacks::kOnDemand);
  for (auto [text, want] : {std::pair{"on_demand", OffCpuStacks::kOnDemand},
                            std::pair{"always", OffCpuStacks::kAlways},
                            std::pair{"off", OffCpuStacks::kOff}}) {
    ConfigResult r =
        ParseConfig(absl::StrCat("collectors:\n  cpu:\n    stacks: ", text, "\n"), ProcessEnv());
    ASSERT_TRUE(r.problems.empty()) << text;
    EXPECT_EQ(r.config->collectors.Get<CpuConfig>().stacks, want) << text;
  }
  for (const char* bad : {"true", "false", "\"on_demand \"", "yes", "1"}) {
    ConfigResult r =
        ParseConfig(absl::StrCat("collectors:\n  cpu:\n    stacks: ", bad, "\n"), ProcessEnv());
    ASSERT_EQ(r.problems.size(), 1u) << bad;
    EXPECT_EQ(r.problems[0].key, "collectors.cpu.stacks");
    EXPECT_EQ(r.problems[0].line, 3);
    EXPECT_NE(r.problems[0].message.find("must be one of on_demand, always, off"),
              std::string::npos)
        << r.problems[0].message;
  }
  ConfigResult old = ParseConfig("collectors:\n  cpu: {stacks: true}\n", ProcessEnv());
  ASSERT_EQ(old.problems.size(), 1u);
  EXPECT_NE(old.problems[0].message.find("true was what is now always, false off"),
            std::string::npos)
      << old.problems[0].message;
}

TEST(CpuHistogramTest, BoundsArePowersOfTwoMicroseconds) {
  const auto& b = CpuHistogramBounds();
  ASSERT_EQ(b.size(), static_cast<size_t>(KMON_CPU_HIST_BOUNDS));
  EXPECT_DOUBLE_EQ(b.front(), 1e-6);
  EXPECT_DOUBLE_EQ(b[10], 1024e-6);
  EXPECT_DOUBLE_EQ(b.back(), 67108864e-6);  // 67.1 s
}

TEST(CpuHistogramTest, EveryDurationLandsInTheBucketOfItsExactValue) {
  EXPECT_EQ(kmon_cpu_hist_slot(0), 0u);
  EXPECT_EQ(kmon_cpu_hist_slot(1), 0u);
  EXPECT_EQ(kmon_cpu_hist_slot(1000), 0u);  // exactly 1 us: le=1e-06
  EXPECT_EQ(kmon_cpu_hist_slot(1001), 1u);  // just above: le=2e-06, not rounded down
  for (uint32_t i = 1; i < KMON_CPU_HIST_BOUNDS; ++i) {
    const uint64_t bound_ns = (1ULL << i) * 1000;
    EXPECT_EQ(kmon_cpu_hist_slot(bound_ns), i) << i;
    EXPECT_EQ(kmon_cpu_hist_slot(bound_ns - 1), i) << i;
    EXPECT_EQ(kmon_cpu_hist_slot(bound_ns + 1), i + 1) << i;
    // And the slot's bound is the smallest bound >= the value.
    const double v = (bound_ns + 1) / 1e9;
    const auto& b = CpuHistogramBounds();
    if (i + 1 < KMON_CPU_HIST_BOUNDS) {
      EXPECT_LE(v, b[i + 1]);
      EXPECT_GT(v, b[i]);
    }
  }
  EXPECT_EQ(kmon_cpu_hist_slot(10'050'000), 14u);  // a 10 ms sleep: le=0.016384
  EXPECT_EQ(kmon_cpu_hist_slot(68'000'000'000ULL), static_cast<uint32_t>(KMON_CPU_HIST_BOUNDS));
  EXPECT_EQ(kmon_cpu_hist_slot(~0ULL), static_cast<uint32_t>(KMON_CPU_HIST_BOUNDS));
}

// A BTF with `btf_trace_sched_switch` as a pointer to a function of `params`
// parameters (the first is the tracepoint's `void *__data`).
struct btf* FakeVmlinux(int params) {
  struct btf* b = btf__new_empty();
  const int u32 = btf__add_int(b, "unsigned int", 4, 0);
  const int proto = btf__add_func_proto(b, 0);
  for (int i = 0; i < params; ++i) btf__add_func_param(b, absl::StrCat("a", i).c_str(), u32);
  const int ptr = btf__add_ptr(b, proto);
  btf__add_typedef(b, "btf_trace_sched_switch", ptr);
  return b;
}

TEST(CpuKernelCheckTest, NeedsPrevStateInSchedSwitch) {
  struct btf* new_kernel = FakeVmlinux(5);  // 5.18+: __data, preempt, prev, next, prev_state
  EXPECT_TRUE(CheckSchedSwitchHasPrevState(new_kernel).ok());
  btf__free(new_kernel);

  struct btf* old_kernel = FakeVmlinux(4);  // before 5.18: no prev_state
  absl::Status st = CheckSchedSwitchHasPrevState(old_kernel);
  btf__free(old_kernel);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("needs Linux 5.18 or later"), std::string::npos) << st;
  EXPECT_NE(st.message().find("passes 3 arguments"), std::string::npos) << st;

  struct btf* none = btf__new_empty();
  EXPECT_EQ(CheckSchedSwitchHasPrevState(none).code(), absl::StatusCode::kFailedPrecondition);
  btf__free(none);

  // And the running kernel (6.x here) has it.
  struct btf* running = btf__load_vmlinux_btf();
  if (running != nullptr) {
    EXPECT_TRUE(CheckSchedSwitchHasPrevState(running).ok());
    btf__free(running);
  }
}

CpuHistogram Hist(uint64_t cg, uint32_t kind, std::map<uint32_t, uint64_t> slots, uint64_t sum_ns) {
  CpuHistogram h;
  h.cgroup_id = cg;
  h.kind = kind;
  for (const auto& [s, n] : slots) h.slots[s] = n;
  h.sum_ns = sum_ns;
  return h;
}

struct Fixture {
  std::vector<CpuCounters> counters{
      {100, 2'500'000'000, 40, 7},
      {200, 500'000'000, 20, 1},
      {999, 1'000'000'000, 5, 5},  // a cgroup that no longer exists: not exported
  };
  std::vector<CpuHistogram> hists{
      Hist(100, KMON_CPU_KIND_SLEEP, {{14, 20}}, 201'000'000),  // 20 sleeps of ~10 ms
      Hist(100, KMON_CPU_KIND_IO, {{10, 2}, {11, 1}}, 3'000'000),
      Hist(100, KMON_CPU_KIND_RUNQ, {{0, 30}, {3, 10}, {27, 1}}, 70'000'100'000),
      Hist(200, KMON_CPU_KIND_OTHER, {{20, 1}}, 1'000'000'000),
      Hist(999, KMON_CPU_KIND_SLEEP, {{1, 1}}, 2'000),
  };
};

TEST(CpuFamiliesTest, GoldenTextPassesPromtool) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  Fixture f;
  auto families = BuildCpuFamilies(f.counters, f.hists, &budget);
  ExpectGoldenMetrics(Serialize(families, ExpositionFormat::kText004), "cpu_metrics.prom");
}

TEST(CpuFamiliesTest, SamplesAreExact) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  Fixture f;
  auto fams = BuildCpuFamilies(f.counters, f.hists, &budget);
  ASSERT_EQ(fams.size(), 4u);
  const auto* oncpu = FindSample(fams, "kmon_cpu_oncpu_seconds_total", {{"container", "nginx.service"}});
  ASSERT_NE(oncpu, nullptr);
  EXPECT_DOUBLE_EQ(oncpu->counter.value, 2.5);
  const auto* vol = FindSample(fams, "kmon_cpu_context_switches_total",
                         {{"container", "4f2a9c1b7d3e"}, {"kind", "voluntary"}});
  ASSERT_NE(vol, nullptr);
  EXPECT_EQ(vol->counter.value, 20);
  EXPECT_EQ(fams[0].metric.size(), 2u);  // the gone cgroup 999 is not exported

  const auto* sleep = FindSample(fams, "kmon_cpu_offcpu_duration_seconds",
                           {{"container", "nginx.service"}, {"state", "sleep"}});
  ASSERT_NE(sleep, nullptr);
  EXPECT_EQ(sleep->histogram.sample_count, 20u);
  EXPECT_DOUBLE_EQ(sleep->histogram.sample_sum, 0.201);
  ASSERT_EQ(sleep->histogram.bucket.size(), static_cast<size_t>(KMON_CPU_HIST_SLOTS));
  EXPECT_EQ(sleep->histogram.bucket[13].cumulative_count, 0u);  // le=0.008192
  EXPECT_EQ(sleep->histogram.bucket[14].cumulative_count, 20u);  // le=0.016384
  EXPECT_DOUBLE_EQ(sleep->histogram.bucket[14].upper_bound, 0.016384);
  EXPECT_TRUE(std::isinf(sleep->histogram.bucket.back().upper_bound));

  const auto* runq = FindSample(fams, "kmon_cpu_runqueue_latency_seconds", {{"container", "nginx.service"}});
  ASSERT_NE(runq, nullptr);
  EXPECT_EQ(runq->histogram.sample_count, 41u);
  EXPECT_EQ(runq->histogram.bucket[26].cumulative_count, 40u);  // one beyond 67 s: only in +Inf
  EXPECT_EQ(runq->histogram.bucket[27].cumulative_count, 41u);
  EXPECT_EQ(FindSample(fams, "kmon_cpu_offcpu_duration_seconds", {{"state", ""}}), nullptr);
}

TEST(CpuFamiliesTest, SeriesBeyondTheLimitAreFoldedIntoOverflow) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 100);
  Fixture f;
  // cgroup 100: 3 counters + 3 histograms of 30 series = 93; cgroup 200: 3 + 30 = 33.
  auto fams = BuildCpuFamilies(f.counters, f.hists, &budget);
  EXPECT_NE(FindSample(fams, "kmon_cpu_oncpu_seconds_total", {{"container", "nginx.service"}}), nullptr);
  const auto* over = FindSample(fams, "kmon_cpu_oncpu_seconds_total", {{"container", kOverflowLabel}});
  ASSERT_NE(over, nullptr);
  EXPECT_DOUBLE_EQ(over->counter.value, 0.5);
  EXPECT_EQ(budget.Overflowed(), 33u);
}

}  // namespace
}  // namespace kmon
