// Benchmark: nanoseconds added to each syscall by the syscalls collector, side by
// side in one run with bpftrace doing the same counting job (per cgroup and
// syscall number, on sys_exit) and with nothing attached. Needs root.
//
//   build/tests/syscall_overhead [iterations] [rounds]
//
// Rounds interleave the three setups so drift on a shared machine hits all of them
// alike; the median of each is reported.
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "collectors/syscalls.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"

namespace {

using kmon::bench::Median;
using kmon::bench::Report;

// This thread's CPU time, so being preempted by other work does not count.
double ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double NsPerCall(long iterations) {
  double t0 = ThreadCpuNs();
  for (long i = 0; i < iterations; ++i) syscall(SYS_getppid);
  return (ThreadCpuNs() - t0) / iterations;
}

// Starts bpftrace counting every syscall exit per cgroup and number; returns its pid
// once its probes are attached (it prints "Attaching" first).
pid_t StartBpftrace() {
  int out[2];
  if (pipe(out) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    close(out[0]);
    execlp("bpftrace", "bpftrace", "-e",
           "tracepoint:raw_syscalls:sys_exit { @[cgroup, args->id] = count(); }", nullptr);
    _exit(127);
  }
  close(out[1]);
  std::string seen;
  char buf[256];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0) {
    seen.append(buf, n);
    if (seen.find("Attaching") != std::string::npos) break;
  }
  close(out[0]);
  if (seen.find("Attaching") == std::string::npos) {
    std::fprintf(stderr, "bpftrace did not attach: %s\n", seen.c_str());
    return -1;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = argc > 1 ? std::atol(argv[1]) : 2000000;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 7;
  if (geteuid() != 0) {
    std::fprintf(stderr, "syscall_overhead: needs root\n");
    return 1;
  }
  // One CPU, so the loop and the per-CPU maps it touches stay put.
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  sched_setaffinity(0, sizeof one, &one);
  NsPerCall(iterations / 4);  // warm up

  auto root = kmon::DetectCgroup2Root();
  kmon::WorkloadResolver workloads(
      std::make_unique<kmon::CgroupFsPathSource>(root.value_or("/sys/fs/cgroup")), nullptr);
  kmon::WatchedCgroups watched(&workloads);
  auto parsed = kmon::ParseConfig(
      "collectors:\n  syscalls:\n    syscalls: [getppid, read, write, futex]\n",
      kmon::ProcessEnv());
  if (!parsed.config) {
    std::fprintf(stderr, "bad built-in benchmark config\n");
    return 1;
  }

  // Each round measures nothing / kmon / nothing / bpftrace back to back, and the
  // added cost is the difference to the neighbouring baseline: drift on a shared
  // machine then cancels out. kmon and bpftrace are attached for their slot only.
  std::vector<double> base, kmon_added, bpftrace_added;
  bool bpftrace_ok = true;
  for (int r = 0; r < rounds; ++r) {
    double b1 = NsPerCall(iterations);
    {
      kmon::SyscallsCollector c({.workloads = &workloads, .watched = &watched});
      absl::Status st = c.Start(*parsed.config);
      if (!st.ok()) {
        std::fprintf(stderr, "syscalls collector: %s\n", st.ToString().c_str());
        return 1;
      }
      kmon_added.push_back(NsPerCall(iterations) - b1);
      c.Stop();
    }
    double b2 = NsPerCall(iterations);
    base.push_back(b1);
    base.push_back(b2);
    if (!bpftrace_ok) continue;
    pid_t bt = StartBpftrace();
    if (bt <= 0) {
      bpftrace_ok = false;
      continue;
    }
    bpftrace_added.push_back(NsPerCall(iterations) - b2);
    kill(bt, SIGINT);
    int status;
    waitpid(bt, &status, 0);
  }

  const double b = Median(base);
  const double k = Median(kmon_added);
  std::printf("getppid loop, %ld calls x %d rounds, thread CPU time (medians)\n", iterations,
              rounds);
  std::printf("  nothing attached : %8.1f ns per call\n", b);
  std::printf("  kmon syscalls    : +%7.1f ns per call\n", k);
  if (!bpftrace_added.empty()) {
    const double t = Median(bpftrace_added);
    std::printf("  bpftrace         : +%7.1f ns per call\n", t);
    if (t > 0) {
      std::printf("  kmon added cost / bpftrace added cost = %.2f (target <= 0.60)\n", k / t);
    }
  } else {
    std::printf("  bpftrace         : not measured (bpftrace did not start)\n");
  }
  for (size_t r = 0; r < kmon_added.size(); ++r) {
    Report("syscall_overhead.kmon_added_ns", kmon_added[r], "ns");
    if (r >= bpftrace_added.size()) continue;
    Report("syscall_overhead.bpftrace_added_ns", bpftrace_added[r], "ns");
    if (bpftrace_added[r] > 0) {
      Report("syscall_overhead.kmon_over_bpftrace", kmon_added[r] / bpftrace_added[r], "x");
    }
  }
  return 0;
}
