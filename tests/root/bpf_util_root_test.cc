// Reading and counting hash maps in batches, against the running kernel's maps: every
// entry once, whether the map fits one batch or needs many, per-CPU or not.
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

#include "bpf/syscalls.h"
#include "collectors/bpf_util.h"
#include "tests/root/root_util.h"

namespace kmon {
namespace {

struct Row {
  uint64_t cgroup_id;
  uint32_t nr;
  uint64_t count;
};

class MapFd {
 public:
  MapFd(bpf_map_type type, uint32_t value_size, uint32_t max_entries)
      : fd_(bpf_map_create(type, "kmon_test", sizeof(syscall_key), value_size, max_entries,
                           nullptr)) {}
  ~MapFd() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

TEST(BpfUtilRootTest, ReadsAndCountsEveryEntryOnceAtAnyFill) {
  KMON_REQUIRE_ROOT();
  const int cpus = PossibleCpus();
  for (int entries : {0, 1, 300, 1024, 1025, 5000}) {
    MapFd map(BPF_MAP_TYPE_PERCPU_HASH, sizeof(syscall_value), 16384);
    ASSERT_GE(map.fd(), 0) << std::strerror(errno);
    std::vector<syscall_value> per_cpu(cpus);
    for (int c = 0; c < cpus; ++c) per_cpu[c] = {static_cast<uint64_t>(c + 1), 0};
    for (int i = 0; i < entries; ++i) {
      syscall_key k{.cgroup_id = static_cast<uint64_t>(i / 8), .nr = static_cast<uint32_t>(i % 8)};
      ASSERT_EQ(bpf_map_update_elem(map.fd(), &k, per_cpu.data(), BPF_ANY), 0);
    }
    std::vector<Row> rows;
    ASSERT_TRUE((ReadPerCpuHashAs<syscall_key, syscall_value>(
                     map.fd(),
                     [](const syscall_key& k, std::span<const syscall_value> v) {
                       Row r{k.cgroup_id, k.nr, 0};
                       for (const auto& x : v) r.count += x.count;
                       return r;
                     },
                     &rows))
                    .ok());
    ASSERT_EQ(rows.size(), static_cast<size_t>(entries));
    std::set<std::pair<uint64_t, uint32_t>> keys;
    for (const Row& r : rows) {
      keys.insert({r.cgroup_id, r.nr});
      EXPECT_EQ(r.count, static_cast<uint64_t>(cpus * (cpus + 1) / 2));
    }
    EXPECT_EQ(keys.size(), static_cast<size_t>(entries)) << "each key once";
    absl::StatusOr<uint64_t> n =
        CountHashEntries(map.fd(), 16384, sizeof(syscall_key), sizeof(syscall_value) * cpus);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, static_cast<uint64_t>(entries));
  }
  // A plain hash, counted with its own value size.
  MapFd plain(BPF_MAP_TYPE_HASH, sizeof(uint64_t), 4096);
  ASSERT_GE(plain.fd(), 0);
  for (uint64_t i = 0; i < 2000; ++i) {
    syscall_key k{.cgroup_id = i};
    ASSERT_EQ(bpf_map_update_elem(plain.fd(), &k, &i, BPF_ANY), 0);
  }
  absl::StatusOr<uint64_t> n = CountHashEntries(plain.fd(), 4096, sizeof(syscall_key), 8);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2000u);
}

}  // namespace
}  // namespace kmon
