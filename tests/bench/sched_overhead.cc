// Benchmark: what the cpu collector costs the scheduler. Two processes ping-pong a
// byte over two pipes, both pinned to one CPU, so every round trip is two context
// switches (the same workload as `perf bench sched pipe`, kept in-process so it
// needs no perf binary matching the kernel, and pinned so it measures switches
// rather than cross-CPU wakeups). Needs root.
//
//   build/tests/sched_overhead [round_trips] [rounds]
//
// Rounds interleave four setups so drift on a shared machine hits all alike:
//   nothing   no program on the scheduler's hooks
//   floor     empty programs on the hooks the cpu collector attaches on this kernel
//             (tests/bench/floor.h): sched_switch and sched_wakeup_new, and
//             sched_wakeup where the kernel keeps no account of run-queue waits
//             (the collector's fallback): the cost of hooking at all
//   defaults  the cpu collector as it ships (stacks: on_demand, no request: no stacks)
//   always    the cpu collector with stacks: always (two stack walks per blocking)
// Medians are reported, with each setup's round trips per second as a ratio of
// nothing's (target for defaults >= 0.90, goal 0.97), and the BPF time per run of
// each scheduler program from the kernel's bpf_stats (run_time_ns / run_cnt over
// the round; every switch on the machine counts, not just the ping-pong's).
#include <bpf/bpf.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/log.h"
#include "collectors/cpu.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/floor.h"

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

struct ProgStats {
  std::string name;
  uint64_t run_ns = 0, runs = 0;
};

// run_time_ns and run_cnt of the loaded programs with an id above `after` and one of
// `names`, by id: programs other people load and unload meanwhile stay out.
std::map<uint32_t, ProgStats> ReadStats(const std::vector<std::string>& names, uint32_t after) {
  std::map<uint32_t, ProgStats> out;
  for (uint32_t id = after; bpf_prog_get_next_id(id, &id) == 0;) {
    const int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) {
      // The kernel keeps the first 15 characters of a program's name: the floor's two
      // wakeup programs are both "floor_sched_wak" (summed).
      for (const std::string& name : names) {
        if (name.compare(0, sizeof info.name - 1, info.name) != 0) continue;
        out[id] = {info.name, info.run_time_ns, info.run_cnt};
        break;
      }
    }
    close(fd);
  }
  return out;
}

uint32_t MaxProgId() {
  uint32_t id = 0;
  while (bpf_prog_get_next_id(id, &id) == 0) {
  }
  return id;
}

// ns per run of each program (by name) over what ran between `before` and `after`.
std::map<std::string, double> NsPerRun(const std::map<uint32_t, ProgStats>& before,
                                       const std::map<uint32_t, ProgStats>& after) {
  std::map<std::string, ProgStats> sum;
  for (const auto& [id, a] : after) {
    auto it = before.find(id);
    if (it == before.end() || a.runs < it->second.runs) continue;
    sum[a.name].run_ns += a.run_ns - it->second.run_ns;
    sum[a.name].runs += a.runs - it->second.runs;
  }
  std::map<std::string, double> out;
  for (const auto& [name, d] : sum) {
    if (d.runs > 0) out[name] = static_cast<double>(d.run_ns) / d.runs;
  }
  return out;
}

