// Benchmark: what the tcp collector costs a loaded server. nginx on loopback is
// driven by wrk, with and without kmon's tcp collector loaded, in alternating
// rounds; prints requests/s of each, their ratio (target >= 0.98), and the BPF
// nanoseconds per event of every TCP hook from the kernel's bpf_stats. Needs root,
// nginx and wrk.
//
//   build/tests/tcp_overhead [rounds] [seconds per round]
#include <bpf/bpf.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "collectors/tcp.h"
#include "collectors/topology_feed.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "exporter/self_metrics.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"

using kmon::bench::Median;
using kmon::bench::Report;
using kmon::bench::Wrk;

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 6;
  const int seconds = argc > 2 ? std::atoi(argv[2]) : 4;
  if (geteuid() != 0) {
    std::fprintf(stderr, "tcp_overhead: needs root\n");
    return 1;
  }
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;
  const int port = nginx.port();

  auto root = kmon::DetectCgroup2Root();
  kmon::WorkloadResolver workloads(
      std::make_unique<kmon::CgroupFsPathSource>(root.value_or("/sys/fs/cgroup")), nullptr);
  kmon::WatchedCgroups watched(&workloads);
  kmon::TopologyFeed feed;
  const kmon::Config config = kmon::DefaultConfig();
  auto load = [&](kmon::TcpCollector* c) {
    absl::Status st = c->Start(config);
    if (!st.ok()) {
      std::fprintf(stderr, "tcp collector: %s\n", st.ToString().c_str());
      std::exit(1);
    }
  };

  // Alternate which goes first so drift over the run falls on both alike.
  std::vector<double> off, on;
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < 2; ++k) {
      const bool with_kmon = (r + k) % 2 == 1;
      if (!with_kmon) {
        off.push_back(Wrk(port, seconds));
        continue;
      }
      kmon::TcpCollector c({.workloads = &workloads, .watched = &watched, .topology = &feed});
      load(&c);
      on.push_back(Wrk(port, seconds));
      c.Stop();
    }
  }

  // One more round with the kernel's run-time stats on, for the cost of each hook.
  // (The stats themselves cost a little, so this round is not in the ratio.)
  std::vector<kmon::ProgramStats> stats;
  {
    int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    kmon::TcpCollector c({.workloads = &workloads, .watched = &watched, .topology = &feed});
    load(&c);
    Wrk(port, seconds);
    stats = kmon::ReadProgramStats(c.BpfObject());
    c.Stop();
    if (stats_fd >= 0) close(stats_fd);
  }

  const double a = Median(off), b = Median(on);
  std::printf("nginx + wrk on loopback, %d rounds x %d s (median requests/s)\n", rounds, seconds);
  std::printf("  without kmon : %10.0f req/s\n", a);
  std::printf("  with kmon tcp: %10.0f req/s\n", b);
  if (a > 0) std::printf("  ratio        : %10.4f (target >= 0.98)\n", b / a);
  for (size_t r = 0; r < off.size() && r < on.size(); ++r) {
    Report("tcp_overhead.requests_per_s_without", off[r], "req/s");
    Report("tcp_overhead.requests_per_s_with", on[r], "req/s");
    if (off[r] > 0) Report("tcp_overhead.ratio_with_without", on[r] / off[r], "x");
  }
  std::printf("BPF cost per event (bpf_stats):\n");
  for (const auto& p : stats) {
    if (p.run_count == 0) continue;
    const double ns = static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_count);
    std::printf("  %-22s %10llu runs  %7.1f ns/run\n", p.name.c_str(),
                static_cast<unsigned long long>(p.run_count), ns);
    Report("tcp_overhead.bpf_ns_per_run." + p.name, ns, "ns");
  }
  return 0;
}
