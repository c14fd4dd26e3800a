// Benchmark: what a scrape costs the exporter at 1k, 10k and 50k series. Recorded
// map contents (rows as the cpu, syscalls and tcp collectors read them from their
// data maps) go through the real decoders (BuildCpuFamilies, BuildSyscallFamilies,
// BuildTcpFamilies, each collector with its own labeler over one resolver), the real
// HTTP server and exposition, text and gzip, scraped over loopback like Prometheus.
// The workloads are pods of a Kubernetes node with their API names.
//
//   build/tests/series_scale [--sizes=1000,10000,50000] [--scrapes=N] [--no-burst]
//
// Per size: scrape time (from request to last byte) plain and gzipped; the CPU time
// a scrape costs (the process's, both ends: robust where the wall clock is not, on a
// shared machine); bytes on the wire; and the process's RSS (/proc/self/statm) per
// series, at its peak during the scrapes (VmHWM, reset before) and what stays after
// them (after malloc_trim); then a burst (1k -> 50k -> 1k series) and the RSS it
// leaves. As root it also reads a syscalls-shaped per-CPU hash map holding the same
// entries at two max_entries: the read costs what the map holds.
// Lines starting with "BENCH " are for tests/bench/run.
#include <absl/strings/numbers.h>
#include <absl/strings/str_split.h>
#include <bpf/bpf.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "base/buffer_pool.h"
#include "base/log.h"
#include "bpf/syscalls.h"
#include "collectors/bpf_util.h"
#include "collectors/cpu.h"
#include "collectors/syscalls.h"
#include "collectors/tcp.h"
#include "collectors/workload_labeler.h"
#include "exporter/http_server.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"

namespace kmon {
namespace {

using bench::Median;
using bench::Report;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Pages -> bytes of the resident set now.
long RssBytes() {
  long size = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

long StatusKb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0) return std::atol(line.c_str() + n + 1);
  }
  return 0;
}

// CPU time of the whole process (server and client threads), in ms.
double CpuMs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

// Resets VmHWM to the current RSS (Linux 4.0+).
void ResetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

// A node's pods, one container each: cgroup paths as kubelet's systemd driver with
// containerd makes them, and the API's names for them.
class Node : public CgroupPathSource, public PodMetadataSource {
 public:
  explicit Node(int pods) {
    for (int i = 0; i < pods; ++i) {
      char uid[40], cid[72];
      std::snprintf(uid, sizeof uid, "%08x-1d2a-4c3b-9e8f-%012x", 0x5eed0000 + i, i);
      std::snprintf(cid, sizeof cid, "%016x%016x%016x%016x", i, i * 7 + 1, i * 13 + 2, i + 3);
      std::string uid_path = uid;
      std::replace(uid_path.begin(), uid_path.end(), '-', '_');
      paths_[Id(i)] = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid_path +
                      ".slice/cri-containerd-" + cid + ".scope";
      PodMeta meta;
      meta.namespace_ = "shop-" + std::to_string(i % 7);
      meta.workload = "checkout-" + std::to_string(i);
      meta.name = meta.workload + "-7d9f8b6c5-x2x9k";
      meta.containers[cid] = "server";
      pods_[uid] = std::move(meta);
    }
  }
  static uint64_t Id(int i) { return 10000 + static_cast<uint64_t>(i); }
  std::unordered_map<uint64_t, std::string> Scan() override { return paths_; }
  std::optional<PodMeta> PodByUid(const std::string& uid) const override {
    auto it = pods_.find(uid);
    if (it == pods_.end()) return std::nullopt;
    return it->second;
  }
  uint64_t Generation() const override { return 1; }

 private:
  std::unordered_map<uint64_t, std::string> paths_;
  std::map<std::string, PodMeta> pods_;
};

// What the data maps of three collectors hold for `pods` workloads, each of which
// ran on a CPU, slept, waited for I/O, made 8 kinds of syscall and served TCP on one
// port while connecting out: 93 cpu + 16 syscalls + 50 tcp = 159 series.
struct Recorded {
  std::vector<CpuCounters> counters;
  std::vector<CpuHistogram> hists;
  std::vector<SyscallCount> syscalls;
  std::map<int, std::string> syscall_names{{0, "read"},         {1, "write"},     {3, "close"},
                                           {44, "sendto"},      {45, "recvfrom"}, {202, "futex"},
                                           {232, "epoll_wait"}, {257, "openat"}};
  TcpData tcp;
  std::vector<double> tcp_bounds = TcpConfig().latency_buckets;

