// Pure parts of the blockio collector: the kernel side's histogram slots, device
// names from a sysfs tree, and the families built from fixed kernel data.
#include "bpf/blockio.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "collectors/blockio.h"
#include "collectors/workload_labeler.h"
#include "exporter/exposition.h"
#include "provider/workload.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

TEST(BlockLatencySlotTest, SlotsAreLessOrEqualBucketsOfPowersOfTwoMicroseconds) {
  EXPECT_EQ(kmon_blk_latency_slot(0), 0u);
  EXPECT_EQ(kmon_blk_latency_slot(1), 0u);
  EXPECT_EQ(kmon_blk_latency_slot(1000), 0u);  // exactly 1us: le="1e-06"
  EXPECT_EQ(kmon_blk_latency_slot(1001), 1u);
  EXPECT_EQ(kmon_blk_latency_slot(2000), 1u);
  EXPECT_EQ(kmon_blk_latency_slot(2001), 2u);
  EXPECT_EQ(kmon_blk_latency_slot(4000), 2u);
  EXPECT_EQ(kmon_blk_latency_slot(4001), 3u);
  EXPECT_EQ(kmon_blk_latency_slot(1000000), 10u);  // 1 ms <= 1024 us
  EXPECT_EQ(kmon_blk_latency_slot(1000ull << 25), 25u);
  EXPECT_EQ(kmon_blk_latency_slot((1000ull << 25) + 1), 26u);  // +Inf
  EXPECT_EQ(kmon_blk_latency_slot(~0ull - 1000), 26u);

  // Every latency lands in the first bucket whose bound holds it.
  const std::vector<double>& bounds = BlockLatencyBounds();
  ASSERT_EQ(bounds.size(), static_cast<size_t>(KMON_BLK_LAT_BOUNDS));
  for (uint64_t ns = 1; ns < 100000000000ull; ns = ns * 3 / 2 + 7) {
    const uint32_t slot = kmon_blk_latency_slot(ns);
    const double s = static_cast<double>(ns) / 1e9;
    if (slot < KMON_BLK_LAT_BOUNDS) {
      EXPECT_LE(s, bounds[slot]) << ns;
    }
    if (slot > 0) {
      EXPECT_GT(s, bounds[slot - 1]) << ns;
    }
  }
}

// The kernel side's slot without a division is the shared one (kmon_log2_us_slot)
// everywhere, bounds and their neighbours first.
TEST(BlockLatencySlotTest, MatchesTheSharedLog2MicrosecondSlot) {
  for (uint32_t i = 0; i < 55; ++i) {
    const uint64_t bound = 1000ull << i;
    for (uint64_t ns : {bound - 1, bound, bound + 1, (bound / 1000) << 10, bound * 3 / 2}) {
      EXPECT_EQ(kmon_blk_latency_slot(ns), kmon_log2_us_slot(ns, KMON_BLK_LAT_BOUNDS)) << ns;
    }
  }
  for (uint64_t ns = 0; ns < 5000000; ns += 7) {
    ASSERT_EQ(kmon_blk_latency_slot(ns), kmon_log2_us_slot(ns, KMON_BLK_LAT_BOUNDS)) << ns;
  }
  for (uint64_t ns = 1; ns < ~0ull / 5; ns = ns * 5 / 3 + 11) {
    ASSERT_EQ(kmon_blk_latency_slot(ns), kmon_log2_us_slot(ns, KMON_BLK_LAT_BOUNDS)) << ns;
  }
  EXPECT_EQ(kmon_blk_latency_slot(~0ull), static_cast<uint32_t>(KMON_BLK_LAT_BOUNDS));
}

