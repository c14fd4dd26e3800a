// The kernel memory of BPF maps as kmon reports it, and the one watched-cgroups map
// every collector's object shares.
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "collectors/bpf_util.h"
#include "tests/root/root_util.h"

namespace kmon {
namespace {

using testing::ExporterProcess;
using testing::SampleValue;

bool IsMapFd(int fd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("map_id:", 0) == 0) return true;
  }
  return false;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// What the kernel's accounting must hold at least: a preallocated per-CPU hash has
// a value slot per entry and possible CPU from its creation; one without
// preallocation grows by at least that much per key inserted.
TEST(MapMemoryRootTest, KernelFiguresFollowPreallocationAndKeys) {
  KMON_REQUIRE_ROOT();
  const uint64_t cpus = PossibleCpus();
  Fd pre(bpf_map_create(BPF_MAP_TYPE_PERCPU_HASH, "kmon_test", 8, 48, 4096, nullptr));
  ASSERT_GE(pre.get(), 0) << std::strerror(errno);
  EXPECT_GE(MapMemoryBytes(pre.get()), 4096 * 48 * cpus);

  LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = BPF_F_NO_PREALLOC);
  Fd lazy(bpf_map_create(BPF_MAP_TYPE_PERCPU_HASH, "kmon_test", 8, 48, 4096, &opts));
  ASSERT_GE(lazy.get(), 0) << std::strerror(errno);
  const uint64_t empty = MapMemoryBytes(lazy.get());
  EXPECT_GT(empty, 0u);
  EXPECT_LT(empty, 4096 * 48 * cpus) << "nothing preallocated";
  std::vector<uint8_t> value(48 * cpus);
  for (uint64_t k = 0; k < 1000; ++k) {
    ASSERT_EQ(bpf_map_update_elem(lazy.get(), &k, value.data(), BPF_NOEXIST), 0);
  }
  EXPECT_GE(MapMemoryBytes(lazy.get()), empty + 1000 * 48 * cpus);
  EXPECT_EQ(MapMemoryBytes(-1), 0u);
}

// The exporter at defaults: filter_config and watched_cgroups are one map each,
// whatever the number of collectors, reported once under collector="shared"; every
// map of every collector has its memory in kmon_bpf_map_memory_bytes.
TEST(MapMemoryRootTest, EveryCollectorSharesOneWatchedCgroupsMap) {
  KMON_REQUIRE_ROOT();
  ExporterProcess exporter({});
  ASSERT_TRUE(exporter.WaitReady());
  const std::string text = exporter.Scrape();

  // The exporter's own fds, read through pidfd_getfd: every map named
  // watched_cgroups (or filter_config) it holds is the same kernel map.
  Fd pidfd(static_cast<int>(syscall(SYS_pidfd_open, exporter.pid(), 0)));
  ASSERT_GE(pidfd.get(), 0) << std::strerror(errno);
  std::map<std::string, std::set<uint32_t>> ids;
  int fds_seen = 0;
  for (int target = 0; target < 4096; ++target) {
    Fd fd(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), target, 0)));
    if (fd.get() < 0) continue;
    // bpf_obj_get_info_by_fd answers for programs, links and BTF too: maps only.
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (!IsMapFd(fd.get()) || bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) continue;
    ids[info.name].insert(info.id);
    ++fds_seen;
  }
  ASSERT_GT(fds_seen, 0);
  EXPECT_EQ(ids["watched_cgroups"].size(), 1u);
  EXPECT_EQ(ids["filter_config"].size(), 1u);
  // Several collectors' objects, each with a map named `lost`: they are many.
  EXPECT_GE(ids["lost"].size(), 5u);

  for (const char* map : {"watched_cgroups", "filter_config"}) {
    auto shared =
        SampleValue(text, "kmon_bpf_map_memory_bytes", {{"collector", "shared"}, {"map", map}});
    ASSERT_TRUE(shared.has_value()) << map;
    EXPECT_GT(*shared, 0);
    for (const char* c : {"tcp", "drops", "blockio", "cpu", "dns", "pagecache"}) {
      EXPECT_FALSE(SampleValue(text, "kmon_bpf_map_memory_bytes", {{"collector", c}, {"map", map}}))
          << c << " reports the shared " << map << " again";
    }
  }
  // Each collector's own data maps carry their memory.
  for (const char* c : {"tcp", "drops", "blockio", "cpu", "dns", "pagecache"}) {
    auto lost = SampleValue(text, "kmon_bpf_map_memory_bytes", {{"collector", c}, {"map", "lost"}});
    ASSERT_TRUE(lost.has_value()) << c;
    EXPECT_GT(*lost, 0) << c;
  }
}

}  // namespace
}  // namespace kmon
