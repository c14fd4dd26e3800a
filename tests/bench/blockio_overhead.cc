// Benchmark: what the blockio collector costs an I/O-bound workload. fio does 4 KiB
// O_DIRECT random reads (psync, queue depth 1) three ways, in alternating rounds:
// with nothing attached, with the floor (tests/bench/floor.h: an empty program on
// each of the five block-layer hooks the collector can use), and with the
// collector; the IOPS ratios are reported, on two targets:
//
//   - a file on the disk holding /var/tmp (a real block device: the usual case);
//   - a loop device over a file in the page cache: the fastest "disk" a machine has
//     (no media, a few microseconds per request), which shows the per-request cost
//     of the hooks at its largest.
//
// Then the kernel side's own cost per request, measured by the kernel itself
// (BPF_ENABLE_STATS run time of each program over one fio run, which adds a little
// of its own), for the floor and for the collector: steadier than IOPS on a shared
// machine, though cache misses under others' load raise it too. And the kernel
// memory of the collector's maps (fdinfo "memlock", what `bpftool map show` prints),
// here and projected at 128 CPUs.
//
//   build/tests/blockio_overhead [seconds_per_run] [rounds]
//
// Each round runs the three in a rotated order (nothing, floor, kmon; then floor,
// kmon, nothing; ...), so drift on a shared machine hits all alike; medians are
// reported. Needs root, fio and losetup (Debian packages fio, mount). The defaults
// (2 s x 4 rounds) take about 70 s in all; runs longer than kMaxSeconds in total are
// refused. Its files and loop device are removed at exit. Exit status 1 when
// something failed to run, not when a ratio misses its target (a shared machine is
// too noisy for that to be a verdict).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "collectors/blockio.h"
#include "collectors/bpf_util.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/floor.h"

