// Benchmark: the exporter's own cost on a loaded server. nginx on loopback is driven
// by wrk while the real kmon_exporter, at its default config, is scraped every second
// as Prometheus scrapes it (OpenMetrics asked for, gzip accepted). Needs root, nginx
// and wrk.
//
//   build/tests/exporter_load [seconds] [exporter binary]
//
// KMON_BENCH_KUBERNETES=N runs it with the Kubernetes provider on, talking to the tests'
// API server (tests/kube_api_server.h, in this process) that holds N pods on this node
// and N on another; its figures are then reported as exporter_load_kubernetes.*.
// KMON_BENCH_HOLD keeps the exporter up 30 s after the load, for a look at its smaps.
//
// Reports the exporter's peak RSS (VmHWM: over its whole life, and since the load
// began, reset then through /proc/PID/clear_refs, so the start's BPF loading is told
// apart), its CPU time as % of one core over the load (utime+stime from
// /proc/PID/stat; target <= 1%), whether every scrape succeeded, and the slowest.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench_util.h"
#include "tests/kube_api_server.h"

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

// The exporter's RSS by what is mapped (/proc/PID/smaps: each library, the binary, the
// heap, other anonymous memory), largest first: where the resident pages are.
std::string RssByMapping(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  struct Use {
    long rss = 0, private_dirty = 0, clean = 0;
  };
  std::map<std::string, Use> by;
  std::string line, name;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string first, second;
    f >> first >> second;
    if (first.find('-') != std::string::npos && second.size() == 4) {  // a mapping's header
      std::string off, dev, inode, path;
      f >> off >> dev >> inode >> path;
      name = path.empty() ? "[anonymous]" : path.substr(path.rfind('/') + 1);
    } else if (first == "Rss:") {
      by[name].rss += std::atol(second.c_str());
    } else if (first == "Private_Dirty:") {
      by[name].private_dirty += std::atol(second.c_str());
    } else if (first == "Private_Clean:" || first == "Shared_Clean:") {
      by[name].clean += std::atol(second.c_str());
    }
  }
  std::vector<std::pair<std::string, Use>> sorted(by.begin(), by.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.rss > b.second.rss; });
  std::string out = "  RSS by mapping (KiB): rss, private dirty, clean\n";
  char line_out[160];
  long rest = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const Use& u = sorted[i].second;
    if (i >= 16) {
      rest += u.rss;
      continue;
    }
    std::snprintf(line_out, sizeof line_out, "    %-36s %6ld %6ld %6ld\n", sorted[i].first.c_str(),
                  u.rss, u.private_dirty, u.clean);
    out += line_out;
  }
  std::snprintf(line_out, sizeof line_out, "    %-36s %6ld\n", "(the rest)", rest);
  return out + line_out;
}