  explicit Recorded(int pods) {
    for (int i = 0; i < pods; ++i) {
      const uint64_t cg = Node::Id(i);
      counters.push_back({cg, 1000000000ULL * (i + 1), 500ULL + i, 20ULL + i});
      for (uint32_t kind : {KMON_CPU_KIND_RUNQ, KMON_CPU_KIND_SLEEP, KMON_CPU_KIND_IO}) {
        CpuHistogram h{.cgroup_id = cg, .kind = kind};
        for (int s = 0; s < KMON_CPU_HIST_SLOTS; ++s) h.slots[s] = (s * 31 + i) % 97;
        h.sum_ns = 123456789ULL * (i + 1);
        hists.push_back(h);
      }
      for (const auto& [nr, name] : syscall_names) {
        syscalls.push_back({cg, nr, 1000ULL * (i + 1) + nr, static_cast<uint64_t>(nr % 5)});
      }
      EdgeHist e{.client_cgroup = 0, .server_cgroup = cg, .server_port = 8080};
      e.slots.assign(tcp_bounds.size() + 1, 0);
      for (size_t s = 0; s < e.slots.size(); ++s) e.slots[s] = (s * 17 + i) % 53;
      e.count = 1000;
      e.sum_seconds = 0.25 * (i + 1);
      tcp.edges.push_back(e);
      TcpConnectHist c{.cgroup_id = cg, .slots = e.slots, .sum_ns = 987654ULL * (i + 1)};
      tcp.connects.push_back(c);
      tcp_stats s{};
      s.opened_inbound = 100 + i;
      s.opened_outbound = 50 + i;
      s.tcp_bytes_sent = 123456789ULL * (i + 1);
      s.tcp_bytes_received = 23456789ULL * (i + 1);
      s.active_inbound = 1;  // one connection open each way
      s.active_outbound = 1;
      tcp.stats.push_back({cg, s});
    }
  }
};

// The collectors' Read(): this scrape's rows (a copy, as a map read makes them)
// through the real decoders, one labeler per collector.
class Gatherer {
 public:
  explicit Gatherer(const Recorded* rec, WorkloadResolver* workloads)
      : rec_(rec),
        cpu_(workloads, kNoLimit),
        syscalls_(workloads, kNoLimit),
        tcp_(workloads, kNoLimit) {}

  /// What the maps hold from now on.
  void Use(const Recorded* rec) { rec_ = rec; }

  std::vector<prometheus::MetricFamily> Gather() {
    const Recorded& rec = *rec_;
    std::vector<prometheus::MetricFamily> out;
    auto append = [&](std::vector<prometheus::MetricFamily> fs) {
      for (auto& f : fs) out.push_back(std::move(f));
    };
    {
      std::vector<CpuCounters> counters = rec.counters;
      std::vector<CpuHistogram> hists = rec.hists;
      cpu_.BeginPass();
      append(BuildCpuFamilies(counters, hists, &cpu_));
      cpu_.EndPass();
    }
    {
      std::vector<SyscallCount> counts = rec.syscalls;
      syscalls_.BeginPass();
      append(BuildSyscallFamilies(counts, rec.syscall_names, &syscalls_));
      syscalls_.EndPass();
    }
    {
      TcpData data = rec.tcp;
      tcp_.BeginPass();
      append(BuildTcpFamilies(data, rec.tcp_bounds, &tcp_));
      tcp_.EndPass();
    }
    return out;
  }

 private:
  static constexpr int64_t kNoLimit = 1 << 30;  // measure the series, not the budget
  const Recorded* rec_;
  WorkloadLabeler cpu_, syscalls_, tcp_;
};

// A scrape as Prometheus makes it, plain or gzipped.
bench::Reply Scrape(int port, bool gzip) {
  std::vector<std::string> headers;
  if (gzip) headers.push_back("Accept-Encoding: gzip");
  return bench::HttpGet(port, "/metrics", headers);
}

// The real HTTP server over a Gatherer of `pods` pods' rows.
class Exporter {
 public:
  explicit Exporter(int pods)
      : rec_(pods),
        node_(pods),
        workloads_(std::make_unique<Node>(pods), &node_, std::chrono::milliseconds(0)),
        gatherer_(&rec_, &workloads_) {
    HttpHooks hooks;
    hooks.gather = [this] { return gatherer_.Gather(); };
    hooks.ready = [] { return true; };
    hooks.reload = [] { return absl::OkStatus(); };
    hooks.landing_page = [] { return std::string("kmon"); };
    HttpServerOptions options;
    options.listen_address = "127.0.0.1:0";
    auto server = HttpServer::Start(options, std::move(hooks));
    if (!server.ok()) {
      std::fprintf(stderr, "series_scale: %s\n", server.status().ToString().c_str());
      return;
    }
    server_ = std::move(*server);
  }
  bool ok() const { return server_ != nullptr; }
  int port() const { return server_->ListeningPorts().at(0); }
  Gatherer& gatherer() { return gatherer_; }

