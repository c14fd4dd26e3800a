// Benchmark: what the cpu collector costs the scheduler. Two processes ping-pong a
// byte over two pipes, both pinned to one CPU, so every round trip is two context
// switches (the same workload as `perf bench sched pipe`, kept in-process so it
// needs no perf binary matching the kernel, and pinned so it measures switches
// rather than cross-CPU wakeups). Needs root.
//
//   build/tests/sched_overhead [round_trips] [rounds]
//
// Rounds interleave nothing / cpu collector (stacks on, the default) / cpu collector
// (stacks off) so drift on a shared machine hits all alike; medians are reported,
// and the ratio of round trips per second with the collector to without it
// (target >= 0.90).
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/log.h"
#include "collectors/cpu.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"

namespace {

using kmon::bench::Median;
using kmon::bench::Report;

double NowSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

void Pin(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  sched_setaffinity(0, sizeof one, &one);
}

// Round trips per second of `n` ping-pongs between this process and a child.
double PingPong(long n, int cpu) {
  int ping[2], pong[2];
  if (pipe(ping) != 0 || pipe(pong) != 0) return 0;
  pid_t child = fork();
  if (child == 0) {
    Pin(cpu);
    char c;
    for (long i = 0; i < n; ++i) {
      if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1) _exit(1);
    }
    _exit(0);
  }
  Pin(cpu);
  char c = 'x';
  const double t0 = NowSeconds();
  for (long i = 0; i < n; ++i) {
    if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1) break;
  }
  const double dt = NowSeconds() - t0;
  int status;
  waitpid(child, &status, 0);
  for (int fd : {ping[0], ping[1], pong[0], pong[1]}) close(fd);
  return n / dt;
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 200000;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 7;
  const int cpu = 0;
  if (geteuid() != 0) {
    std::fprintf(stderr, "sched_overhead: needs root\n");
    return 1;
  }
  kmon::ConfigureLogging(kmon::LogLevel::kWarn, kmon::LogFormat::kLogfmt);
  auto root = kmon::DetectCgroup2Root();
  kmon::WorkloadResolver workloads(
      std::make_unique<kmon::CgroupFsPathSource>(root.value_or("/sys/fs/cgroup")), nullptr);
  kmon::WatchedCgroups watched(&workloads);
  auto stacks_on = kmon::ParseConfig("collectors:\n  cpu:\n    stacks: true\n", kmon::ProcessEnv());
  auto stacks_off =
      kmon::ParseConfig("collectors:\n  cpu:\n    stacks: false\n", kmon::ProcessEnv());
  if (!stacks_on.config || !stacks_off.config) {
    std::fprintf(stderr, "bad built-in benchmark config\n");
    return 1;
  }
  PingPong(n / 4, cpu);  // warm up

  std::vector<double> base, with_stacks, without_stacks;
  for (int r = 0; r < rounds; ++r) {
    base.push_back(PingPong(n, cpu));
    for (auto* cfg : {&*stacks_on.config, &*stacks_off.config}) {
      kmon::CpuCollector c({&workloads, &watched, nullptr});
      absl::Status st = c.Start(*cfg);
      if (!st.ok()) {
        std::fprintf(stderr, "cpu collector: %s\n", st.ToString().c_str());
        return 1;
      }
      (cfg == &*stacks_on.config ? with_stacks : without_stacks).push_back(PingPong(n, cpu));
      c.Stop();
    }
  }
  const double b = Median(base), ws = Median(with_stacks), wo = Median(without_stacks);
  std::printf("pipe ping-pong, 2 processes on CPU %d, %ld round trips x %d rounds (medians)\n", cpu,
              n, rounds);
  std::printf("  nothing attached        : %9.0f round trips/s (%.2f us each)\n", b, 1e6 / b);
  std::printf("  cpu collector, stacks   : %9.0f round trips/s (%.2f us each)\n", ws, 1e6 / ws);
  std::printf("  cpu collector, no stacks: %9.0f round trips/s (%.2f us each)\n", wo, 1e6 / wo);
  std::printf("  ratio with/without, stacks on  = %.3f (target >= 0.90)\n", ws / b);
  std::printf("  ratio with/without, stacks off = %.3f\n", wo / b);
  for (int r = 0; r < rounds; ++r) {
    Report("sched_overhead.round_trip_us_without", 1e6 / base[r], "us");
    Report("sched_overhead.ratio_stacks_on", with_stacks[r] / base[r], "x");
    Report("sched_overhead.ratio_stacks_off", without_stacks[r] / base[r], "x");
  }
  return 0;
}
