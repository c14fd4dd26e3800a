// Benchmark: what the tcp collector costs a loaded server. nginx on loopback is
// driven by wrk, with and without kmon's tcp collector loaded, in alternating
// rounds; prints requests/s of each, their ratio (target >= 0.98), and the BPF
// nanoseconds per event of every TCP hook from the kernel's bpf_stats. Needs root,
// nginx and wrk.
//
//   build/tests/tcp_overhead [rounds] [seconds per round]
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

#include <bpf/bpf.h>

#include "collectors/tcp.h"
#include "collectors/topology_feed.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "exporter/self_metrics.h"
#include "provider/workload.h"

namespace {

std::string Run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  return out;
}

// Requests/s from wrk's summary, or 0.
double Wrk(int port, int seconds) {
  std::string out = Run("taskset -c 0 wrk -t1 -c16 -d" + std::to_string(seconds) +
                        "s http://127.0.0.1:" + std::to_string(port) + "/ 2>&1");
  auto at = out.find("Requests/sec:");
  if (at == std::string::npos) {
    std::fprintf(stderr, "wrk: %s\n", out.c_str());
    return 0;
  }
  return std::atof(out.c_str() + at + 13);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 6;
  const int seconds = argc > 2 ? std::atoi(argv[2]) : 4;
  if (geteuid() != 0) {
    std::fprintf(stderr, "tcp_overhead: needs root\n");
    return 1;
  }
  char dir_tmpl[] = "/tmp/kmon-nginx-XXXXXX";
  const std::string dir = mkdtemp(dir_tmpl);
  const int port = 18000 + getpid() % 1000;
  std::ofstream(dir + "/nginx.conf")
      << "daemon off;\nmaster_process off;\nworker_processes 1;\npid " << dir << "/nginx.pid;\n"
      << "error_log " << dir << "/error.log;\nevents { worker_connections 1024; }\n"
      << "http { access_log off; client_body_temp_path " << dir << ";\n"
      << "  server { listen 127.0.0.1:" << port << "; keepalive_requests 1000000;\n"
      << "    location / { return 200 \"ok\\n\"; } } }\n";
  pid_t nginx = fork();
  if (nginx == 0) {
    execlp("taskset", "taskset", "-c", "1", "nginx", "-p", dir.c_str(), "-c",
           (dir + "/nginx.conf").c_str(), nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  if (Wrk(port, 1) <= 0) {
    std::fprintf(stderr, "nginx did not answer on port %d (see %s/error.log)\n", port, dir.c_str());
    kill(nginx, SIGTERM);
    return 1;
  }

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
  kill(nginx, SIGTERM);
  waitpid(nginx, nullptr, 0);
  Run("rm -rf " + dir);

  const double a = Median(off), b = Median(on);
  std::printf("nginx + wrk on loopback, %d rounds x %d s (median requests/s)\n", rounds, seconds);
  std::printf("  without kmon : %10.0f req/s\n", a);
  std::printf("  with kmon tcp: %10.0f req/s\n", b);
  if (a > 0) std::printf("  ratio        : %10.4f (target >= 0.98)\n", b / a);
  std::printf("BPF cost per event (bpf_stats):\n");
  for (const auto& p : stats) {
    if (p.run_count == 0) continue;
    std::printf("  %-22s %10llu runs  %7.1f ns/run\n", p.name.c_str(),
                static_cast<unsigned long long>(p.run_count),
                static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_count));
  }
  return 0;
}
