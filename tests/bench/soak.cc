// Benchmark: a soak of the real kmon_exporter. nginx on loopback under wrk for the
// whole run; a scrape every second (as Prometheus scrapes: OpenMetrics, gzip); a
// reload every 2 s through POST /-/reload, every tenth with an invalid config that must
// be rejected (and counted: kmon_config_last_reload_successful 0); every second a new
// cgroup whose process opens short TCP connections to nginx, removed again after the
// next second. Needs root, nginx and wrk.
//
//   build/tests/soak [--minutes=10] [--exporter=PATH]
//
// Prints the exporter's RSS slope (KiB per minute, least squares over one sample a
// second for the whole run), scrapes that failed (must be 0), reloads made, rejected
// and expected to be rejected, and at the end against the baseline taken before the
// load: the exporter's open fds, kmon_watched_cgroups, series per collector, and the
// entries of every BPF map (kmon_bpf_map_entries), after the load stopped and the
// gone-cgroup grace passed. Exits 1 when a scrape failed or a reload went the wrong way.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
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
using namespace std::chrono_literals;

int OpenFds(pid_t pid) {
  int n = 0;
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// POST to 127.0.0.1:port; the HTTP status, 0 without an answer.
int HttpPost(int port, const std::string& path) {
  const std::string out = kmon::bench::Run(
      "curl -s -o /dev/null -w '%{http_code}' -X POST -m 30 "
      "http://127.0.0.1:" +
      std::to_string(port) + path);
  return std::atoi(out.c_str());
}

std::string HttpBody(int port, const std::string& path) {
  return kmon::bench::Run("curl -s -m 30 http://127.0.0.1:" + std::to_string(port) + path);
}

// name{labels} -> value for every sample of the families whose names start with `prefix`.
std::map<std::string, double> Samples(const std::string& text, const std::string& prefix) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.rfind(prefix, 0) != 0) continue;
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::atof(line.c_str() + sp + 1);
  }
  return out;
}

// Series per collector: samples of each kmon_<family> that are not kmon's own.
std::map<std::string, int> SeriesByFamilyPrefix(const std::string& text) {
  std::map<std::string, int> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t us = line.find('_', 5);  // kmon_<what>_...
    if (line.rfind("kmon_", 0) != 0 || us == std::string::npos) continue;
    const std::string what = line.substr(5, us - 5);
    if (what == "bpf" || what == "collector" || what == "config" || what == "events" ||
        what == "build" || what == "series" || what == "watched" || what == "kubernetes")
      continue;
    ++out[what];
  }
  return out;
}

// What is compared at the end with the baseline.
struct State {
  std::map<std::string, double> maps, watched;
  std::map<std::string, int> series;
  int fds = 0;
  int churn_series = 0;  // series that name one of the soak's cgroups
  std::vector<std::string> churn_examples;
};

State Snapshot(int port, pid_t pid) {
  const std::string text = HttpBody(port, "/metrics");
  State st{Samples(text, "kmon_bpf_map_entries"), Samples(text, "kmon_watched_cgroups"),
           SeriesByFamilyPrefix(text), OpenFds(pid)};
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("kmon-soak-") == std::string::npos) continue;
    if (++st.churn_series <= 5) st.churn_examples.push_back(line);
  }
  return st;
}

// Least-squares slope of y over x.
double Slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i], sy += y[i], sxx += x[i] * x[i], sxy += x[i] * y[i];
  }
  const double d = n * sxx - sx * sx;
  return d == 0 ? 0 : (n * sxy - sx * sy) / d;
}

std::string ValidConfig(int n) {
  // Two sets of tcp buckets in turn (each reload restarts the histograms) and a
  // changing series limit; interval 1s so new cgroups are watched within a second.
  // The topology is on: each churned cgroup is a client with an edge of its own.
  return "interval: 1s\nlimits:\n  max_series_per_collector: " + std::to_string(20000 + n % 7) +
         "\ncollectors:\n  topology:\n    enabled: true\n  tcp:\n    latency_buckets: " +
         (n % 2 ? "[0.0001, 0.001, 0.01, 0.1, 1]" : "[0.0005, 0.005, 0.05, 0.5, 5]") + "\n";
}

constexpr char kInvalidConfig[] =
    "interval: 1s\ncollectors:\n  topology:\n    enabled: true\n  tcp:\n    latency_buckets: [0.5, "
    "0.1]\n";  // unsorted

// A cgroup v2 directory with a process in it that makes `requests` HTTP requests to
// nginx, each on a connection of its own, and exits.
struct ChurnCgroup {
  std::string path;
  pid_t pid = -1;
};

// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
std::string Cgroup2Root() {
  std::ifstream in("/proc/self/mounts");
  std::string dev, dir, type, rest;
  while (in >> dev >> dir >> type && std::getline(in, rest)) {
    if (type == "cgroup2") return dir;
  }
  return "";
}