 private:
  const Recorded rec_;
  Node node_;
  WorkloadResolver workloads_;
  Gatherer gatherer_;
  std::unique_ptr<HttpServer> server_;
};

constexpr int kSeriesPerPod = 159;

bool RunSize(int target_series, int scrapes) {
  const int pods = std::max(1, (target_series + kSeriesPerPod / 2) / kSeriesPerPod);
  Exporter exporter(pods);
  if (!exporter.ok()) return false;
  const int port = exporter.port();

  malloc_trim(0);
  const long base = RssBytes();
  ResetPeak();
  std::vector<double> plain_ms, gzip_ms, plain_cpu, gzip_cpu;
  bench::Reply plain, gz;
  bool ok = true;
  for (int i = 0; i < scrapes; ++i) {
    double cpu0 = CpuMs();
    plain = Scrape(port, false);
    double cpu1 = CpuMs();
    gz = Scrape(port, true);
    double cpu2 = CpuMs();
    ok = ok && plain.ok && gz.ok;
    plain_ms.push_back(plain.ms);
    gzip_ms.push_back(gz.ms);
    plain_cpu.push_back(cpu1 - cpu0);
    gzip_cpu.push_back(cpu2 - cpu1);
  }
  const long peak = StatusKb("VmHWM:") * 1024;
  const long after = RssBytes();
  malloc_trim(0);
  const long trimmed = RssBytes();
  const double series = static_cast<double>(plain.samples);
  const double per10k = 1e4 / std::max(1.0, series);
  std::printf(
      "%6.0f series (%d pods): scrape %6.1f ms plain, %6.1f ms gzip (%5.1f / %5.1f ms per 10k; "
      "CPU %5.1f / %5.1f ms per 10k); %8.0f / %7.0f bytes on the wire; RSS per series: peak "
      "%5.0f B, after %5.0f B, after malloc_trim %5.0f B%s\n",
      series, pods, Median(plain_ms), Median(gzip_ms), Median(plain_ms) * per10k,
      Median(gzip_ms) * per10k, Median(plain_cpu) * per10k, Median(gzip_cpu) * per10k,
      static_cast<double>(plain.body_bytes), static_cast<double>(gz.body_bytes),
      (peak - base) / std::max(1.0, series), (after - base) / std::max(1.0, series),
      (trimmed - base) / std::max(1.0, series), ok ? "" : "  FAILED SCRAPES");
  const std::string k = "series_scale." + std::to_string(target_series / 1000) + "k.";
  Report(k + "series", series, "series");
  for (size_t i = 0; i < plain_ms.size(); ++i) {  // every scrape: run reports min/median/max
    Report(k + "scrape_ms", plain_ms[i], "ms");
    Report(k + "scrape_gzip_ms", gzip_ms[i], "ms");
    Report(k + "cpu_ms_per_10k", plain_cpu[i] * per10k, "ms");
    Report(k + "cpu_gzip_ms_per_10k", gzip_cpu[i] * per10k, "ms");
  }
  Report(k + "wire_bytes", static_cast<double>(plain.body_bytes), "B");
  Report(k + "wire_gzip_bytes", static_cast<double>(gz.body_bytes), "B");
  Report(k + "peak_rss_per_series", (peak - base) / std::max(1.0, series), "B");
  Report(k + "rss_after_per_series", (trimmed - base) / std::max(1.0, series), "B");
  return ok;
}

// A burst: an exporter that serves 1k series serves 50k for a few scrapes (a node
// filled up, a cardinality bug), then 1k again. What the burst made resident must go
// back: the RSS after it, as the exporter leaves it (no malloc_trim by the benchmark).
bool Burst(int scrapes) {
  constexpr int kSmallPods = 6, kBigPods = 314;
  Exporter exporter(kBigPods);
  if (!exporter.ok()) return false;
  const Recorded small(kSmallPods);
  Recorded big(kBigPods);
  exporter.gatherer().Use(&small);
  bool ok = true;
  for (int i = 0; i < scrapes; ++i) ok = Scrape(exporter.port(), i % 2 == 1).ok && ok;
  const long before = RssBytes();
  ResetPeak();
  exporter.gatherer().Use(&big);
  for (int i = 0; i < scrapes; ++i) ok = Scrape(exporter.port(), i % 2 == 1).ok && ok;
  const long peak = StatusKb("VmHWM:") * 1024;
  exporter.gatherer().Use(&small);
  for (int i = 0; i < scrapes; ++i) ok = Scrape(exporter.port(), i % 2 == 1).ok && ok;
  const long after = RssBytes();
  std::printf(
      "burst 1k -> 50k -> 1k series: RSS %.1f MiB before, %.1f MiB at the peak, %.1f MiB "
      "after (%+.1f MiB)%s\n",
      before / 1048576.0, peak / 1048576.0, after / 1048576.0, (after - before) / 1048576.0,
      ok ? "" : "  FAILED SCRAPES");
  Report("burst.rss_before_mib", before / 1048576.0, "MiB");
  Report("burst.rss_peak_mib", peak / 1048576.0, "MiB");
  Report("burst.rss_after_mib", after / 1048576.0, "MiB");
  return ok;
}

