// The blockio collector against the running kernel: a workload in a cgroup of its own
// does O_DIRECT I/O of known sizes on a loop device of the test's own (a real block
// device with the block-layer tracepoints, on any root filesystem), and kmon must
// count exactly those bytes and requests for it.
#include <bpf/bpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "bpf/witness.skel.h"
#include "collectors/blockio.h"
#include "collectors/bpf_util.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/root/root_util.h"

namespace kmon {
namespace {

using testing::RunInCgroup;
using testing::TestCgroup;

constexpr int kRequests = 64;
constexpr size_t kSize = 64 * 1024;

// A loop device over a sparse 64 MiB file; detached and the file removed on
// destruction, also when the test fails.
class LoopDevice {
 public:
  LoopDevice() {
    char tmpl[] = "/var/tmp/kmon-loop-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) {
      ADD_FAILURE() << "mkstemp: " << std::strerror(errno);
      return;
    }
    backing_ = tmpl;
    if (ftruncate(fd, 64 << 20) != 0) ADD_FAILURE() << "ftruncate: " << std::strerror(errno);
    close(fd);
    FILE* p = popen(("losetup -f --show " + backing_ + " 2>&1").c_str(), "r");
    if (p == nullptr) {
      ADD_FAILURE() << "popen losetup";
      return;
    }
    char line[256] = {};
    std::string out;
    while (fgets(line, sizeof line, p)) out += line;
    int rc = pclose(p);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    if (rc != 0 || out.rfind("/dev/loop", 0) != 0) {
      ADD_FAILURE() << "losetup -f --show: " << out;
      return;
    }
    path_ = out;
    name_ = path_.substr(5);
  }
  ~LoopDevice() {
    if (!path_.empty() && std::system(("losetup -d " + path_).c_str()) != 0) {
      ADD_FAILURE() << "losetup -d " << path_;
    }
    if (!backing_.empty()) unlink(backing_.c_str());
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  const std::string& name() const { return name_; }  // "loop3"

  /// Shortens the backing file; the disk keeps its size (read at losetup time), so
  /// reads beyond the file's end fail. Waits for udev's probe of the new disk first
  /// (where udev runs), so no probe reads past the end.
  bool TruncateBacking(off_t size) {
    std::system("command -v udevadm > /dev/null && udevadm settle --timeout=10");
    return truncate(backing_.c_str(), size) == 0;
  }

 private:
  std::string backing_, path_, name_;
};

// `n` O_DIRECT writes (or reads) of kSize at consecutive offsets, then fsync for
// writes. Exits 1 unless every call moved exactly kSize bytes.
void DirectIo(const std::string& dev, bool write, int n) {
  int fd = open(dev.c_str(), (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) _exit(1);
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kSize) != 0) _exit(1);
  std::memset(buf, 0x5a, kSize);
  for (int i = 0; i < n; ++i) {
    const off_t off = static_cast<off_t>(i) * kSize;
    ssize_t done = write ? pwrite(fd, buf, kSize, off) : pread(fd, buf, kSize, off);
    if (done != static_cast<ssize_t>(kSize)) _exit(1);
  }
  if (write && fsync(fd) != 0) _exit(1);
  close(fd);
}

// A child's reads of `len` bytes at `off` on `dev`, O_DIRECT. Each must either read
// `len` bytes (`fail` false) or fail with EIO (`fail` true); exits 1 otherwise.
struct Read {
  off_t off;
  size_t len;
  bool fail;
};
void DirectReads(const std::string& dev, const std::vector<Read>& reads) {
  int fd = open(dev.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) _exit(1);
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kSize) != 0) _exit(1);
  for (const Read& r : reads) {
    if (r.len > kSize) _exit(1);
    ssize_t done = pread(fd, buf, r.len, r.off);
    if (r.fail ? (done != -1 || errno != EIO) : done != static_cast<ssize_t>(r.len)) _exit(1);
  }
  close(fd);
}

// The counter or histogram count of `family` for samples whose labels include `want`.
double Sum(const std::vector<prometheus::MetricFamily>& fams, const std::string& family,
           const std::map<std::string, std::string>& want) {
  double sum = 0;
  for (const auto& f : fams) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      size_t matched = 0;
      for (const auto& l : m.label) {
        auto it = want.find(l.name);
        if (it != want.end() && it->second == l.value) ++matched;
      }
      if (matched != want.size()) continue;
      sum += f.type == prometheus::MetricType::Histogram
                 ? static_cast<double>(m.histogram.sample_count)
                 : m.counter.value;
    }
  }
  return sum;
}

