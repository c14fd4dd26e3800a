// Benchmark: what the tcp collector costs a loaded server. nginx on loopback is
// driven by wrk in alternating rounds of three setups: nothing attached, the floor
// (empty programs on the tcp collector's tp_btf hooks, bpf/floor.bpf.c) and the tcp
// collector. Prints the medians of requests/s and of wrk's p99 latency, their ratios
// to nothing attached (target >= 0.98 for the collector), the BPF nanoseconds per
// event of every program from the kernel's bpf_stats (kept-alive connections, then
// one connection per request for the state changes), and the kernel memory of the
// collector's maps here and projected at 128 CPUs. Needs root, nginx and wrk.
//
//   build/tests/tcp_overhead [rounds] [seconds per round]
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "collectors/bpf_util.h"
#include "collectors/tcp.h"
#include "collectors/topology_feed.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "exporter/self_metrics.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/floor.h"

namespace {

using kmon::bench::Median;
using kmon::bench::Report;
using kmon::bench::Run;
using kmon::bench::WrkLatency;

const std::set<std::string> kFloorPrograms = {"floor_sock_recv_length",    "floor_sock_send_length",
                                              "floor_inet_sock_set_state", "floor_tcp_destroy_sock",
                                              "floor_tcp_retransmit_skb",  "floor_tcp_send_reset",
                                              "floor_tcp_receive_reset"};

// The programs on hooks. Those with a bare "raw_tp" section have no attach point:
// user space runs them (the start-time listener scan, through BPF_PROG_TEST_RUN).
std::vector<kmon::ProgramStats> HookStats(const bpf_object* obj) {
  std::vector<kmon::ProgramStats> out;
  for (auto& p : kmon::ReadProgramStats(obj)) {
    const bpf_program* prog = bpf_object__find_program_by_name(obj, p.name.c_str());
    if (prog != nullptr && std::string(bpf_program__section_name(prog)) == "raw_tp") continue;
    out.push_back(std::move(p));
  }
  return out;
}

void PrintStats(const std::string& what, const std::vector<kmon::ProgramStats>& stats) {
  for (const auto& p : stats) {
    if (p.run_count == 0) continue;
    const double ns = static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_count);
    std::printf("  %-26s %10llu runs  %7.1f ns/run\n", p.name.c_str(),
                static_cast<unsigned long long>(p.run_count), ns);
    Report("tcp_overhead.bpf_ns_per_run." + what + "." + p.name, ns, "ns");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 6;
  const int seconds = argc > 2 ? std::atoi(argv[2]) : 4;
  if (geteuid() != 0) {
    std::fprintf(stderr, "tcp_overhead: needs root\n");
    return 1;
  }
  // Every exit from here on returns from main, so that nginx (stopped by its
  // destructor) never outlives the benchmark; a signal that kills us kills it too
  // (PR_SET_PDEATHSIG in bench_util's Nginx).
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;
  const int port = nginx.port();

  auto root = kmon::DetectCgroup2Root();
  kmon::WorkloadResolver workloads(
      std::make_unique<kmon::CgroupFsPathSource>(root.value_or("/sys/fs/cgroup")), nullptr);
  kmon::WatchedCgroups watched(&workloads);
  kmon::TopologyFeed feed;
  const kmon::Config config = kmon::DefaultConfig();
  auto start = [&]() -> std::unique_ptr<kmon::TcpCollector> {
    auto c = std::make_unique<kmon::TcpCollector>(
        kmon::CollectorDeps{.workloads = &workloads, .watched = &watched, .topology = &feed});
    absl::Status st = c->Start(config);
    if (!st.ok()) {
      std::fprintf(stderr, "tcp collector: %s\n", st.ToString().c_str());
      return nullptr;
    }
    return c;
  };
  {
    kmon::bench::Floor floor(kFloorPrograms);
    if (!floor.ok()) return 1;
  }

  // Rotate which setup goes first so drift over the run falls on all alike.
  enum Setup { kNothing, kFloor, kKmon };
  const char* names[] = {"nothing", "floor", "kmon"};
  std::vector<double> rps[3], p99[3];
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < 3; ++k) {
      const int setup = (r + k) % 3;
      kmon::bench::WrkResult w;
      if (setup == kNothing) {
        w = WrkLatency(port, seconds);
      } else if (setup == kFloor) {
        kmon::bench::Floor floor(kFloorPrograms);
        w = WrkLatency(port, seconds);
      } else {
        auto c = start();
        if (c == nullptr) return 1;
        w = WrkLatency(port, seconds);
        c->Stop();
      }
      rps[setup].push_back(w.rps);
      p99[setup].push_back(w.p99_ms);
      Report(std::string("tcp_overhead.requests_per_s.") + names[setup], w.rps, "req/s");
      Report(std::string("tcp_overhead.p99_ms.") + names[setup], w.p99_ms, "ms");
    }
  }

  // Rounds with the kernel's run-time stats on, for the cost of each program (the
  // stats cost a little themselves, so these are not in the ratios): kept-alive
  // connections (sends and receives), then a connection per request (state changes).
  int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  std::vector<kmon::ProgramStats> kept, churn;
  struct MapMemory {
    std::string name;
    uint64_t bytes = 0;
    uint64_t at128 = 0;
  };
  std::vector<MapMemory> memlock;
  {
    auto c = start();
    if (c == nullptr) return 1;
    WrkLatency(port, seconds);
    kept = HookStats(c->BpfObject());
    bpf_map* m;
    bpf_object__for_each_map(m, const_cast<bpf_object*>(c->BpfObject())) {
      if (bpf_map__is_internal(m)) continue;  // .rodata: a few bytes
      // A per-CPU map's values grow with the CPUs, the rest (buckets, keys) does not:
      // the projection adds each entry's value for every CPU beyond these.
      const bpf_map_type t = bpf_map__type(m);
      const bool per_cpu = t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_PERCPU_ARRAY ||
                           t == BPF_MAP_TYPE_LRU_PERCPU_HASH;
      const uint64_t bytes = kmon::MapMemoryBytes(bpf_map__fd(m));
      uint64_t at128 = bytes;
      if (per_cpu) {
        const uint64_t entries = kmon::CountMapEntries(m).value_or(bpf_map__max_entries(m));
        const uint64_t value = (bpf_map__value_size(m) + 7) / 8 * 8;
        at128 += entries * value * static_cast<uint64_t>(std::max(0, 128 - kmon::PossibleCpus()));
      }
      memlock.push_back({bpf_map__name(m), bytes, at128});
    }
    c->Stop();
  }
  {
    auto c = start();
    if (c == nullptr) return 1;
    WrkLatency(port, seconds, /*close_each=*/true);
    churn = HookStats(c->BpfObject());
    c->Stop();
  }
  std::vector<kmon::ProgramStats> floor_kept;
  {
    kmon::bench::Floor floor(kFloorPrograms);
    WrkLatency(port, seconds);
    floor_kept = HookStats(floor.object());
  }
  if (stats_fd >= 0) close(stats_fd);

  std::printf("nginx + wrk on loopback, %d rounds x %d s (medians)\n", rounds, seconds);
  const double base_rps = Median(rps[kNothing]), base_p99 = Median(p99[kNothing]);
  for (int s = 0; s < 3; ++s) {
    const double m = Median(rps[s]), l = Median(p99[s]);
    std::printf("  %-8s %10.0f req/s  ratio %6.4f   p99 %7.3f ms  ratio %6.3f\n", names[s], m,
                base_rps > 0 ? m / base_rps : 0, l, base_p99 > 0 ? l / base_p99 : 0);
    if (s != kNothing && base_rps > 0) {
      Report(std::string("tcp_overhead.requests_ratio.") + names[s], m / base_rps, "x");
    }
    if (s != kNothing && base_p99 > 0) {
      Report(std::string("tcp_overhead.p99_ratio.") + names[s], l / base_p99, "x");
    }
  }
  std::printf("BPF cost per event (bpf_stats), kept-alive connections:\n");
  PrintStats("kept_alive", kept);
  std::printf("  the floor's empty programs on the same hooks:\n");
  PrintStats("floor", floor_kept);
  std::printf("BPF cost per event, one connection per request:\n");
  PrintStats("per_request_connection", churn);

  const int cpus = kmon::PossibleCpus();
  uint64_t total = 0, total128 = 0;
  std::printf(
      "map memory (memlock) after the kept-alive round, %d possible CPUs, projected at 128 "
      "with the same keys (socket storage is charged per socket, not here):\n",
      cpus);
  for (const MapMemory& m : memlock) {
    std::printf("  %-18s %10llu bytes  %12llu at 128 CPUs\n", m.name.c_str(),
                static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.at128));
    total += m.bytes;
    total128 += m.at128;
  }
  std::printf("  %-18s %10llu bytes  %12llu at 128 CPUs\n", "total",
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(total128));
  Report("tcp_overhead.map_memory_bytes", static_cast<double>(total), "bytes");
  Report("tcp_overhead.map_memory_bytes_at_128_cpus", static_cast<double>(total128), "bytes");
  return 0;
}