// The floor's programs on the hooks the collector attaches here.
std::vector<std::string> FloorProgs(bool waits_from_kernel) {
  std::vector<std::string> progs = {"floor_sched_switch", "floor_sched_wakeup_new"};
  if (!waits_from_kernel) progs.push_back("floor_sched_wakeup");
  return progs;
}
const std::vector<std::string> kCpuProgs = {"kmon_cpu_switch", "kmon_cpu_wakeup",
                                            "kmon_cpu_forked"};

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
  // The kernel's BPF run-time statistics, for as long as this fd is open.
  const int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (stats_fd < 0) std::fprintf(stderr, "bpf_stats: could not enable; no ns per run\n");
  auto root = kmon::DetectCgroup2Root();
  kmon::WorkloadResolver workloads(
      std::make_unique<kmon::CgroupFsPathSource>(root.value_or("/sys/fs/cgroup")), nullptr);
  kmon::WatchedCgroups watched(&workloads);
  auto defaults = kmon::ParseConfig("", kmon::ProcessEnv());
  auto always = kmon::ParseConfig("collectors:\n  cpu:\n    stacks: always\n", kmon::ProcessEnv());
  if (!defaults.config || !always.config) {
    std::fprintf(stderr, "bad built-in benchmark config\n");
    return 1;
  }
  // Which hooks the collector takes on this kernel, so that the floor has the same.
  bool waits_from_kernel = false;
  {
    kmon::CpuCollector probe(kmon::CollectorDeps{&workloads, &watched, nullptr});
    absl::Status st = probe.Start(*defaults.config);
    if (!st.ok()) {
      std::fprintf(stderr, "cpu collector: %s\n", st.ToString().c_str());
      return 1;
    }
    waits_from_kernel = probe.waits_from_kernel();
    probe.Stop();
  }
  const std::vector<std::string> floor_progs = FloorProgs(waits_from_kernel);
  PingPong(n / 4, cpu);  // warm up

  enum Setup { kNothing, kFloor, kDefaults, kAlways, kSetups };
  const char* const names[kSetups] = {"nothing", "floor", "defaults", "always"};
  std::vector<double> rate[kSetups];
  std::map<std::string, std::vector<double>> ns[kSetups];  // program -> per round
  for (int r = 0; r < rounds; ++r) {
    for (int s = 0; s < kSetups; ++s) {
      const uint32_t ids_before = MaxProgId();
      std::unique_ptr<kmon::bench::Floor> floor;
      std::unique_ptr<kmon::CpuCollector> collector;
      const std::vector<std::string>* progs = nullptr;
      if (s == kFloor) {
        floor = std::make_unique<kmon::bench::Floor>(
            std::set<std::string>(floor_progs.begin(), floor_progs.end()));
        if (!floor->ok()) return 1;
        progs = &floor_progs;
      } else if (s == kDefaults || s == kAlways) {
        collector = std::make_unique<kmon::CpuCollector>(
            kmon::CollectorDeps{&workloads, &watched, nullptr});
        absl::Status st = collector->Start(s == kDefaults ? *defaults.config : *always.config);
        if (!st.ok()) {
          std::fprintf(stderr, "cpu collector: %s\n", st.ToString().c_str());
          return 1;
        }
        progs = &kCpuProgs;
      }
      const auto before = progs ? ReadStats(*progs, ids_before) : std::map<uint32_t, ProgStats>{};
      rate[s].push_back(PingPong(n, cpu));
      if (progs && stats_fd >= 0) {
        for (const auto& [prog, v] : NsPerRun(before, ReadStats(*progs, ids_before))) {
          ns[s][prog].push_back(v);
        }
      }
      if (collector) collector->Stop();
    }
  }
  const double base = Median(rate[kNothing]);
  std::printf(
      "pipe ping-pong, 2 processes on CPU %d, %ld round trips x %d rounds (medians; "
      "noisy on a shared machine)\n"
      "  run-queue waits: %s; the floor hooks %s\n",
      cpu, n, rounds,
      waits_from_kernel ? "the kernel's sched_info" : "the collector's sched_wakeup program",
      waits_from_kernel ? "sched_switch and sched_wakeup_new, as the collector does"
                        : "sched_switch, sched_wakeup and sched_wakeup_new, as the collector does");
  for (int s = 0; s < kSetups; ++s) {
    const double m = Median(rate[s]);
    std::printf("  %-9s: %9.0f round trips/s (%.2f us each), ratio %.3f%s\n", names[s], m, 1e6 / m,
                m / base, s == kDefaults ? " (target >= 0.90, goal 0.97)" : "");
    for (const auto& [prog, v] : ns[s]) {
      std::printf("      %-22s %7.0f ns per run (bpf_stats)\n", prog.c_str(), Median(v));
    }
  }
  for (int r = 0; r < rounds; ++r) {
    Report("sched_overhead.round_trip_us_nothing", 1e6 / rate[kNothing][r], "us");
    Report("sched_overhead.ratio_floor", rate[kFloor][r] / rate[kNothing][r], "x");
    Report("sched_overhead.ratio_defaults", rate[kDefaults][r] / rate[kNothing][r], "x");
    Report("sched_overhead.ratio_always", rate[kAlways][r] / rate[kNothing][r], "x");
  }
  for (int s = kFloor; s < kSetups; ++s) {
    for (const auto& [prog, v] : ns[s]) {
      Report(std::string("sched_overhead.") + names[s] + "." + prog + "_ns", Median(v), "ns");
    }
  }
  if (stats_fd >= 0) close(stats_fd);
  return 0;
}