// Every `device` label value in the families.
std::set<std::string> Devices(const std::vector<prometheus::MetricFamily>& fams) {
  std::set<std::string> out;
  for (const auto& f : fams) {
    for (const auto& m : f.metric) {
      for (const auto& l : m.label) {
        if (l.name == "device") out.insert(l.value);
      }
    }
  }
  return out;
}

std::vector<prometheus::MetricFamily> Scrape(BlockioCollector* c) {
  std::vector<prometheus::MetricFamily> fams;
  c->Collect(&fams);
  return fams;
}

Config DevicesConfig(const std::vector<std::string>& devices) {
  std::string yaml = "collectors:\n  blockio:\n    devices: [";
  for (size_t i = 0; i < devices.size(); ++i) yaml += (i ? ", " : "") + devices[i];
  yaml += "]\n";
  ConfigResult r = ParseConfig(yaml, ProcessEnv());
  EXPECT_TRUE(r.problems.empty());
  return r.config.value_or(DefaultConfig());
}

using BlockioRootTest = testing::CollectorRootTest;

// Writes kRequests x kSize with O_DIRECT and fsync from `cg` on `loop` and checks
// the loop disk's series, exactly; `after` gets the scrape after, for more checks.
void ExpectDirectWritesCounted(BlockioCollector* c, const LoopDevice& loop, const TestCgroup& cg,
                               std::vector<prometheus::MetricFamily>* after) {
  const std::map<std::string, std::string> dev_write{{"device", loop.name()}, {"op", "write"}};
  auto before = Scrape(c);
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, kRequests); }), 0);
  *after = Scrape(c);

  std::map<std::string, std::string> mine = dev_write;
  mine["container"] = cg.name();
  // 64 KiB is below the loop device's request size limit: one request per write.
  EXPECT_EQ(Sum(*after, "kmon_block_io_bytes_total", mine), kRequests * kSize);
  EXPECT_EQ(Sum(*after, "kmon_block_io_requests_total", mine), kRequests);
  // fsync() asks the disk to flush its cache: one flush for the workload, no bytes.
  EXPECT_EQ(Sum(*after, "kmon_block_io_requests_total",
                {{"container", cg.name()}, {"device", loop.name()}, {"op", "flush"}}),
            1);
  // The disk is the test's own: every write it saw was ours, each timed once.
  EXPECT_EQ(Sum(*after, "kmon_block_io_duration_seconds", dev_write) -
                Sum(before, "kmon_block_io_duration_seconds", dev_write),
            kRequests);
  EXPECT_GE(
      Sum(*after, "kmon_block_io_duration_seconds", {{"device", loop.name()}, {"op", "flush"}}), 1);
  EXPECT_EQ(Sum(*after, "kmon_block_io_errors_total", {{"device", loop.name()}}), 0);
  EXPECT_EQ(c->EventsLost().at("map_full"), 0u);
}

TEST_F(BlockioRootTest, DirectWritesAreChargedToTheWriterOnItsDisk) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  absl::Status st = c.Start(DevicesConfig({loop.name()}));
  ASSERT_TRUE(st.ok()) << st;
  TestCgroup cg;
  std::vector<prometheus::MetricFamily> after;
  ExpectDirectWritesCounted(&c, loop, cg, &after);
  EXPECT_EQ(Sum(after, "kmon_block_io_bytes_total", {{"container", cg.name()}}), kRequests * kSize);
  // devices: [loopN] selects that disk alone, though the loop driver's own writes to
  // its backing file reach the root disk meanwhile.
  EXPECT_EQ(Devices(after), std::set<std::string>{loop.name()});
}

// Without a device filter (the default) the first hook does not read the request's
// disk: every disk is counted, the loop disk's requests exactly as with a filter.
TEST_F(BlockioRootTest, EveryDiskIsCountedWithoutADeviceFilter) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DefaultConfig()).ok());
  TestCgroup cg;
  std::vector<prometheus::MetricFamily> after;
  ExpectDirectWritesCounted(&c, loop, cg, &after);
}