// A per-CPU hash of the syscalls layout holding `entries`, read whole: the map read
// and the entry count of the self-metrics, at two capacities.
void MapReadCost(int entries, int reps) {
  for (uint32_t max_entries : {16384u, 262144u}) {
    int fd = bpf_map_create(BPF_MAP_TYPE_PERCPU_HASH, "kmon_bench", sizeof(syscall_key),
                            sizeof(syscall_value), max_entries, nullptr);
    if (fd < 0) {
      std::printf("map read: bpf_map_create: %s (skipped; needs root)\n", std::strerror(errno));
      return;
    }
    std::vector<syscall_value> per_cpu(PossibleCpus(), syscall_value{1, 0});
    for (int i = 0; i < entries; ++i) {
      syscall_key k{.cgroup_id = static_cast<uint64_t>(i / 8), .nr = static_cast<uint32_t>(i % 8)};
      bpf_map_update_elem(fd, &k, per_cpu.data(), BPF_ANY);
    }
    std::vector<double> read_ms, count_ms;
    for (int r = 0; r < reps; ++r) {
      std::vector<SyscallCount> rows;
      auto t0 = Clock::now();
      absl::Status st = ReadPerCpuHashAs<syscall_key, syscall_value>(
          fd,
          [](const syscall_key& k, std::span<const syscall_value> v) {
            SyscallCount c{.cgroup_id = k.cgroup_id, .nr = static_cast<int>(k.nr)};
            for (const auto& x : v) c.count += x.count;
            return c;
          },
          &rows);
      read_ms.push_back(Ms(Clock::now() - t0));
      if (!st.ok() || rows.size() != static_cast<size_t>(entries)) {
        std::printf("map read: %s, %zu rows\n", st.ToString().c_str(), rows.size());
      }
      t0 = Clock::now();
      CountHashEntries(fd, max_entries, sizeof(syscall_key), sizeof(syscall_value) * PossibleCpus())
          .IgnoreError();
      count_ms.push_back(Ms(Clock::now() - t0));
    }
    close(fd);
    std::printf("map read: %d entries in a map of %u: read %.2f ms, count %.2f ms\n", entries,
                max_entries, Median(read_ms), Median(count_ms));
    const std::string k = "map_read." + std::to_string(max_entries / 1024) + "k_max.";
    for (size_t i = 0; i < read_ms.size(); ++i) {
      Report(k + "read_ms", read_ms[i], "ms");
      Report(k + "count_ms", count_ms[i], "ms");
    }
  }
}

}  // namespace
}  // namespace kmon

int main(int argc, char** argv) {
  std::vector<int> sizes{1000, 10000, 50000};
  int scrapes = 10;
  bool burst = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--sizes=", 0) == 0) {
      sizes.clear();
      for (absl::string_view s : absl::StrSplit(a.substr(8), ',')) {
        int n = 0;
        if (absl::SimpleAtoi(s, &n) && n > 0) sizes.push_back(n);
      }
    } else if (a == "--no-burst") {
      burst = false;
    } else if (a.rfind("--scrapes=", 0) == 0) {
      scrapes = std::max(1, std::atoi(a.c_str() + 10));
    } else {
      std::fprintf(stderr, "usage: %s [--sizes=1000,10000,50000] [--scrapes=N] [--no-burst]\n",
                   argv[0]);
      return 2;
    }
  }
  kmon::ConfigureLogging(kmon::LogLevel::kWarn, kmon::LogFormat::kLogfmt);
  kmon::TuneMallocForExporter();  // as kmon_exporter does
  bool ok = true;
  for (int n : sizes) ok = kmon::RunSize(n, scrapes) && ok;
  if (burst) ok = kmon::Burst(std::max(2, scrapes / 2)) && ok;
  kmon::MapReadCost(8000, 20);
  return ok ? 0 : 1;
}
