// Benchmark: the exporter's own cost on a loaded server. nginx on loopback is driven
// by wrk while the real kmon_exporter, at its default config, is scraped every second
// as Prometheus scrapes it (OpenMetrics asked for, gzip accepted). Needs root, nginx
// and wrk.
//
//   build/tests/exporter_load [seconds] [exporter binary]
//
// Reports the exporter's peak RSS (VmHWM: over its whole life, and since the load
// began, reset then through /proc/PID/clear_refs, so the start's BPF loading is told
// apart), its CPU time as % of one core over the load (utime+stime from
// /proc/PID/stat; target <= 1%), whether every scrape succeeded, and the slowest.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench_util.h"

#ifndef KMON_EXPORTER_BIN
#define KMON_EXPORTER_BIN "build/kmon_exporter"
#endif

namespace {

using kmon::bench::Report;
using kmon::bench::StatusKb;
using Clock = std::chrono::steady_clock;

// utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat).
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close_paren = stat.rfind(')');  // the command may hold spaces
  if (close_paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close_paren + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; fields >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) {
      stime = std::stoull(f);
      break;
    }
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

const std::vector<std::string> kPrometheusHeaders{
    "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding: gzip"};

}  // namespace

int main(int argc, char** argv) {
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 60;
  const std::string exporter = argc > 2 ? argv[2] : KMON_EXPORTER_BIN;
  if (geteuid() != 0) {
    std::fprintf(stderr, "exporter_load: needs root\n");
    return 1;
  }
  if (seconds < 2) {
    std::fprintf(stderr, "exporter_load: at least 2 seconds\n");
    return 2;
  }
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;

  const int port = 29000 + getpid() % 1000;
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string listen = "--web.listen-address=127.0.0.1:" + std::to_string(port);
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execl(exporter.c_str(), exporter.c_str(), listen.c_str(), "--log.level=warn", nullptr);
    _exit(127);
  }
  bool ready = false;
  for (int i = 0; i < 300 && !ready; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ready = kmon::bench::HttpGet(port, "/-/ready", {}).ok;
  }
  if (!ready) {
    std::fprintf(stderr, "exporter_load: %s did not become ready on port %d\n", exporter.c_str(),
                 port);
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
    return 1;
  }
  const long start_hwm_kb = StatusKb(pid, "VmHWM");
  kmon::bench::HttpGet(port, "/metrics", kPrometheusHeaders);  // the first scrape names cgroups
  std::ofstream("/proc/" + std::to_string(pid) + "/clear_refs") << "5";  // VmHWM := VmRSS

  // wrk in the background for the whole run; a scrape a second meanwhile.
  std::thread load([&] { kmon::bench::Wrk(nginx.port(), seconds, /*cpu=*/0); });
  const auto t0 = Clock::now();
  const double cpu0 = CpuSeconds(pid);
  int scrapes = 0, failed = 0;
  size_t samples = 0;
  std::vector<double> ms;
  for (auto next = t0; next < t0 + std::chrono::seconds(seconds); next += std::chrono::seconds(1)) {
    std::this_thread::sleep_until(next);
    const kmon::bench::Reply r = kmon::bench::HttpGet(port, "/metrics", kPrometheusHeaders);
    ++scrapes;
    if (!r.ok) ++failed;
    ms.push_back(r.ms);
  }
  load.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu_pct = 100.0 * (CpuSeconds(pid) - cpu0) / elapsed;
  const long load_hwm_kb = StatusKb(pid, "VmHWM");
  const long life_hwm_kb = std::max(start_hwm_kb, load_hwm_kb);
  const long rss_kb = StatusKb(pid, "VmRSS");
  const long anon_kb = StatusKb(pid, "RssAnon"), file_kb = StatusKb(pid, "RssFile");
  samples = kmon::bench::HttpGet(port, "/metrics", {}).samples;
  if (std::getenv("KMON_BENCH_HOLD") != nullptr) {  // to look at /proc/PID/smaps
    std::printf("holding exporter pid %d for 30 s\n", pid);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(30));
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);

  double slowest = 0;
  for (double m : ms) slowest = std::max(slowest, m);
  std::printf("nginx + wrk on loopback for %d s, kmon_exporter at defaults scraped every second\n",
              seconds);
  std::printf("  series served       : %zu\n", samples);
  std::printf("  peak RSS (VmHWM)    : %.1f MiB over its life, %.1f MiB under load\n",
              life_hwm_kb / 1024.0, load_hwm_kb / 1024.0);
  std::printf("  RSS at the end      : %.1f MiB (%.1f MiB anonymous, %.1f MiB of mapped files)\n",
              rss_kb / 1024.0, anon_kb / 1024.0, file_kb / 1024.0);
  std::printf("  exporter CPU        : %.2f%% of one core (target <= 1%%)\n", cpu_pct);
  std::printf("  scrapes             : %d, %d failed; median %.1f ms, slowest %.1f ms\n", scrapes,
              failed, kmon::bench::Median(ms), slowest);
  std::printf("  exit status         : %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  Report("exporter_load.series", static_cast<double>(samples), "series");
  Report("exporter_load.peak_rss_life_mib", life_hwm_kb / 1024.0, "MiB");
  Report("exporter_load.peak_rss_load_mib", load_hwm_kb / 1024.0, "MiB");
  Report("exporter_load.rss_end_anon_mib", anon_kb / 1024.0, "MiB");
  Report("exporter_load.rss_end_file_mib", file_kb / 1024.0, "MiB");
  Report("exporter_load.cpu_pct_of_core", cpu_pct, "%");
  Report("exporter_load.scrapes_failed", failed, "scrapes");
  for (double m : ms) Report("exporter_load.scrape_ms", m, "ms");
  return failed == 0 ? 0 : 1;
}