TEST_F(BlockioRootTest, DirectReadsAreCountedAndTimed) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());
  const std::map<std::string, std::string> dev_read{{"device", loop.name()}, {"op", "read"}};
  auto before = Scrape(&c);

  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), false, kRequests); }), 0);
  auto after = Scrape(&c);

  std::map<std::string, std::string> mine = dev_read;
  mine["container"] = cg.name();
  EXPECT_EQ(Sum(after, "kmon_block_io_bytes_total", mine), kRequests * kSize);
  EXPECT_EQ(Sum(after, "kmon_block_io_requests_total", mine), kRequests);
  EXPECT_EQ(Sum(after, "kmon_block_io_bytes_total", {{"container", cg.name()}, {"op", "write"}}),
            0);
  // udev may probe a new disk with reads of its own: at least ours.
  EXPECT_GE(Sum(after, "kmon_block_io_duration_seconds", dev_read) -
                Sum(before, "kmon_block_io_duration_seconds", dev_read),
            kRequests);
}

TEST_F(BlockioRootTest, DeviceFilterAndWatchedCgroupsChangeWithoutReload) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = DevicesConfig({"kmon-no-such-disk"});
  const uint32_t before_ids = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(cfg).ok());
  const auto ids = testing::BpfProgramIds("kmon_blk_done", before_ids);
  ASSERT_EQ(ids.size(), 1u);
  TestCgroup cg;

  // Only a disk that does not exist is selected: nothing is counted.
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 8); }), 0);
  auto fams = Scrape(&c);
  EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total", {{"device", loop.name()}}), 0);
  EXPECT_EQ(Sum(fams, "kmon_block_io_duration_seconds", {{"device", loop.name()}}), 0);

  // The loop disk selected, our cgroup not watched (host_processes: false): the disk's
  // latency is counted, the workload's bytes are not.
  cfg = DevicesConfig({loop.name()});
  cfg.targets.host_processes = false;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  ASSERT_TRUE(c.Reconfigure(cfg).ok());
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 8); }), 0);
  fams = Scrape(&c);
  EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total", {{"container", cg.name()}}), 0);
  EXPECT_EQ(Sum(fams, "kmon_block_io_duration_seconds", {{"device", loop.name()}, {"op", "write"}}),
            8);

  // Watched again: counted exactly.
  cfg.targets.host_processes = true;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  ASSERT_TRUE(c.Reconfigure(cfg).ok());
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 8); }), 0);
  fams = Scrape(&c);
  EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total",
                {{"container", cg.name()}, {"device", loop.name()}, {"op", "write"}}),
            8);
  EXPECT_EQ(Sum(fams, "kmon_block_io_bytes_total", {{"container", cg.name()}}), 8 * kSize);
  EXPECT_EQ(testing::BpfProgramIds("kmon_blk_done", before_ids), ids);
}

// The loop driver ends a read that finds no data in its backing file with
// BLK_STS_IOERR (lo_complete_rq): every read past the file's end is one failed
// completion. A read across the end completes the part inside the file (a partial
// completion without error), is requeued, and fails for the rest. Nothing retries
// O_DIRECT reads of a block device, so each read the workload sees fail is exactly
// one error; bpftrace on block:block_rq_complete shows the same (error -5 once per
// such read, plus the one partial success).
TEST_F(BlockioRootTest, FailedReadsAreErrorsAndTransferNoBytes) {
  LoopDevice loop;  // 64 MiB
  ASSERT_TRUE(loop.ok());
  ASSERT_TRUE(loop.TruncateBacking(1 << 20));
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());

  constexpr int kGood = 8, kBad = 16;
  constexpr size_t kPage = 4096;
  std::vector<Read> reads;
  for (int i = 0; i < kGood; ++i) reads.push_back({static_cast<off_t>(i * kSize), kPage, false});
  for (int i = 0; i < kBad; ++i) {
    reads.push_back({static_cast<off_t>((2 << 20) + i * kSize), kPage, true});
  }
  // A read across the file's end is left out: it completes its inside part and then
  // fails for the rest on most runs, but CI once saw it leave no completion at all.

  const std::map<std::string, std::string> dev_read{{"device", loop.name()}, {"op", "read"}};
  auto before = Scrape(&c);
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectReads(loop.path(), reads); }), 0);
  auto after = Scrape(&c);

  EXPECT_EQ(Sum(after, "kmon_block_io_errors_total", dev_read) -
                Sum(before, "kmon_block_io_errors_total", dev_read),
            kBad);
  EXPECT_EQ(Sum(after, "kmon_block_io_errors_total", {{"device", loop.name()}, {"op", "write"}}),
            0);
  std::map<std::string, std::string> mine = dev_read;
  mine["container"] = cg.name();
  // Bytes are what was transferred: the good reads only.
  EXPECT_EQ(Sum(after, "kmon_block_io_bytes_total", mine), kGood * kPage);
  // Every read is one completed request, failed or not, timed once.
  EXPECT_EQ(Sum(after, "kmon_block_io_requests_total", mine), kGood + kBad);
  EXPECT_EQ(Sum(after, "kmon_block_io_duration_seconds", dev_read) -
                Sum(before, "kmon_block_io_duration_seconds", dev_read),
            kGood + kBad);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// Kernels before v6.5 have no block_io_start: the collector records submitters at
