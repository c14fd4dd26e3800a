// Benchmark: what kmon as a whole costs a loaded server. nginx on loopback is driven
// by wrk in alternating rounds with nothing, with the floor (empty programs on the
// hooks of the default collectors), with the real kmon_exporter at its defaults
// (every default collector, scraped every second) and with the exporter running each
// default collector alone (tcp with its topology). Prints the medians of requests/s
// and wrk's p99 latency and their ratios to nothing (target >= 0.98 at defaults).
// Each round starts 2 s after the last one ended, and starts the exporter afresh 2 s
// before wrk runs: neither the exporter's start (BPF loading) nor what the kernel
// frees after the last one stopped is in the measured seconds. Needs root, nginx and
// wrk.
//
//   build/tests/nginx_overhead [rounds] [seconds per round] [exporter binary]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench_util.h"
#include "tests/bench/floor.h"

#ifndef KMON_EXPORTER_BIN
#define KMON_EXPORTER_BIN "build/kmon_exporter"
#endif

namespace {

using kmon::bench::Median;
using kmon::bench::Report;

// The collectors a default config runs, as the blocks that switch them.
const std::vector<std::string> kDefaultCollectors = {"tcp", "topology", "drops",    "blockio",
                                                     "cpu", "dns",      "pagecache"};

// The floor of the defaults: empty programs on the hooks the default collectors
// attach to (bpf/floor.bpf.c).
const std::set<std::string> kDefaultFloor = {
    "floor_cgroup_skb_egress",    "floor_cgroup_skb_ingress",  "floor_sock_recv_length",
    "floor_sock_send_length",     "floor_inet_sock_set_state", "floor_tcp_destroy_sock",
    "floor_tcp_retransmit_skb",   "floor_tcp_send_reset",      "floor_tcp_receive_reset",
    "floor_sched_switch",         "floor_sched_wakeup",        "floor_sched_wakeup_new",
    "floor_block_io_start",       "floor_block_rq_issue",      "floor_block_rq_merge",
    "floor_block_rq_complete",    "floor_kfree_skb",           "floor_mm_filemap_get_pages",
    "floor_mm_filemap_map_pages", "floor_mm_filemap_fault",    "floor_mm_filemap_add_to_page_cache",
    "floor_writeback_dirty_folio"};

struct Setup {
  std::string name;
  // Empty: the built-in defaults; "-": no exporter at all; "floor": kDefaultFloor.
  std::string config;
};

// A config that runs only `only` (and the topology with tcp, which it feeds).
std::string OnlyConfig(const std::string& only) {
  std::string yaml = "collectors:\n";
  for (const std::string& c : kDefaultCollectors) {
    const bool on = c == only || (only == "tcp" && c == "topology");
    yaml += "  " + c + ":\n    enabled: " + (on ? "true" : "false") + "\n";
  }
  return yaml;
}

// One round of wrk beside the setup's exporter, scraped every second meanwhile.
kmon::bench::WrkResult Round(const Setup& s, int nginx_port, int seconds,
                             const std::string& exporter, const std::string& dir) {
  // What the previous round's exporter left the kernel to free (its maps, socket and
  // task storage, programs) is done before this one measures.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  if (s.config == "-") return kmon::bench::WrkLatency(nginx_port, seconds);
  if (s.config == "floor") {
    kmon::bench::Floor floor(kDefaultFloor);
    if (!floor.ok()) return {};
    return kmon::bench::WrkLatency(nginx_port, seconds);
  }
  std::vector<std::string> flags = {"--log.level=warn"};
  if (!s.config.empty()) {
    const std::string path = dir + "/" + s.name + ".yaml";
    std::ofstream(path) << s.config;
    flags.push_back("--config.file=" + path);
  }
  const int port = 29500 + getpid() % 400;
  kmon::bench::ExporterProcess kmon_exporter(exporter, port, flags);
  if (!kmon_exporter.ready()) return {};
  const std::vector<std::string> headers = {"Accept: application/openmetrics-text;version=1.0.0",
                                            "Accept-Encoding: gzip"};
  kmon::bench::HttpGet(port, "/metrics", headers);  // the first scrape names cgroups
  // What a start does once (the listener scan, BTF, the first cgroup walk) settles.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  std::atomic<bool> done{false};
  std::thread scraper([&] {
    while (!done) {
      for (int i = 0; i < 10 && !done; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (!done) kmon::bench::HttpGet(port, "/metrics", headers);
    }
  });
  const kmon::bench::WrkResult w = kmon::bench::WrkLatency(nginx_port, seconds);
  done = true;
  scraper.join();
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  const int seconds = argc > 2 ? std::atoi(argv[2]) : 5;
  const std::string exporter = argc > 3 ? argv[3] : KMON_EXPORTER_BIN;
  if (geteuid() != 0) {
    std::fprintf(stderr, "nginx_overhead: needs root\n");
    return 1;
  }
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;
  char dir_tmpl[] = "/tmp/kmon-nginx-overhead-XXXXXX";
  if (mkdtemp(dir_tmpl) == nullptr) return 1;
  const std::string dir = dir_tmpl;

  std::vector<Setup> setups = {{"nothing", "-"}, {"floor", "floor"}, {"defaults", ""}};
  for (const std::string& c : kDefaultCollectors) {
    if (c != "topology") setups.push_back({c, OnlyConfig(c)});
  }
  std::vector<std::vector<double>> rps(setups.size()), p99(setups.size());
  // Rotate which setup goes first so drift over the run falls on all alike.
  for (int r = 0; r < rounds; ++r) {
    for (size_t k = 0; k < setups.size(); ++k) {
      const size_t i = (r + k) % setups.size();
      const kmon::bench::WrkResult w = Round(setups[i], nginx.port(), seconds, exporter, dir);
      if (w.rps <= 0) {
        std::fprintf(stderr, "nginx_overhead: round of %s failed\n", setups[i].name.c_str());
        kmon::bench::Run("rm -rf " + dir);
        return 1;
      }
      rps[i].push_back(w.rps);
      p99[i].push_back(w.p99_ms);
    }
  }
  kmon::bench::Run("rm -rf " + dir);

  // Ratios within each round (to that round's run with nothing), then their median:
  // drift between rounds cancels.
  std::printf(
      "nginx + wrk on loopback, %d rounds x %d s, kmon_exporter scraped every second; "
      "medians, ratios to nothing in the same round (min-max)\n",
      rounds, seconds);
  for (size_t i = 0; i < setups.size(); ++i) {
    std::vector<double> rr, pr;
    for (int r = 0; r < rounds; ++r) {
      rr.push_back(rps[i][r] / rps[0][r]);
      pr.push_back(p99[0][r] > 0 ? p99[i][r] / p99[0][r] : 0);
      if (i > 0) {
        Report("nginx_overhead.requests_ratio." + setups[i].name, rr.back(), "x");
        Report("nginx_overhead.p99_ratio." + setups[i].name, pr.back(), "x");
      }
    }
    std::printf("  %-10s %9.0f req/s  ratio %.3f (%.3f-%.3f)   p99 %7.3f ms  ratio %6.3f%s\n",
                setups[i].name.c_str(), Median(rps[i]), Median(rr),
                *std::min_element(rr.begin(), rr.end()), *std::max_element(rr.begin(), rr.end()),
                Median(p99[i]), Median(pr),
                setups[i].name == "defaults" ? "   (target >= 0.98)" : "");
  }
  for (double v : rps[0]) Report("nginx_overhead.requests_per_s.nothing", v, "req/s");
  return 0;
}