ChurnCgroup StartChurn(const std::string& root, int n, int nginx_port) {
  ChurnCgroup c;
  c.path = root + "/kmon-soak-" + std::to_string(getpid()) + "-" + std::to_string(n);
  if (mkdir(c.path.c_str(), 0755) != 0) return c;
  c.pid = fork();
  if (c.pid == 0) {
    std::ofstream procs(c.path + "/cgroup.procs");
    procs << getpid() << std::endl;
    if (!procs) _exit(1);
    int answered = 0;
    for (int i = 0; i < 5; ++i) answered += kmon::bench::HttpGet(nginx_port, "/", {}).ok;
    _exit(answered == 5 ? 0 : 2);
  }
  return c;
}

// Waits for its process and removes it; false when the cgroup could not be made or
// removed (or its process failed).
bool EndChurn(ChurnCgroup* c) {
  int status = -1;
  if (c->pid > 0) waitpid(c->pid, &status, 0);
  bool ok = c->pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  c->pid = -1;
  if (!c->path.empty()) ok = rmdir(c->path.c_str()) == 0 && ok;
  c->path.clear();
  return ok;
}

const std::vector<std::string> kPrometheusHeaders{
    "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    "Accept-Encoding: gzip"};

}  // namespace

int main(int argc, char** argv) {
  double minutes = 10;
  std::string exporter = KMON_EXPORTER_BIN;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--minutes=", 0) == 0) {
      minutes = std::atof(a.c_str() + 10);
    } else if (a.rfind("--exporter=", 0) == 0) {
      exporter = a.substr(11);
    } else {
      std::fprintf(stderr, "usage: soak [--minutes=10] [--exporter=PATH]\n");
      return 2;
    }
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "soak: needs root\n");
    return 1;
  }
  if (minutes <= 0) {
    std::fprintf(stderr, "soak: --minutes must be above 0\n");
    return 2;
  }
  const std::string cgroup_root = Cgroup2Root();
  if (cgroup_root.empty()) {
    std::fprintf(stderr, "soak: no cgroup2 mount\n");
    return 1;
  }
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;

  char cfg_tmpl[] = "/tmp/kmon-soak-XXXXXX";
  const int cfg_fd = mkstemp(cfg_tmpl);
  if (cfg_fd < 0) return 1;
  close(cfg_fd);
  const std::string config = cfg_tmpl;
  std::ofstream(config) << ValidConfig(0);

  const int port = 30000 + getpid() % 1000;
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string listen = "--web.listen-address=127.0.0.1:" + std::to_string(port);
    const std::string cfg = "--config.file=" + config;
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execl(exporter.c_str(), exporter.c_str(), listen.c_str(), cfg.c_str(), "--web.enable-lifecycle",
          "--log.level=warn", nullptr);
    _exit(127);
  }
  auto stop_exporter = [&] {
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    unlink(config.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  bool ready = false;
  for (int i = 0; i < 300 && !ready; ++i) {
    std::this_thread::sleep_for(100ms);
    ready = kmon::bench::HttpGet(port, "/-/ready", {}).ok;
  }
  if (!ready) {
    std::fprintf(stderr, "soak: %s did not become ready on port %d\n", exporter.c_str(), port);
    stop_exporter();
    return 1;
  }
  // Baseline: after two scrapes (the first names cgroups) and a grace, before any load.
  HttpBody(port, "/metrics");
  std::this_thread::sleep_for(2s);
  const State base = Snapshot(port, pid);

  const int seconds = static_cast<int>(minutes * 60);
  std::thread load([&] { kmon::bench::Wrk(nginx.port(), seconds, /*cpu=*/0); });
  const auto t0 = Clock::now();
  std::vector<double> t_min, rss_kib;
  int scrapes = 0, failed = 0, reloads = 0, invalid = 0, rejected = 0, wrong_reloads = 0;
  int cgroups = 0, churn_failed = 0;
  ChurnCgroup previous, current;
  for (int s = 0; s < seconds; ++s) {
    std::this_thread::sleep_until(t0 + std::chrono::seconds(s));
    // The cgroup of a second ago has finished its requests: it goes, a new one comes.
    if (s >= 2) churn_failed += !EndChurn(&previous);
    previous = current;
    current = StartChurn(cgroup_root, cgroups++, nginx.port());
    const kmon::bench::Reply r = kmon::bench::HttpGet(port, "/metrics", kPrometheusHeaders);
    ++scrapes;
    if (!r.ok) ++failed;
    if (s % 2 == 1) {
      ++reloads;
      const bool bad = reloads % 10 == 0;
      invalid += bad;
      // Whole files only (a rename, as a ConfigMap update swaps a symlink): kmon also
      // reloads on its own when it sees the file change.
      std::ofstream(config + ".new") << (bad ? std::string(kInvalidConfig) : ValidConfig(reloads));
      rename((config + ".new").c_str(), config.c_str());
      const int status = HttpPost(port, "/-/reload");
      rejected += status == 500;
      const double ok =
          Samples(HttpBody(port, "/metrics"), "kmon_config_last_reload_successful").begin()->second;
      if ((bad && (status != 500 || ok != 0)) || (!bad && (status != 200 || ok != 1))) {
        ++wrong_reloads;
        std::fprintf(stderr, "soak: reload %d (%s) answered %d, last_reload_successful %g\n",
                     reloads, bad ? "invalid" : "valid", status, ok);
      }
    }
    t_min.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / 60.0);
    rss_kib.push_back(static_cast<double>(StatusKb(pid, "VmRSS")));
  }
  churn_failed += !EndChurn(&previous);
  churn_failed += !EndChurn(&current);
  load.join();
  // Connections closed, cgroups gone: a cgroup's series leave once it has been
  // missing at every scrape for the labeler's 5 s grace, so scrapes go on meanwhile.
  for (int i = 0; i < 10; ++i) {
    std::this_thread::sleep_for(1s);
    HttpBody(port, "/metrics");
  }
  const State end = Snapshot(port, pid);
  const long rss_end = StatusKb(pid, "VmRSS"), hwm = StatusKb(pid, "VmHWM");
  const int exit_status = stop_exporter();

  const double slope = Slope(t_min, rss_kib);
  const size_t half = t_min.size() / 2;
  const double late_slope = Slope(std::vector<double>(t_min.begin() + half, t_min.end()),
                                  std::vector<double>(rss_kib.begin() + half, rss_kib.end()));
  std::printf(
      "soak: %.1f min of nginx + wrk, a scrape a second, a reload every 2 s, a cgroup "
      "with 5 short TCP connections a second\n",
      minutes);
  std::printf(
      "  RSS                 : %.0f KiB at the start, %ld KiB at the end, peak %ld KiB; "
      "slope %.1f KiB/min (least squares, %zu samples)\n",
      rss_kib.empty() ? 0.0 : rss_kib.front(), rss_end, hwm, slope, rss_kib.size());
  std::printf("  RSS slope, 2nd half : %.1f KiB/min\n", late_slope);
  std::printf("  scrapes             : %d, %d failed\n", scrapes, failed);
  std::printf("  reloads             : %d, %d invalid, %d rejected, %d went the wrong way\n",
              reloads, invalid, rejected, wrong_reloads);
  std::printf("  cgroups churned     : %d (5 HTTP requests each, own connections), %d failed\n",
              cgroups, churn_failed);
  std::printf("  soak cgroups named  : %d series at the end (gone cgroups leave after 5 s)\n",
              end.churn_series);
  for (const std::string& e : end.churn_examples) std::printf("    e.g. %s\n", e.c_str());
  std::printf("  open fds            : %d at baseline, %d at the end\n", base.fds, end.fds);
  for (const auto& [k, v] : end.watched) {
    const auto b = base.watched.find(k);
    std::printf("  %-20s: %.0f at baseline, %.0f at the end\n", "watched cgroups",
                b == base.watched.end() ? -1.0 : b->second, v);
  }
  for (const auto& [what, n] : end.series) {
    const auto b = base.series.find(what);
    std::printf("  series kmon_%-8s: %d at baseline, %d at the end\n", what.c_str(),
                b == base.series.end() ? 0 : b->second, n);
  }
  int maps_changed = 0;
  for (const auto& [k, v] : end.maps) {
    const auto b = base.maps.find(k);
    const double was = b == base.maps.end() ? 0 : b->second;
    if (v != was) {
      ++maps_changed;
      std::printf("  map entries         : %s %.0f at baseline, %.0f at the end\n", k.c_str(), was,
                  v);
    }
  }
  std::printf("  maps with other entries than at baseline: %d of %zu\n", maps_changed,
              end.maps.size());
  std::printf("  exit status         : %d\n", exit_status);
  Report("soak.rss_slope_kib_per_min", slope, "KiB/min");
  Report("soak.rss_slope_2nd_half_kib_per_min", late_slope, "KiB/min");
  Report("soak.churn_series_at_end", end.churn_series, "series");
  Report("soak.rss_end_mib", rss_end / 1024.0, "MiB");
  Report("soak.scrapes_failed", failed, "scrapes");
  Report("soak.reloads_rejected", rejected, "reloads");
  Report("soak.reloads_invalid", invalid, "reloads");
  Report("soak.reloads_wrong", wrong_reloads, "reloads");
  Report("soak.cgroups_churned", cgroups, "cgroups");
  Report("soak.fds_end_minus_baseline", end.fds - base.fds, "fds");
  Report("soak.maps_changed", maps_changed, "maps");
  return failed == 0 && wrong_reloads == 0 && exit_status == 0 ? 0 : 1;
}