// block_rq_insert instead, and at block_rq_issue for requests issued directly
// without insertion (every request of a disk with scheduler "none", as loop disks
// have by default). Both tracepoints exist on new kernels too: the twin is loaded
// here in place of block_io_start and must charge the same workload.
TEST_F(BlockioRootTest, PreV65SubmitHookChargesDirectWritesToTheWriter) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()}, nullptr,
                     BlockSubmitHook::kRqInsert);
  const uint32_t before_ids = testing::MaxBpfProgramId();
  absl::Status st = c.Start(DevicesConfig({loop.name()}));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(testing::BpfProgramIds("kmon_blk_start", before_ids).size(), 0u);
  EXPECT_EQ(testing::BpfProgramIds("kmon_blk_insert", before_ids).size(), 1u);

  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, kRequests); }), 0);
  auto after = Scrape(&c);
  const std::map<std::string, std::string> mine{
      {"container", cg.name()}, {"device", loop.name()}, {"op", "write"}};
  EXPECT_EQ(Sum(after, "kmon_block_io_bytes_total", mine), kRequests * kSize);
  EXPECT_EQ(Sum(after, "kmon_block_io_requests_total", mine), kRequests);
  EXPECT_EQ(
      Sum(after, "kmon_block_io_duration_seconds", {{"device", loop.name()}, {"op", "write"}}),
      kRequests);
  // fsync's cache flush, an empty write the flush machinery completes without
  // inserting or issuing it, is seen first at completion: charged to its blkcg
  // (node level on a hybrid host, on v2 the writer's io cgroup).
  // Once, whoever gets it.
  EXPECT_EQ(Sum(after, "kmon_block_io_requests_total", {{"device", loop.name()}, {"op", "flush"}}),
            1);
}

// In-flight requests are forgotten at completion: after a burst no slot of the
// in-flight table is taken (nothing leaks from one request to the next).
TEST_F(BlockioRootTest, InflightTableIsEmptyAfterTheIoCompletes) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, kRequests); }), 0);
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), false, kRequests); }), 0);
  const bpf_map* inflight =
      bpf_object__find_map_by_name(const_cast<bpf_object*>(c.BpfObject()), "inflight");
  ASSERT_NE(inflight, nullptr);
  ASSERT_EQ(bpf_map__value_size(inflight), sizeof(blk_inflight_set));
  int taken = 0;
  for (uint32_t i = 0; i < KMON_BLK_INFLIGHT_SETS; ++i) {
    blk_inflight_set set{};
    ASSERT_EQ(bpf_map_lookup_elem(bpf_map__fd(inflight), &i, &set), 0) << i;
    for (uint64_t rq : set.rq) taken += rq != 0;
  }
  EXPECT_EQ(taken, 0);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// The write-back cache (blk_cache) has 8 ways per CPU: 12 workloads writing in turn
