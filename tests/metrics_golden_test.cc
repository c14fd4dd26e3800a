// Golden /metrics: fixed kernel data through the real family builders and the
// text serializer must give exactly tests/golden/metrics.prom, which promtool accepts.
// KMON_UPDATE_GOLDEN=1 rewrites the file (review the diff before committing it).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <unistd.h>
#include <sstream>

#include <gtest/gtest.h>

#include "collectors/syscalls.h"
#include "exporter/exposition.h"
#include "exporter/self_metrics.h"
#include "collectors/workload_labeler.h"
#include "provider/workload.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

std::vector<prometheus::MetricFamily> FixedFamilies() {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  std::vector<SyscallCount> counts = {
      {100, 0, 1200, 3},  // read
      {100, 1, 800, 0},   // write
      {200, 0, 50, 0},
      {200, 257, 40, 12},  // openat
      {1, 1, 7, 0},
      {999, 0, 5, 0},   // a cgroup that no longer exists: not exported
      {100, 39, 9, 0},  // a syscall not in the configured set: not exported
  };
  std::map<int, std::string> names{{0, "read"}, {1, "write"}, {257, "openat"}};
  auto families = BuildSyscallFamilies(counts, names, &budget);

  SelfState self;
  self.version = "0.1.0";
  self.revision = "abcdef012345";
  self.libbpf_version = "1.1";
  self.kernel = "6.18.0";
  self.collectors.push_back({"syscalls", true, 0.0025, nullptr, {{"map_full", 2}}, 0});
  self.collectors.push_back({"tcp", false, 0, nullptr, {}, 0});
  self.last_reload_ok = true;
  self.last_reload_success_unix = 1.7e9;
  self.watched_cgroups = 0;
  self.shared_maps = {{"filter_config", 1, 1, true, 352},
                      {"watched_cgroups", 0, 16384, true, 2112},
                      {"task_state", 0, 0, false, 4096}};  // a local-storage map: memory only
  self.kubernetes = {{"node", true, 12, 1.7e9}, {"cluster", false, 3000, 1.69e9}};
  for (auto& f : BuildSelfMetrics(self)) families.push_back(std::move(f));
  return families;
}

TEST(MetricsGoldenTest, TextMatchesGoldenAndPassesPromtool) {
  ExpectGoldenMetrics(Serialize(FixedFamilies(), ExpositionFormat::kText004), "metrics.prom");
}

TEST(MetricsGoldenTest, SyscallSamplesAreExact) {
  auto families = FixedFamilies();
  ASSERT_GE(families.size(), 2u);
  const auto& calls = families[0];
  EXPECT_EQ(calls.name, "kmon_syscalls_total");
  // 2 host cgroups x their syscalls + the pod's 2: 5 series; the dead cgroup and
  // the unconfigured syscall are not there.
  ASSERT_EQ(calls.metric.size(), 5u);
  double pod_openat = -1;
  for (const auto& m : calls.metric) {
    if (m.label[1].value == "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc" && m.label[3].value == "openat") {
      pod_openat = m.counter.value;
      EXPECT_EQ(m.label[2].value, "4f2a9c1b7d3e");
    }
  }
  EXPECT_EQ(pod_openat, 40);
  const auto& errors = families[1];
  double errs = 0;
  for (const auto& m : errors.metric) errs += m.counter.value;
  EXPECT_EQ(errs, 15);
}

}  // namespace
}  // namespace kmon
