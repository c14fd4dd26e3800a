// Benchmark: what the blockio collector costs an I/O-bound workload. fio does 4 KiB
// O_DIRECT random reads (psync, queue depth 1) with and without the collector
// attached, in alternating rounds, and the ratio of IOPS is reported, on two targets:
//
//   - a file on the disk holding /var/tmp (a real block device: the usual case);
//   - a loop device over a file in the page cache: the fastest "disk" a machine has
//     (no media, a few microseconds per request), which shows the per-request cost
//     of the hooks at its largest.
//
// Then the kernel side's own cost per request, measured by the kernel itself
// (BPF_ENABLE_STATS run time of each program of the object over one fio run, which
// adds a little of its own): steadier than IOPS on a shared machine, though cache
// misses under others' load raise it too.
//
//   build/tests/blockio_overhead [seconds_per_run] [rounds]
//
// Rounds go without/with, then with/without (ABBA), so drift on a shared machine
// hits both sides alike; medians are reported. Needs root, fio and losetup (Debian
// packages fio, mount). The defaults (2 s x 4 rounds) take under 50 s in all; runs
// longer than kMaxSeconds in total are refused. Its files and loop device are
// removed at exit. Exit status 1 when something failed to run, not when the ratio
// misses its target (a shared machine is too noisy for that to be a verdict).
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
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collectors/blockio.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/bench/bench_util.h"

namespace {

using kmon::bench::Report;

// Upper bound of the whole run: fio time plus some for setup.
constexpr int kMaxSeconds = 60;

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
  std::string cmd = "fio --name=r --filename=" + target +
                    " --rw=randread --bs=4k --direct=1 --ioengine=psync --runtime=" +
                    std::to_string(seconds) + " --time_based --output-format=json 2>/dev/null";
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

// run_time_ns and run_cnt of each loaded program of `obj`, by name.
std::map<std::string, std::pair<uint64_t, uint64_t>> RunTimes(const bpf_object* obj) {
  std::map<std::string, std::pair<uint64_t, uint64_t>> out;
  bpf_program* prog;
  bpf_object__for_each_program(prog, const_cast<bpf_object*>(obj)) {
    int fd = bpf_program__fd(prog);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) {
      out[bpf_program__name(prog)] = {info.run_time_ns, info.run_cnt};
    }
  }
  return out;
}

struct Setup {
  kmon::WorkloadResolver* workloads;
  kmon::WatchedCgroups* watched;
  kmon::Config config;
};

// One target: rounds of fio without and with the collector, then the kernel side's
// cost per request. False when something failed.
bool Measure(const Setup& s, const std::string& label, const std::string& target, int seconds,
             int rounds) {
  Fio(target, 1);  // warm up
  std::vector<double> without, with, ratios;
  for (int r = 0; r < rounds; ++r) {
    double base = -1, kmon = -1;
    for (int half = 0; half < 2; ++half) {
      const bool attached = (r % 2 == 0) == (half == 1);
      if (!attached) {
        base = Fio(target, seconds).iops;
        continue;
      }
      kmon::BlockioCollector c({.workloads = s.workloads, .watched = s.watched});
      absl::Status st = c.Start(s.config);
      if (!st.ok()) {
        std::fprintf(stderr, "blockio collector: %s\n", st.ToString().c_str());
        return false;
      }
      kmon = Fio(target, seconds).iops;
      c.Stop();
    }
    if (base <= 0 || kmon <= 0) {
      std::fprintf(stderr, "blockio_overhead: %s\n",
                   g_stop ? "stopped by a signal" : ("fio on " + target + " failed").c_str());
      return false;
    }
    without.push_back(base);
    with.push_back(kmon);
    ratios.push_back(kmon / base);
  }

  // The kernel's own account of the programs' run time over one run.
  double ns_per_io = -1;
  std::string per_prog;
  {
    kmon::BlockioCollector c({.workloads = s.workloads, .watched = s.watched});
    int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    if (stats_fd >= 0 && c.Start(s.config).ok()) {
      const auto before = RunTimes(c.BpfObject());
      FioResult f = Fio(target, seconds);
      const auto after = RunTimes(c.BpfObject());
      if (f.ios > 0) {
        uint64_t total = 0;
        for (const auto& [name, a] : after) {
          auto b = before.count(name) ? before.at(name) : std::pair<uint64_t, uint64_t>{0, 0};
          const uint64_t ns = a.first - b.first, runs = a.second - b.second;
          total += ns;
          if (runs == 0) continue;
          char part[128];
          std::snprintf(part, sizeof part, " %s %.0f ns x %.2f/request;", name.c_str(),
                        static_cast<double>(ns) / static_cast<double>(runs),
                        static_cast<double>(runs) / f.ios);
          per_prog += part;
        }
        ns_per_io = static_cast<double>(total) / f.ios;
      }
    }
    c.Stop();
    if (stats_fd >= 0) close(stats_fd);
  }

  const double b = Median(without);
  std::printf("%s (%s), %d s x %d rounds, medians:\n", label.c_str(), target.c_str(), seconds,
              rounds);
  std::printf("  without blockio : %9.0f IOPS (%.1f us per request)\n", b, 1e6 / b);
  std::printf("  with blockio    : %9.0f IOPS\n", Median(with));
  const double ratio = Median(ratios);
  std::printf("  with / without  = %.3f (target >= 0.98: %s); rounds:", ratio,
              ratio >= 0.98 ? "met" : "NOT met");
  for (double r : ratios) std::printf(" %.3f", r);
  std::printf("\n");
  const std::string key =
      "blockio_overhead." + std::string(target.rfind("/dev/loop", 0) == 0 ? "loop" : "disk");
  for (size_t r = 0; r < ratios.size(); ++r) {
    Report(key + ".iops_without", without[r], "IOPS");
    Report(key + ".ratio_with_without", ratios[r], "x");
  }
  if (ns_per_io > 0) Report(key + ".bpf_ns_per_request", ns_per_io, "ns");
  if (ns_per_io > 0) {
    std::printf("  kernel side     : %.0f ns of BPF per request = %.2f%% of a request's time\n",
                ns_per_io, 100.0 * ns_per_io / (1e9 / b));
    std::printf("   per program   :%s\n", per_prog.c_str());
  }
  return true;
}

// Whether `path` lives on a block device the kernel has in sysfs (not tmpfs/overlay).
bool OnBlockDevice(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  std::string sys = "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" +
                    std::to_string(minor(st.st_dev));
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
  // Per target: a 1 s warm-up, 2 runs per round, one run with run-time stats.
  const int fio_seconds = 2 * (1 + (2 * rounds + 1) * seconds);
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