// on one disk are more keys than that, so their ways are taken from each other, and
// every write is still counted once, for its writer, on both rounds (a way that
// kept its key from the first round counts the second without the map).
TEST_F(BlockioRootTest, MoreWorkloadsThanTheCacheHasWaysCountExactly) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());
  std::optional<blk_config> bc = testing::ReadControl<blk_config>(c.BpfObject(), "blk_config");
  ASSERT_TRUE(bc.has_value());
  EXPECT_EQ(bc->cache, 1u) << "the flush runs here, so the cache is on";
  constexpr int kWorkloads = 12;
  static_assert(kWorkloads > KMON_BLK_CACHE_WAYS);
  std::vector<TestCgroup> cgs(kWorkloads);
  const std::map<std::string, std::string> dev_write{{"device", loop.name()}, {"op", "write"}};
  const double timed_before = Sum(Scrape(&c), "kmon_block_io_duration_seconds", dev_write);
  for (int round = 1; round <= 2; ++round) {
    // Workload i writes i + 1 requests per round.
    for (int i = 0; i < kWorkloads; ++i) {
      ASSERT_EQ(RunInCgroup(cgs[i], [&] { DirectIo(loop.path(), true, i + 1); }), 0);
    }
    auto fams = Scrape(&c);
    int writes = 0;
    for (int i = 0; i < kWorkloads; ++i) {
      std::map<std::string, std::string> mine = dev_write;
      mine["container"] = cgs[i].name();
      EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total", mine), round * (i + 1)) << i;
      EXPECT_EQ(Sum(fams, "kmon_block_io_bytes_total", mine), round * (i + 1) * kSize) << i;
      writes += round * (i + 1);
    }
    EXPECT_EQ(Sum(fams, "kmon_block_io_duration_seconds", dev_write) - timed_before, writes);
  }
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// With the cache switched off (what a failed flush does), completions go straight
// into the maps, and what the ways held reaches them; switched on again, the same.
TEST_F(BlockioRootTest, CountsExactlyWithTheCacheOnAndOff) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());
  std::optional<blk_config> bc = testing::ReadControl<blk_config>(c.BpfObject(), "blk_config");
  ASSERT_TRUE(bc.has_value());
  ASSERT_EQ(bc->cache, 1u);
  TestCgroup cg;
  const std::map<std::string, std::string> mine{
      {"container", cg.name()}, {"device", loop.name()}, {"op", "write"}};
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 8); }), 0);
  EXPECT_EQ(Sum(Scrape(&c), "kmon_block_io_requests_total", mine), 8);
  bc->cache = 0;
  ASSERT_TRUE(testing::WriteControl(c.BpfObject(), "blk_config", *bc));
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 5); }), 0);
  EXPECT_EQ(Sum(Scrape(&c), "kmon_block_io_requests_total", mine), 13);
  bc->cache = 1;
  ASSERT_TRUE(testing::WriteControl(c.BpfObject(), "blk_config", *bc));
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 3); }), 0);
  auto fams = Scrape(&c);
  EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total", mine), 16);
  EXPECT_EQ(Sum(fams, "kmon_block_io_bytes_total", mine), 16 * kSize);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// A disk no longer selected loses its series (the collector deletes its entries);
// selected again, it counts afresh and exactly: no cache way kept the deleted key to
// count into (blk_config.generation moved on when the keys went).
TEST_F(BlockioRootTest, ADiskSelectedAgainAfterItsSeriesWentCountsAfresh) {
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());
  TestCgroup cg;
  const std::map<std::string, std::string> mine{
      {"container", cg.name()}, {"device", loop.name()}, {"op", "write"}};
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 8); }), 0);
  EXPECT_EQ(Sum(Scrape(&c), "kmon_block_io_requests_total", mine), 8);

  ASSERT_TRUE(c.Reconfigure(DevicesConfig({"kmon-no-such-disk"})).ok());
  Scrape(&c);  // drops the loop disk's entries
  EXPECT_EQ(Sum(Scrape(&c), "kmon_block_io_requests_total", {{"device", loop.name()}}), 0);

  ASSERT_TRUE(c.Reconfigure(DevicesConfig({loop.name()})).ok());
  ASSERT_EQ(RunInCgroup(cg, [&] { DirectIo(loop.path(), true, 5); }), 0);
  auto fams = Scrape(&c);
  EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total", mine), 5);
  EXPECT_EQ(Sum(fams, "kmon_block_io_bytes_total", mine), 5 * kSize);
  EXPECT_EQ(Sum(fams, "kmon_block_io_duration_seconds", {{"device", loop.name()}, {"op", "write"}}),
            5);
}

