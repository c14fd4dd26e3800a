// Benchmark: the kernel memory of kmon's BPF maps, here and projected to bigger
// nodes. The real kmon_exporter runs at its default config (plus any --collector.X
// given) while nginx + wrk load loopback for a few seconds, so the maps hold what a
// serving node's do; then every map the exporter holds is read from its fds
// (pidfd_getfd): type, sizes, flags, entries, and the memory the kernel reports.
//
//   build/tests/map_memory [load seconds] [exporter flags...]
//
// The projection to N CPUs replaces the per-CPU part of each map: for per-CPU maps
// that part is (entries allocated) x round_up(value_size, 8) x possible CPUs, where
// a preallocated map allocates max_entries at creation and a BPF_F_NO_PREALLOC one
// only the keys present (so its projection holds for this many workloads). Other
// maps' per-CPU parts (free lists, LRU lists, one spare element per CPU) are small
// and left as measured. Target: <= 64 MiB at 128 CPUs with all default collectors.
#include <bpf/bpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "collectors/bpf_util.h"
#include "tests/bench/bench_util.h"

#ifndef KMON_EXPORTER_BIN
#define KMON_EXPORTER_BIN "build/kmon_exporter"
#endif

namespace {

using kmon::bench::Report;

struct MapRow {
  std::string name, owner;
  uint32_t type = 0, value_size = 0, max_entries = 0, flags = 0;
  uint64_t entries = 0, memlock = 0;
};

bool PerCpu(uint32_t t) {
  return t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_PERCPU_ARRAY ||
         t == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}
bool Hash(uint32_t t) {
  return t == BPF_MAP_TYPE_HASH || t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_LRU_HASH ||
         t == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}
const char* TypeName(uint32_t t) {
  switch (t) {
    case BPF_MAP_TYPE_HASH:
      return "hash";
    case BPF_MAP_TYPE_ARRAY:
      return "array";
    case BPF_MAP_TYPE_PERCPU_HASH:
      return "percpu_hash";
    case BPF_MAP_TYPE_PERCPU_ARRAY:
      return "percpu_array";
    case BPF_MAP_TYPE_STACK_TRACE:
      return "stack_trace";
    case BPF_MAP_TYPE_LRU_HASH:
      return "lru_hash";
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
      return "lru_percpu_hash";
    case BPF_MAP_TYPE_SK_STORAGE:
      return "sk_storage";
    case BPF_MAP_TYPE_TASK_STORAGE:
      return "task_storage";
    case BPF_MAP_TYPE_RINGBUF:
      return "ringbuf";
    default:
      return "other";
  }
}

// A line of this process's fdinfo of `fd` ("memlock:", "map_id:", "prog_id:"), or "".
std::string FdInfo(int fd, const std::string& key) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return line.substr(key.size());
  }
  return "";
}

// The exporter's BPF maps (once each, by id) with the first program using each.
std::vector<MapRow> ReadMaps(pid_t pid) {
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    std::perror("map_memory: pidfd_open");
    return {};
  }
  std::map<uint32_t, MapRow> maps;
  std::map<uint32_t, std::string> owner;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  for (dirent* e; d != nullptr && (e = readdir(d)) != nullptr;) {
    if (e->d_name[0] == '.') continue;
    const int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, std::atoi(e->d_name), 0));
    if (fd < 0) continue;
    const bool is_map = !FdInfo(fd, "map_id:").empty();
    const bool is_prog = !FdInfo(fd, "prog_id:").empty();
    bpf_map_info mi{};
    uint32_t len = sizeof mi;
    if (is_map && bpf_obj_get_info_by_fd(fd, &mi, &len) == 0 && !maps.count(mi.id)) {
      MapRow r{mi.name,        "",           mi.type, mi.value_size,
               mi.max_entries, mi.map_flags, 0,       kmon::MapMemoryBytes(fd)};
      if (Hash(mi.type)) {
        std::vector<uint8_t> key(mi.key_size), next(mi.key_size);
        for (void* prev = nullptr; bpf_map_get_next_key(fd, prev, next.data()) == 0;
             prev = key.data()) {
          key.swap(next);
          ++r.entries;
        }
      } else {
        r.entries = mi.max_entries;
      }
      maps[mi.id] = r;
    }
    bpf_prog_info pi{};
    len = sizeof pi;
    if (is_prog && bpf_obj_get_info_by_fd(fd, &pi, &len) == 0 && pi.nr_map_ids > 0) {
      std::vector<uint32_t> ids(pi.nr_map_ids);
      bpf_prog_info again{};
      again.nr_map_ids = pi.nr_map_ids;
      again.map_ids = reinterpret_cast<uint64_t>(ids.data());
      len = sizeof again;
      if (bpf_obj_get_info_by_fd(fd, &again, &len) == 0) {
        for (uint32_t id : ids) owner.emplace(id, pi.name);
      }
    }
    close(fd);
  }
  if (d != nullptr) closedir(d);
  close(pidfd);
  std::vector<MapRow> out;
  for (auto& [id, r] : maps) {
    if (r.name.find(".rodata") != std::string::npos || r.name.find(".bss") != std::string::npos ||
        r.name.find(".data") != std::string::npos || r.name.find(".kconfig") != std::string::npos) {
      continue;  // libbpf's internal maps: a page each
    }
    r.owner = owner.count(id) ? owner[id] : "(shared)";
    out.push_back(r);
  }
  return out;
}