// The kernel allocates a queue's requests as one array of cache-line-aligned structs
// (blk_mq_alloc_rqs: a few hundred bytes plus the driver's command each): 4096
// requests in flight at any such stride, wherever the array starts, leave no set of
// the in-flight table over-full.
TEST(BlockInflightSetTest, RequestArraysFitTheSetsAtEveryStride) {
  for (uint64_t base : {0xffff888100000000ull, 0xffff88810a3c0040ull, 0xffff9abc12347fc0ull}) {
    for (uint64_t stride = 256; stride <= 4096; stride += 64) {
      std::map<uint32_t, int> per_set;
      int fullest = 0;
      for (uint64_t i = 0; i < 4096; ++i) {
        const uint32_t set = kmon_blk_inflight_set(base + i * stride);
        ASSERT_LT(set, KMON_BLK_INFLIGHT_SETS);
        fullest = std::max(fullest, ++per_set[set]);
      }
      EXPECT_LE(fullest, KMON_BLK_INFLIGHT_WAYS) << std::hex << base << std::dec << " " << stride;
    }
  }
}

TEST(BlockLatencyBoundsTest, PowersOfTwoMicrosecondsInSeconds) {
  const std::vector<double>& b = BlockLatencyBounds();
  ASSERT_EQ(b.size(), 26u);
  EXPECT_DOUBLE_EQ(b[0], 1e-6);
  EXPECT_DOUBLE_EQ(b[10], 1024e-6);
  EXPECT_DOUBLE_EQ(b[25], 33.554432);
}

TEST(KernelDevTest, MatchesTheKernelsMkdev) {
  EXPECT_EQ(KMON_KDEV(254, 0), 254u << 20);
  EXPECT_EQ(KMON_KDEV(7, 3), (7u << 20) | 3u);
  EXPECT_EQ(KMON_KDEV_MAJOR(KMON_KDEV(259, 12)), 259u);
  EXPECT_EQ(KMON_KDEV_MINOR(KMON_KDEV(259, 12)), 12u);
}

TEST(BlockOpLabelTest, NamesEveryOp) {
  EXPECT_EQ(BlockOpLabel(KMON_BLK_OP_READ), "read");
  EXPECT_EQ(BlockOpLabel(KMON_BLK_OP_WRITE), "write");
  EXPECT_EQ(BlockOpLabel(KMON_BLK_OP_FLUSH), "flush");
  EXPECT_EQ(BlockOpLabel(KMON_BLK_OP_DISCARD), "discard");
  EXPECT_EQ(BlockOpLabel(KMON_BLK_OP_OTHER), "other");
}

// A sysfs tree as the kernel lays it out: a disk with one partition, reached
// through /sys/class/block and /sys/dev/block symlinks.
class FakeSysfs {
 public:
  FakeSysfs() {
    char tmpl[] = "/tmp/kmon-sysfs-XXXXXX";
    root_ = mkdtemp(tmpl);
    namespace fs = std::filesystem;
    const fs::path disk = fs::path(root_) / "devices/pci0000:00/0000:00:04.0/virtio1/block/vda";
    fs::create_directories(disk / "vda1");
    Write(disk / "dev", "254:0\n");
    Write(disk / "uevent", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
    Write(disk / "vda1/dev", "254:1\n");
    Write(disk / "vda1/partition", "1\n");
    Write(disk / "vda1/uevent", "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\n");
    fs::create_directories(fs::path(root_) / "class/block");
    fs::create_directories(fs::path(root_) / "dev/block");
    fs::create_symlink(disk, fs::path(root_) / "class/block/vda");
    fs::create_symlink(disk / "vda1", fs::path(root_) / "class/block/vda1");
    fs::create_symlink(disk, fs::path(root_) / "dev/block/254:0");
    fs::create_symlink(disk / "vda1", fs::path(root_) / "dev/block/254:1");
  }
  ~FakeSysfs() { std::filesystem::remove_all(root_); }
  const std::string& root() const { return root_; }

 private:
  static void Write(const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p) << text;
  }
  std::string root_;
};