// A kubeconfig for the tests' API server and the exporter config that names it.
std::string WriteKubernetesConfig(const kmon::KubeApiServer& api, const std::string& dir) {
  const std::string kubeconfig = dir + "/kubeconfig", config = dir + "/kmon.yaml";
  std::ofstream(kubeconfig) << "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n"
                            << "  cluster:\n    server: " << api.url()
                            << "\nusers:\n- name: kmon\n  user:\n    token: bench\n"
                            << "contexts:\n- name: bench\n  context:\n    cluster: bench\n"
                            << "    user: kmon\ncurrent-context: bench\n";
  std::ofstream(config) << "kubernetes:\n  enabled: true\n  node_name: node-a\n  kubeconfig: "
                        << kubeconfig << "\n";
  return config;
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
  const char* kube_env = std::getenv("KMON_BENCH_KUBERNETES");
  const int pods = kube_env != nullptr ? std::atoi(kube_env) : 0;
  const std::string key = pods > 0 ? "exporter_load_kubernetes" : "exporter_load";
  std::unique_ptr<kmon::KubeApiServer> api;
  std::string config_flag;
  char dir_tmpl[] = "/tmp/kmon-exporter-load-XXXXXX";
  if (pods > 0) {
    api = std::make_unique<kmon::KubeApiServer>();
    if (!api->ok() || mkdtemp(dir_tmpl) == nullptr) {
      std::fprintf(stderr, "exporter_load: no test API server\n");
      return 1;
    }
    auto ip = [](int net, int i) {
      return "10." + std::to_string(net) + "." + std::to_string(i / 250) + "." +
             std::to_string(i % 250);
    };
    for (int i = 0; i < pods; ++i) {
      const std::string n = std::to_string(i);
      api->Upsert(kmon::KubeApiServer::MakePod("bench", "here-" + n, "node-a", ip(1, i)));
      api->Upsert(kmon::KubeApiServer::MakePod("bench", "there-" + n, "node-b", ip(2, i)));
    }
    config_flag = "--config.file=" + WriteKubernetesConfig(*api, dir_tmpl);
  }
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;

  const int port = 29000 + getpid() % 1000;
  std::vector<std::string> flags = {"--log.level=warn"};
  if (!config_flag.empty()) flags.push_back(config_flag);
  kmon::bench::ExporterProcess exporter_process(exporter, port, flags);
  if (!exporter_process.ready()) return 1;
  const pid_t pid = exporter_process.pid();
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
  const std::string by_mapping = RssByMapping(pid);
  if (std::getenv("KMON_BENCH_HOLD") != nullptr) {  // to look at /proc/PID/smaps
    std::printf("holding exporter pid %d for 30 s\n", pid);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(30));
  }
  const int status = exporter_process.Stop();

  double slowest = 0;
  for (double m : ms) slowest = std::max(slowest, m);
  std::printf(
      "nginx + wrk on loopback for %d s, kmon_exporter at defaults%s scraped every second\n",
      seconds, pods > 0 ? " with the Kubernetes provider on" : "");
  if (pods > 0) {
    std::printf(
        "  test API server     : %d pods on this node, %d elsewhere; %d lists, %d watches\n", pods,
        pods, api->Requests(kmon::KubeRequestKind::kList),
        api->Requests(kmon::KubeRequestKind::kWatch));
    kmon::bench::Run(std::string("rm -rf ") + dir_tmpl);
  }
  std::printf("  series served       : %zu\n", samples);
  std::printf("  peak RSS (VmHWM)    : %.1f MiB over its life, %.1f MiB under load\n",
              life_hwm_kb / 1024.0, load_hwm_kb / 1024.0);
  std::printf("  RSS at the end      : %.1f MiB (%.1f MiB anonymous, %.1f MiB of mapped files)\n",
              rss_kb / 1024.0, anon_kb / 1024.0, file_kb / 1024.0);
  std::printf("  exporter CPU        : %.2f%% of one core (target <= 1%%)\n", cpu_pct);
  std::printf("  scrapes             : %d, %d failed; median %.1f ms, slowest %.1f ms\n", scrapes,
              failed, kmon::bench::Median(ms), slowest);
  std::printf("  exit status         : %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  std::fputs(by_mapping.c_str(), stdout);
  Report(key + ".series", static_cast<double>(samples), "series");
  Report(key + ".peak_rss_life_mib", life_hwm_kb / 1024.0, "MiB");
  Report(key + ".peak_rss_load_mib", load_hwm_kb / 1024.0, "MiB");
  Report(key + ".rss_end_anon_mib", anon_kb / 1024.0, "MiB");
  Report(key + ".rss_end_file_mib", file_kb / 1024.0, "MiB");
  Report(key + ".cpu_pct_of_core", cpu_pct, "%");
  Report(key + ".scrapes_failed", failed, "scrapes");
  for (double m : ms) Report(key + ".scrape_ms", m, "ms");
  // With the provider on, the figures count only if the exporter did talk to the API.
  const bool watched = pods == 0 || api->Requests(kmon::KubeRequestKind::kWatch) > 0;
  return failed == 0 && watched ? 0 : 1;
}