int PossibleCpus() {
  std::ifstream in("/sys/devices/system/cpu/possible");
  std::string s;
  std::getline(in, s);  // "0-1" or "0"
  const size_t dash = s.find('-');
  return dash == std::string::npos ? 1 : std::atoi(s.c_str() + dash + 1) + 1;
}

// `full`: as if every per-CPU map held max_entries keys (a node with as many
// workloads as the maps have room for).
uint64_t Projected(const MapRow& r, int cpus_here, int cpus, bool full = false) {
  if (!PerCpu(r.type)) return r.memlock;
  const bool prealloc = r.type == BPF_MAP_TYPE_PERCPU_ARRAY || !(r.flags & BPF_F_NO_PREALLOC);
  if (full && !prealloc) {
    return r.memlock + static_cast<uint64_t>(r.max_entries) * ((r.value_size + 7) / 8 * 8) * cpus;
  }
  const uint64_t n = prealloc ? r.max_entries : r.entries;
  const uint64_t per_cpu = n * ((r.value_size + 7) / 8 * 8);
  const uint64_t here = per_cpu * cpus_here;
  return (r.memlock > here ? r.memlock - here : 0) + per_cpu * cpus;
}

}  // namespace

int main(int argc, char** argv) {
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 5;
  if (geteuid() != 0) {
    std::fprintf(stderr, "map_memory: needs root\n");
    return 1;
  }
  kmon::bench::Nginx nginx(/*cpu=*/1);
  if (!nginx.ok()) return 1;
  const int port = 30000 + getpid() % 1000;
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string listen = "--web.listen-address=127.0.0.1:" + std::to_string(port);
    std::vector<const char*> args{KMON_EXPORTER_BIN, listen.c_str(), "--log.level=warn"};
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execv(args[0], const_cast<char* const*>(args.data()));
    _exit(127);
  }
  bool ready = false;
  for (int i = 0; i < 300 && !ready; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ready = kmon::bench::HttpGet(port, "/-/ready", {}).ok;
  }
  std::vector<MapRow> maps;
  if (ready) {
    kmon::bench::Wrk(nginx.port(), seconds, /*cpu=*/0);
    kmon::bench::HttpGet(port, "/metrics", {});
    maps = ReadMaps(pid);
  } else {
    std::fprintf(stderr, "map_memory: the exporter did not become ready on port %d\n", port);
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  if (maps.empty()) return 1;

  const int here = PossibleCpus();
  std::sort(maps.begin(), maps.end(), [&](const MapRow& a, const MapRow& b) {
    return Projected(a, here, 128) > Projected(b, here, 128);
  });
  std::printf("BPF maps of kmon_exporter (%s), %d possible CPUs here\n",
              argc > 2 ? "defaults + flags" : "defaults", here);
  std::printf("  %-16s %-16s %-15s %8s %6s %7s %10s %10s %10s\n", "map", "used by", "type", "max",
              "value", "entries", "KiB here", "KiB @64", "KiB @128");
  uint64_t total_here = 0, total_64 = 0, total_128 = 0, total_128_full = 0;
  for (const MapRow& r : maps) {
    const uint64_t p64 = Projected(r, here, 64), p128 = Projected(r, here, 128);
    total_here += r.memlock;
    total_64 += p64;
    total_128 += p128;
    total_128_full += Projected(r, here, 128, /*full=*/true);
    std::printf("  %-16s %-16s %-15s %8u %6u %7llu %10.0f %10.0f %10.0f%s\n", r.name.c_str(),
                r.owner.c_str(), TypeName(r.type), r.max_entries, r.value_size,
                static_cast<unsigned long long>(r.entries), r.memlock / 1024.0, p64 / 1024.0,
                p128 / 1024.0, (r.flags & BPF_F_NO_PREALLOC) ? "  (no prealloc)" : "");
  }
  std::printf(
      "  total: %.1f MiB here, %.1f MiB projected at 64 CPUs, %.1f MiB at 128 CPUs "
      "(target <= 64 MiB)\n",
      total_here / 1048576.0, total_64 / 1048576.0, total_128 / 1048576.0);
  std::printf("  every per-CPU map full (max_entries keys each) at 128 CPUs: %.1f MiB\n",
              total_128_full / 1048576.0);
  Report("map_memory.maps", static_cast<double>(maps.size()), "maps");
  Report("map_memory.total_here_mib", total_here / 1048576.0, "MiB");
  Report("map_memory.projected_64cpu_mib", total_64 / 1048576.0, "MiB");
  Report("map_memory.projected_128cpu_mib", total_128 / 1048576.0, "MiB");
  Report("map_memory.projected_128cpu_full_mib", total_128_full / 1048576.0, "MiB");
  return 0;
}