TEST(SysfsBlockDeviceNamesTest, NamesDisksAndMapsPartitionsToTheirDisk) {
  FakeSysfs sys;
  SysfsBlockDeviceNames names(sys.root());
  EXPECT_EQ(names.Name(KMON_KDEV(254, 0)), "vda");
  EXPECT_EQ(names.Name(KMON_KDEV(254, 1)), "vda1");
  EXPECT_EQ(names.Name(KMON_KDEV(8, 0)), std::nullopt);
  EXPECT_EQ(names.DiskOf("vda"), KMON_KDEV(254, 0));
  EXPECT_EQ(names.DiskOf("vda1"), KMON_KDEV(254, 0));
  EXPECT_EQ(names.DiskOf("sdz"), std::nullopt);
  EXPECT_EQ(names.DiskOf("../class"), std::nullopt);
  EXPECT_EQ(names.DiskOf(""), std::nullopt);
}

class FixedPaths : public CgroupPathSource {
 public:
  std::unordered_map<uint64_t, std::string> Scan() override {
    return {{1, "/"}, {100, "/system.slice/postgresql.service"}};
  }
};

std::string DeviceName(uint32_t dev) {
  if (dev == KMON_KDEV(254, 0)) return "vda";
  if (dev == KMON_KDEV(259, 0)) return "nvme0n1";
  return "?";
}