namespace {

using kmon::bench::Report;

// Upper bound of the whole run: fio time plus some for setup.
constexpr int kMaxSeconds = 120;

// Set by SIGINT/SIGTERM: the run stops after the current fio and main() returns,
// so the loop device and the data file are removed all the same.
volatile sig_atomic_t g_stop = 0;
void OnStop(int) { g_stop = 1; }

// A 128 MiB file of random data under /var/tmp (real data, not a sparse file:
// reads of holes would skip the disk); removed at exit, also when filling failed.
class DataFile {
 public:
  DataFile() {
    char tmpl[] = "/var/tmp/kmon-bench-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) return;
    close(fd);
    created_ = tmpl;
    std::string fill = "head -c 134217728 /dev/urandom > " + created_ + " && sync " + created_;
    if (std::system(fill.c_str()) == 0) path_ = created_;
  }
  ~DataFile() {
    if (!created_.empty()) unlink(created_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string created_, path_;
};

// A loop device over `file`; detached at exit.
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& file) {
    FILE* p = popen(("losetup -f --show " + file).c_str(), "r");
    if (p == nullptr) return;
    char line[256] = {};
    if (fgets(line, sizeof line, p) != nullptr) path_ = line;
    if (pclose(p) != 0) path_.clear();
    while (!path_.empty() && path_.back() == '\n') path_.pop_back();
  }
  ~LoopDevice() {
    if (!path_.empty() && std::system(("losetup -d " + path_).c_str()) != 0) {
      std::fprintf(stderr, "losetup -d %s failed\n", path_.c_str());
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct FioResult {
  double iops = -1;  // negative: fio failed
  double ios = 0;
};

FioResult Fio(const std::string& target, int seconds) {
  if (g_stop) return {};
  std::string cmd =
      "fio --name=r --filename=" + target +
      " --rw=randread --bs=4k --direct=1 --ioengine=psync --runtime=" + std::to_string(seconds) +
      " --time_based --output-format=json 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return {};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (pclose(p) != 0) return {};
  try {
    auto read = nlohmann::json::parse(out).at("jobs").at(0).at("read");
    return {read.at("iops").get<double>(), read.at("total_ios").get<double>()};
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fio output not understood: %s\n", e.what());
    return {};
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// run_time_ns and run_cnt of each BPF program in the system, by id.
struct ProgRun {
  std::string name;
  uint64_t ns = 0, runs = 0;
};
std::map<uint32_t, ProgRun> RunTimes() {
  std::map<uint32_t, ProgRun> out;
  uint32_t id = 0;
  while (bpf_prog_get_next_id(id, &id) == 0) {
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) {
      out[id] = {info.name, info.run_time_ns, info.run_cnt};
    }
    close(fd);
  }
  return out;
}

// The highest BPF program id in use: programs loaded later have higher ids.
uint32_t MaxProgId() {
  uint32_t id = 0, last = 0;
  while (bpf_prog_get_next_id(id, &id) == 0) last = id;
  return last;
}

// Loaded while alive: nothing, the floor or the collector.
enum class Mode { kNothing, kFloor, kKmon };
const char* ModeName(Mode m) {
  return m == Mode::kNothing ? "nothing" : m == Mode::kFloor ? "floor" : "blockio";
}

struct Setup {
  kmon::WorkloadResolver* workloads;
  kmon::WatchedCgroups* watched;
  kmon::Config config;
};

// What a mode attaches, for as long as it lives, and the ids of its programs.
class Attached {
 public:
  Attached(const Setup& s, Mode m) {
    const uint32_t first_id = MaxProgId() + 1;
    if (m == Mode::kFloor) {
      floor_ = std::make_unique<kmon::bench::Floor>(std::set<std::string>{
          "floor_block_io_start", "floor_block_rq_insert", "floor_block_rq_issue",
          "floor_block_rq_merge", "floor_block_rq_complete"});
      ok_ = floor_->ok();
      // Loaded meanwhile under the floor's names (cut to 15 characters by the kernel);
      // others' programs loaded at the same time have other names.
      for (const auto& [id, r] : RunTimes()) {
        if (id >= first_id && id <= MaxProgId() && r.name.rfind("floor_block_", 0) == 0) {
          ids_.insert(id);
        }
      }
    } else if (m == Mode::kKmon) {
      kmon_ = std::make_unique<kmon::BlockioCollector>(
          kmon::CollectorDeps{.workloads = s.workloads, .watched = s.watched});
      absl::Status st = kmon_->Start(s.config);
      if (!st.ok()) std::fprintf(stderr, "blockio collector: %s\n", st.ToString().c_str());
      ok_ = st.ok();
      bpf_program* prog;
      bpf_object__for_each_program(prog, const_cast<bpf_object*>(kmon_->BpfObject())) {
        bpf_prog_info info{};
        uint32_t len = sizeof info;
        const int fd = bpf_program__fd(prog);
        if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &info, &len) == 0) ids_.insert(info.id);
      }
    }
  }
  ~Attached() {
    if (kmon_) kmon_->Stop();
  }
  bool ok() const { return ok_; }
  const std::set<uint32_t>& ids() const { return ids_; }
  const kmon::BlockioCollector* kmon() const { return kmon_.get(); }

 private:
  bool ok_ = true;
  std::set<uint32_t> ids_;
  std::unique_ptr<kmon::bench::Floor> floor_;
  std::unique_ptr<kmon::BlockioCollector> kmon_;
};

// Each map of the collector: type, max_entries, memlock here and projected at 128
// possible CPUs (a per-CPU map's values are one per possible CPU: for a
// preallocated map max_entries of them, else one per key present).
std::string MapMemory(const kmon::BlockioCollector& c) {
  std::string out;
  char line[256];
  const int cpus = libbpf_num_possible_cpus();
  uint64_t total = 0, total128 = 0;
  bpf_map* map;
  std::snprintf(line, sizeof line, "  maps (memlock here, %d possible CPUs -> projected at 128):\n",
                cpus);
  out += line;
  bpf_object__for_each_map(map, const_cast<bpf_object*>(c.BpfObject())) {
    const bpf_map_type type = bpf_map__type(map);
    const bool per_cpu = type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
                         type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
    const bool prealloc = (bpf_map__map_flags(map) & BPF_F_NO_PREALLOC) == 0;
    const uint64_t mem = kmon::MapMemoryBytes(bpf_map__fd(map));
    uint64_t values = 0;
    if (per_cpu) {
      uint64_t keys = bpf_map__max_entries(map);
      if (!prealloc) keys = kmon::CountMapEntries(map).value_or(keys);
      values = keys * ((bpf_map__value_size(map) + 7) / 8 * 8);
    }
    const uint64_t mem128 = mem + values * static_cast<uint64_t>(128 - cpus);
    std::snprintf(line, sizeof line, "    %-14s %-13s %6u entries%-14s %9llu B -> %10llu B\n",
                  bpf_map__name(map), libbpf_bpf_map_type_str(type), bpf_map__max_entries(map),
                  prealloc ? "" : " (no prealloc)", static_cast<unsigned long long>(mem),
                  static_cast<unsigned long long>(mem128));
    out += line;
    Report(std::string("blockio_overhead.map_bytes.") + bpf_map__name(map), mem, "B");
    total += mem;
    total128 += mem128;
  }
  std::snprintf(line, sizeof line, "    %-50s %9llu B -> %10llu B\n", "total",
                static_cast<unsigned long long>(total), static_cast<unsigned long long>(total128));
  out += line;
  Report("blockio_overhead.map_bytes_total", total, "B");
  Report("blockio_overhead.map_bytes_total_at_128_cpus", total128, "B");
  return out;
}

// BPF ns per request of what `m` attaches, over one fio run with run-time stats on;
// `per_prog` gets each program's ns per run and runs per request, `maps` the
// collector's map memory after the run. -1 on failure.
double BpfNsPerRequest(const Setup& s, Mode m, const std::string& target, int seconds,
                       std::string* per_prog, std::string* maps) {
  int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (stats_fd < 0) return -1;
  double ns_per_io = -1;
  {
    Attached a(s, m);
    if (a.ok()) {
      const auto before = RunTimes();
      FioResult f = Fio(target, seconds);
      const auto after = RunTimes();
      if (f.ios > 0) {
        uint64_t total = 0;
        for (const auto& [id, r] : after) {
          if (!a.ids().count(id)) continue;  // not ours
          const ProgRun b = before.count(id) ? before.at(id) : ProgRun{};
          const uint64_t ns = r.ns - b.ns, runs = r.runs - b.runs;
          total += ns;
          if (runs == 0) continue;
          char part[128];
          std::snprintf(part, sizeof part, " %s %.0f ns x %.2f/request;", r.name.c_str(),
                        static_cast<double>(ns) / static_cast<double>(runs),
                        static_cast<double>(runs) / f.ios);
          *per_prog += part;
        }
        ns_per_io = static_cast<double>(total) / f.ios;
      }
      if (a.kmon() != nullptr) *maps = MapMemory(*a.kmon());
    }
  }
  close(stats_fd);
  return ns_per_io;
}

// One target: rounds of fio with nothing, the floor and the collector, then the
// kernel side's cost per request of the floor and the collector. False when
// something failed.
bool Measure(const Setup& s, const std::string& label, const std::string& target, int seconds,
             int rounds) {
  Fio(target, 1);  // warm up
  constexpr Mode kModes[] = {Mode::kNothing, Mode::kFloor, Mode::kKmon};
  std::map<Mode, std::vector<double>> iops;
  std::vector<double> floor_ratios, kmon_ratios;
  for (int r = 0; r < rounds; ++r) {
    std::map<Mode, double> got;
    for (int k = 0; k < 3; ++k) {
      const Mode m = kModes[(r + k) % 3];
      Attached a(s, m);
      if (!a.ok()) return false;
      got[m] = Fio(target, seconds).iops;
      if (got[m] <= 0) {
        std::fprintf(stderr, "blockio_overhead: %s\n",
                     g_stop ? "stopped by a signal" : ("fio on " + target + " failed").c_str());
        return false;
      }
    }
    for (Mode m : kModes) iops[m].push_back(got[m]);
    floor_ratios.push_back(got[Mode::kFloor] / got[Mode::kNothing]);
    kmon_ratios.push_back(got[Mode::kKmon] / got[Mode::kNothing]);
  }

  std::string floor_progs, kmon_progs, maps;
  const double floor_ns = BpfNsPerRequest(s, Mode::kFloor, target, seconds, &floor_progs, &maps);
  const double kmon_ns = BpfNsPerRequest(s, Mode::kKmon, target, seconds, &kmon_progs, &maps);

  const double b = Median(iops[Mode::kNothing]);
  std::printf("%s (%s), %d s x %d rounds, medians:\n", label.c_str(), target.c_str(), seconds,
              rounds);
  std::printf("  nothing         : %9.0f IOPS (%.1f us per request)\n", b, 1e6 / b);
  for (Mode m : {Mode::kFloor, Mode::kKmon}) {
    const std::vector<double>& ratios = m == Mode::kFloor ? floor_ratios : kmon_ratios;
    const double ratio = Median(ratios);
    std::printf("  %-15s : %9.0f IOPS, / nothing = %.3f", ModeName(m), Median(iops[m]), ratio);
    if (m == Mode::kKmon) std::printf(" (target >= 0.98: %s)", ratio >= 0.98 ? "met" : "NOT met");
    std::printf("; rounds:");
    for (double x : ratios) std::printf(" %.3f", x);
    std::printf("\n");
  }
  const std::string key =
      "blockio_overhead." + std::string(target.rfind("/dev/loop", 0) == 0 ? "loop" : "disk");
  for (int r = 0; r < rounds; ++r) {
    Report(key + ".iops_nothing", iops[Mode::kNothing][r], "IOPS");
    Report(key + ".ratio_floor_nothing", floor_ratios[r], "x");
    Report(key + ".ratio_with_without", kmon_ratios[r], "x");
  }
  for (auto [name, ns, progs] :
       {std::tuple{"floor", floor_ns, &floor_progs}, std::tuple{"blockio", kmon_ns, &kmon_progs}}) {
    if (ns <= 0) continue;
    Report(key + "." + name + "_bpf_ns_per_request", ns, "ns");
    std::printf("  BPF, %-7s   : %.0f ns per request = %.2f%% of a request's time;%s\n", name, ns,
                100.0 * ns / (1e9 / b), progs->c_str());
  }
  std::printf("%s", maps.c_str());
  return true;
}

// Whether `path` lives on a block device the kernel has in sysfs (not tmpfs/overlay).
bool OnBlockDevice(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  std::string sys =
      "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  return access(sys.c_str(), F_OK) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  struct sigaction stop {};
  stop.sa_handler = OnStop;
  sigaction(SIGINT, &stop, nullptr);
  sigaction(SIGTERM, &stop, nullptr);
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 2;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 4;
  // Per target: a 1 s warm-up, 3 runs per round, two runs with run-time stats.
  const int fio_seconds = 2 * (1 + (3 * rounds + 2) * seconds);
  if (seconds < 1 || rounds < 1 || fio_seconds > kMaxSeconds - 10) {
    std::fprintf(stderr,
                 "blockio_overhead: %d s x %d rounds would take %d s of fio; the limit is %d s\n",
                 seconds, rounds, fio_seconds, kMaxSeconds - 10);
    return 2;
  }
  const auto started = std::chrono::steady_clock::now();
  if (geteuid() != 0) {
    std::fprintf(stderr, "blockio_overhead: needs root\n");
    return 1;
  }
  if (std::system("fio --version > /dev/null 2>&1") != 0) {
    std::fprintf(stderr, "blockio_overhead: fio not found (apt-get install fio)\n");
    return 1;
  }
  DataFile file;
  if (file.path().empty()) {
    std::fprintf(stderr, "blockio_overhead: could not write a data file under /var/tmp\n");
    return 1;
  }
  auto root = kmon::DetectCgroup2Root();
  kmon::WorkloadResolver workloads(
      std::make_unique<kmon::CgroupFsPathSource>(root.value_or("/sys/fs/cgroup")), nullptr);
  kmon::WatchedCgroups watched(&workloads);
  // Every disk, every cgroup: the collector as it runs by default.
  const Setup setup{&workloads, &watched, kmon::DefaultConfig()};

  std::printf("fio 4 KiB random reads, O_DIRECT, psync (queue depth 1)\n");
  if (OnBlockDevice(file.path())) {
    if (!Measure(setup, "disk of /var/tmp", file.path(), seconds, rounds)) return 1;
  } else {
    std::printf("disk of /var/tmp: not a block device (tmpfs/overlay?), skipped\n");
  }
  LoopDevice loop(file.path());
  if (loop.path().empty()) {
    std::fprintf(stderr, "blockio_overhead: could not set up a loop device\n");
    return 1;
  }
  const bool ok = Measure(setup, "loop device on the page cache", loop.path(), seconds, rounds);
  std::printf("total %.0f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return ok ? 0 : 1;
}