// Counts what the kernel delivers on block_rq_complete for one disk (bpf/witness.bpf.c)
// while it lives.
class CompletionWitness {
 public:
  explicit CompletionWitness(uint32_t kdev) {
    skel_ = witness_bpf__open();
    if (skel_ == nullptr) return;
    skel_->rodata->witness_dev = kdev;
    if (witness_bpf__load(skel_) != 0 || witness_bpf__attach(skel_) != 0) {
      witness_bpf__destroy(skel_);
      skel_ = nullptr;
    }
  }
  ~CompletionWitness() {
    if (skel_ != nullptr) witness_bpf__destroy(skel_);
  }
  CompletionWitness(const CompletionWitness&) = delete;
  CompletionWitness& operator=(const CompletionWitness&) = delete;
  bool ok() const { return skel_ != nullptr; }
  uint64_t requests() const {
    return __atomic_load_n(&skel_->bss->witness_requests, __ATOMIC_SEQ_CST);
  }
  uint64_t bytes() const { return __atomic_load_n(&skel_->bss->witness_bytes, __ATOMIC_SEQ_CST); }

 private:
  witness_bpf* skel_ = nullptr;
};

// Reads the disk has completed, by its own statistics (/sys/block/NAME/stat).
int64_t DiskReadsDone(const LoopDevice& loop) {
  std::ifstream in("/sys/block/" + loop.name() + "/stat");
  int64_t reads = -1;
  in >> reads;
  return reads;
}

// The flush runs in an IPI, which can land on a CPU in the middle of its completion
// program's update of a cache way or of a map entry: many flushes at a CPU busy
// completing reads, and still every completion is counted once.
//
// The truth is a witness on the same tracepoint (CompletionWitness), held next to the
// reads made: on this kernel (6.18) one completion in 100,000-300,000 (more under the
// IPIs) never reaches the tracepoint's BPF programs (bpftrace on block_rq_complete
// misses the same ones, with the cache off and with no flush at all), though the
// disk's own statistics count it. kmon is held to what it was given, exactly.
TEST_F(BlockioRootTest, FlushesInTheMiddleOfCompletionsLoseAndDoubleNothing) {
  KMON_REQUIRE_CPUS(2, "it needs two CPUs: one completing I/O, one sending it flush IPIs");
  LoopDevice loop;
  ASSERT_TRUE(loop.ok());
  struct stat st {};
  ASSERT_EQ(stat(loop.path().c_str(), &st), 0);
  CompletionWitness witness(KMON_KDEV(major(st.st_rdev), minor(st.st_rdev)));
  ASSERT_TRUE(witness.ok());
  BlockioCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DevicesConfig({loop.name()})).ok());
  bpf_program* flush = bpf_object__find_program_by_name(c.BpfObject(), "kmon_blk_flush");
  ASSERT_NE(flush, nullptr);
  // The whole 64 MiB disk in 64 KiB reads, this many times.
  constexpr int kPasses = 16, kPerPass = (64 << 20) / kSize, kReads = kPasses * kPerPass;
  const int64_t disk_before = DiskReadsDone(loop);
  TestCgroup cg;
  const testing::FlushRuns runs = testing::FlushCpu1WhileChildWorks(flush, cg, [&] {
    for (int i = 0; i < kPasses; ++i) DirectIo(loop.path(), false, kPerPass);
  });
  auto fams = Scrape(&c);  // the collector's own flush, with its retries
  const std::map<std::string, std::string> mine{
      {"container", cg.name()}, {"device", loop.name()}, {"op", "read"}};
  const uint64_t delivered = witness.requests();
  EXPECT_EQ(DiskReadsDone(loop) - disk_before, kReads);
  EXPECT_LE(delivered, static_cast<uint64_t>(kReads));
  EXPECT_GE(delivered, static_cast<uint64_t>(kReads) - 5) << "the kernel lost more than it does";
  EXPECT_EQ(Sum(fams, "kmon_block_io_requests_total", mine), delivered)
      << "after " << runs.runs << " flushes on the completing CPU";
  EXPECT_EQ(Sum(fams, "kmon_block_io_bytes_total", mine), witness.bytes());
  EXPECT_EQ(Sum(fams, "kmon_block_io_duration_seconds", {{"device", loop.name()}, {"op", "read"}}),
            delivered);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
  // The race was run into, not just run beside: some IPIs found the program mid-way.
  EXPECT_GT(runs.runs, 1000);
  EXPECT_GT(runs.busy, 0) << runs.runs << " flushes";
  std::printf("%d flushes, %d found the CPU busy; %d reads, %llu completions delivered\n",
              runs.runs, runs.busy, kReads, static_cast<unsigned long long>(delivered));
}

}  // namespace
}  // namespace kmon