TEST(BuildBlockIoFamiliesTest, ExactTextForFixedData) {
  WorkloadResolver workloads(std::make_unique<FixedPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  const uint32_t vda = KMON_KDEV(254, 0), nvme = KMON_KDEV(259, 0);
  std::vector<BlockIoCount> counts = {
      {100, vda, KMON_BLK_OP_WRITE, 4194304, 64},
      {100, vda, KMON_BLK_OP_FLUSH, 0, 1},
      {0, nvme, KMON_BLK_OP_READ, 8192, 2},    // submitter unknown: node level
      {999, vda, KMON_BLK_OP_WRITE, 4096, 1},  // a cgroup that is gone
  };
  BlockIoLatency lat;
  lat.dev = vda;
  lat.op = KMON_BLK_OP_WRITE;
  lat.slots[5] = 60;  // <= 32us
  lat.slots[7] = 3;   // <= 128us
  lat.slots[26] = 1;  // > 33.5 s
  lat.sum_ns = 40000000000ull;
  lat.errors = 1;
  auto families = BuildBlockIoFamilies(counts, {lat}, DeviceName, &budget);
  ASSERT_EQ(families.size(), 4u);

  std::string buckets;
  const char* les[] = {"1e-06",     "2e-06",     "4e-06",    "8e-06",    "1.6e-05",  "3.2e-05",
                       "6.4e-05",   "0.000128",  "0.000256", "0.000512", "0.001024", "0.002048",
                       "0.004096",  "0.008192",  "0.016384", "0.032768", "0.065536", "0.131072",
                       "0.262144",  "0.524288",  "1.048576", "2.097152", "4.194304", "8.388608",
                       "16.777216", "33.554432", "+Inf"};
  for (int i = 0; i < 27; ++i) {
    const int cumulative = (i >= 5 ? 60 : 0) + (i >= 7 ? 3 : 0) + (i >= 26 ? 1 : 0);
    buckets +=
        std::string("kmon_block_io_duration_seconds_bucket{device=\"vda\",op=\"write\",le=\"") +
        les[i] + "\"} " + std::to_string(cumulative) + "\n";
  }
  const std::string text = Serialize(families, ExpositionFormat::kText004);
  EXPECT_EQ(text,
            "# HELP kmon_block_io_duration_seconds Block I/O requests from issue to the device "
            "until completion, by disk and operation.\n"
            "# TYPE kmon_block_io_duration_seconds histogram\n"
            "kmon_block_io_duration_seconds_count{device=\"vda\",op=\"write\"} 64\n"
            "kmon_block_io_duration_seconds_sum{device=\"vda\",op=\"write\"} 40\n" +
                buckets +
                "# HELP kmon_block_io_bytes_total Bytes of completed block I/O, by submitting "
                "workload (empty when unknown), disk and operation.\n"
                "# TYPE kmon_block_io_bytes_total counter\n"
                "kmon_block_io_bytes_total{namespace=\"\",pod=\"\",container=\"\","
                "device=\"nvme0n1\",op=\"read\"} 8192\n"
                "kmon_block_io_bytes_total{namespace=\"\",pod=\"\",container=\"postgresql."
                "service\",device=\"vda\",op=\"flush\"} 0\n"
                "kmon_block_io_bytes_total{namespace=\"\",pod=\"\",container=\"postgresql."
                "service\",device=\"vda\",op=\"write\"} 4194304\n"
                "# HELP kmon_block_io_requests_total Completed block I/O requests, by submitting "
                "workload (empty when unknown), disk and operation.\n"
                "# TYPE kmon_block_io_requests_total counter\n"
                "kmon_block_io_requests_total{namespace=\"\",pod=\"\",container=\"\","
                "device=\"nvme0n1\",op=\"read\"} 2\n"
                "kmon_block_io_requests_total{namespace=\"\",pod=\"\",container=\"postgresql."
                "service\",device=\"vda\",op=\"flush\"} 1\n"
                "kmon_block_io_requests_total{namespace=\"\",pod=\"\",container=\"postgresql."
                "service\",device=\"vda\",op=\"write\"} 64\n"
                "# HELP kmon_block_io_errors_total Block I/O completions with an error status, "
                "by disk and operation.\n"
                "# TYPE kmon_block_io_errors_total counter\n"
                "kmon_block_io_errors_total{device=\"vda\",op=\"write\"} 1\n");

  // promtool accepts it.
  const CommandResult promtool = RunWithInput("promtool check metrics", text);
  EXPECT_EQ(promtool.exit_status, 0) << promtool.output;
  EXPECT_EQ(promtool.output, "");
}

// Two cgroups with the same workload labels (one service name in two slices)
// make one workload: its series are counted once, by final label set.
class TwinPaths : public CgroupPathSource {
 public:
  std::unordered_map<uint64_t, std::string> Scan() override {
    return {{1, "/"},
            {100, "/system.slice/postgresql.service"},
            {101, "/machine.slice/postgresql.service"},
            {200, "/system.slice/nginx.service"}};
  }
};

TEST(BuildBlockIoFamiliesTest, SeriesLimitCountsLabelSetsOfWorkloads) {
  WorkloadResolver workloads(std::make_unique<TwinPaths>(), nullptr);
  const uint32_t vda = KMON_KDEV(254, 0);
  std::vector<BlockIoCount> counts = {
      {0, vda, KMON_BLK_OP_READ, 4096, 1},    {100, vda, KMON_BLK_OP_WRITE, 8192, 2},
      {101, vda, KMON_BLK_OP_WRITE, 4096, 1},  // same labels as cgroup 100's
      {101, vda, KMON_BLK_OP_READ, 4096, 1},  {200, vda, KMON_BLK_OP_WRITE, 512, 1},
  };
  auto container_bytes = [](const std::vector<prometheus::MetricFamily>& fams) {
    std::map<std::string, double> out;
    for (const auto& m : fams[1].metric) out[m.label[2].value] += m.counter.value;
    return out;
  };
  // Node level 2 series, postgresql.service 4 (write and read on vda, bytes and
  // requests), nginx.service 2: 8 in all.
  WorkloadLabeler fits(&workloads, 8);
  auto fams = BuildBlockIoFamilies(counts, {}, DeviceName, &fits);
  ASSERT_EQ(fams[1].name, "kmon_block_io_bytes_total");
  EXPECT_EQ(container_bytes(fams),
            (std::map<std::string, double>{
                {"", 4096}, {"postgresql.service", 16384}, {"nginx.service", 512}}));
  EXPECT_EQ(fits.Overflowed(), 0u);

  // One series less: the last workload in cgroup order is folded, with its 2 series.
  WorkloadLabeler tight(&workloads, 7);
  fams = BuildBlockIoFamilies(counts, {}, DeviceName, &tight);
  EXPECT_EQ(container_bytes(fams),
            (std::map<std::string, double>{
                {"", 4096}, {"postgresql.service", 16384}, {kOverflowLabel, 512}}));
  EXPECT_EQ(tight.Overflowed(), 2u);
}

}  // namespace
}  // namespace kmon
