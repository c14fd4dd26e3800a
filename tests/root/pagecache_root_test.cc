// The pagecache collector against the running kernel: an 8 MiB file on a real
// filesystem (the build directory; tmpfs has no page cache of this kind), dropped
// from the cache and read cold by one cgroup, then hot by another, with read(2) and
// with mmap; and the cachestat twin, which this kernel refuses, leaving the collector
// on its tracepoints.
//
// Exactness: each reader is a child that first does everything but the measured
// work (opens the file, maps it, allocates its buffer, runs the same read loop over
// a small cached file so the code it then runs is faulted in), and the counters are
// read right before and right after the measured work. What lies between is only
// that work, so the kernel makes most numbers exact; where it does not, the bound
// says why.
#include <bpf/btf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectors/kernel_features.h"
#include "collectors/pagecache.h"
#include "exporter/config.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::SpawnInCgroup;
using testing::TestCgroup;

constexpr size_t kPage = 4096;
constexpr size_t kFileBytes = 8 << 20;
constexpr uint64_t kFilePages = kFileBytes / kPage;  // 2048
constexpr size_t kReadBytes = 1 << 20;               // read(2) size: 256 pages a call
constexpr long kTmpfsMagic = 0x01021994;

// A file of `bytes` random-ish bytes on the build directory's filesystem, written
// and synced; removed on destruction.
class DiskFile {
 public:
  explicit DiskFile(size_t bytes) {
    std::string tmpl = std::string(KMON_BINARY_DIR) + "/kmon-pagecache-XXXXXX";
    const int fd = mkstemp(tmpl.data());
    if (fd < 0) return;
    path_ = tmpl;
    std::vector<char> block(1 << 20);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>(i * 2654435761u >> 24);
    size_t left = bytes;
    while (left > 0) {
      const size_t n = std::min(left, block.size());
      if (write(fd, block.data(), n) != static_cast<ssize_t>(n)) break;
      left -= n;
    }
    ok_ = left == 0 && fsync(fd) == 0;
    close(fd);
  }
  ~DiskFile() {
    if (!path_.empty()) unlink(path_.c_str());
  }
  DiskFile(const DiskFile&) = delete;
  DiskFile& operator=(const DiskFile&) = delete;
  bool ok() const { return ok_; }
  const std::string& path() const { return path_; }

  /// Drops the file's pages from the page cache (clean after the fsync, so all of
  /// them go), the way `fadvise DONTNEED` does for anyone: without touching other
  /// files as drop_caches would.
  bool Drop() const {
    const int fd = open(path_.c_str(), O_RDONLY);
    if (fd < 0) return false;
    const bool ok = fsync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    close(fd);
    return ok;
  }
  /// Pages of the file in the page cache now (mincore; mapping faults nothing in).
  int64_t Resident() const {
    const int fd = open(path_.c_str(), O_RDONLY);
    if (fd < 0) return -1;
    struct stat st {};
    fstat(fd, &st);
    void* m = mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return -1;
    std::vector<unsigned char> vec((st.st_size + kPage - 1) / kPage);
    int64_t n = -1;
    if (mincore(m, st.st_size, vec.data()) == 0) {
      n = 0;
      for (unsigned char v : vec) n += v & 1;
    }
    munmap(m, st.st_size);
    return n;
  }

 private:
  std::string path_;
  bool ok_ = false;
};

// Reads all of `fd` with pread(2) in kReadBytes calls into `buf`; bytes read.
size_t ReadAll(int fd, char* buf) {
  size_t total = 0;
  ssize_t n;
  while ((n = pread(fd, buf, kReadBytes, static_cast<off_t>(total))) > 0) total += n;
  return total;
}

// Touches one byte of every page of a mapping; their sum, so nothing is skipped.
unsigned TouchAll(const volatile char* m, size_t bytes) {
  unsigned sum = 0;
  for (size_t off = 0; off < bytes; off += kPage) sum += static_cast<unsigned char>(m[off]);
  return sum;
}

// Maps every page of the process's private file mappings (its code, read-only data
// and those of its libraries) into its page tables now and locks them there, so that
// running code it has not run before faults none in later, and reclaim under memory
// pressure (a sanitizer build next to other tests) cannot drop one that the child then
// reads back in as a miss. A forked child starts with none of them mapped: fork copies
// no page table entries of file mappings.
void PrefaultOwnMappings() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t start = 0, end = 0;
    char perms[5] = {};
    char path[512] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s %*s %*s %*s %511s", &start, &end, perms, path) < 4)
      continue;
    if (perms[0] != 'r' || perms[3] != 'p' || path[0] != '/') continue;
    void* at = reinterpret_cast<void*>(start);
    if (mlock(at, end - start) != 0) madvise(at, end - start, MADV_POPULATE_READ);
  }
}

// Holds every page of a file in the page cache while it lives (mlock of a shared
// mapping: locked pages are not reclaimed), so that a hot read measures hits only,
// whatever else the machine is doing (CI's sanitizer stage failed once on 4 misses of
// 2048). A page that is not cached is read in by the lock, in this process's cgroup.
class PinnedFile {
 public:
  PinnedFile(const std::string& path, size_t bytes) : bytes_(bytes) {
    const int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    void* m = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return;
    map_ = m;
    ok_ = mlock(m, bytes) == 0;
  }
  ~PinnedFile() {
    if (map_ != nullptr) munmap(map_, bytes_);  // unlocks
  }
  PinnedFile(const PinnedFile&) = delete;
  PinnedFile& operator=(const PinnedFile&) = delete;
  bool ok() const { return ok_; }

 private:
  size_t bytes_;
  void* map_ = nullptr;
  bool ok_ = false;
};

// What a child in a cgroup does: `prepare` everything but the measured work (false:
// it failed), then `work` (false: it failed).
struct Work {
  std::function<bool()> prepare, work;
};

// A child in `cg` that works in steps the test sees: ready (prepared, its own
// mappings faulted in, see the top of the file), then the work on Run(), then exit
// on destruction (killed if it hangs).
class StepChild {
 public:
  StepChild(const TestCgroup& cg, const Work& w) {
    if (pipe(to_) != 0 || pipe(from_) != 0) return;
    pid_ = SpawnInCgroup(cg, [&] {
      close(to_[1]);  // so that the test closing its end is an EOF here
      close(from_[0]);
      char c = 0;
      if (!w.prepare()) _exit(20);
      PrefaultOwnMappings();
      if (write(from_[1], "r", 1) != 1 || read(to_[0], &c, 1) != 1) _exit(21);
      const bool ok = w.work();
      if (write(from_[1], ok ? "d" : "e", 1) != 1) _exit(22);
      if (read(to_[0], &c, 1) < 0) _exit(23);
      _exit(0);
    });
    close(to_[0]);
    close(from_[1]);
    ready_ = Await('r');
  }
  ~StepChild() {
    if (pid_ > 0) {
      close(to_[1]);  // EOF lets it exit
      if (testing::WaitChild(pid_, 10000) != 0) ADD_FAILURE() << "child " << pid_ << " failed";
    }
    close(from_[0]);
  }
  StepChild(const StepChild&) = delete;
  StepChild& operator=(const StepChild&) = delete;
  bool ready() const { return ready_; }
  /// Does the work; true when it succeeded.
  bool Run() { return write(to_[1], "g", 1) == 1 && Await('d'); }

 private:
  bool Await(char want) {
    char c = 0;
    return pid_ > 0 && read(from_[0], &c, 1) == 1 && c == want;
  }
  int to_[2] = {-1, -1}, from_[2] = {-1, -1};
  pid_t pid_ = -1;
  bool ready_ = false;
};

enum class Access { kRead, kMmap };

// Reading all of `path`, after the same loop over `warm_path` (a small cached file).
// O_NOATIME: the first read after the write would update atime otherwise, which is
// the filesystem's business, not the reader's.
Work ReadFile(const std::string& path, const std::string& warm_path, Access how) {
  struct State {
    int fd = -1;
    char* buf = nullptr;
    const char* map = nullptr;
  };
  auto st = std::make_shared<State>();
  return {[=] {
            st->fd = open(path.c_str(), O_RDONLY | O_NOATIME);
            const int warm = open(warm_path.c_str(), O_RDONLY | O_NOATIME);
            if (st->fd < 0 || warm < 0) return false;
            st->buf = static_cast<char*>(std::malloc(kReadBytes));
            if (how == Access::kRead) return ReadAll(warm, st->buf) > 0;
            void* p = mmap(nullptr, kFileBytes, PROT_READ, MAP_SHARED, st->fd, 0);
            void* w = mmap(nullptr, kPage * 64, PROT_READ, MAP_SHARED, warm, 0);
            if (p == MAP_FAILED || w == MAP_FAILED) return false;
            st->map = static_cast<const char*>(p);
            TouchAll(static_cast<const char*>(w), kPage * 64);
            return true;
          },
          [=] {
            if (how == Access::kRead) return ReadAll(st->fd, st->buf) == kFileBytes;
            TouchAll(st->map, kFileBytes);
            return true;
          }};
}

struct Counts {
  double accesses = 0, misses = 0;
};

Counts CountsOf(Collector& c, const TestCgroup& cg) {
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  Counts out;
  if (const auto* a =
          FindSample(fams, "kmon_page_cache_accesses_total", {{"container", cg.name()}}))
    out.accesses = a->counter.value;
  if (const auto* m = FindSample(fams, "kmon_page_cache_misses_total", {{"container", cg.name()}}))
    out.misses = m->counter.value;
  return out;
}

Config PagecacheConfigYaml(const std::string& section) {
  ConfigResult r = ParseConfig("collectors:\n  pagecache: " + section + "\n", ProcessEnv());
  EXPECT_TRUE(r.problems.empty());
  return r.config.value_or(DefaultConfig());
}

class PagecacheRootTest : public testing::CollectorRootTest {
 protected:
  void SetUp() override {
    CollectorRootTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    struct statfs fs {};
    ASSERT_EQ(statfs(KMON_BINARY_DIR, &fs), 0);
    ASSERT_NE(fs.f_type, kTmpfsMagic) << KMON_BINARY_DIR << " is tmpfs: no disk behind its cache";
    ASSERT_TRUE(file_.ok()) << "cannot write " << file_.path();
    ASSERT_TRUE(warm_.ok());
  }

  // The reader's counts over its measured access: after minus before.
  Counts Measure(Collector& c, Access how, const TestCgroup& cg, bool cold) {
    StepChild reader(cg, ReadFile(file_.path(), warm_.path(), how));
    EXPECT_TRUE(reader.ready());
    if (cold) {
      EXPECT_TRUE(file_.Drop());
      EXPECT_EQ(file_.Resident(), 0) << "the file is not cold: some pages stayed cached";
      return Delta(c, cg, reader);
    }
    const PinnedFile pinned(file_.path(), kFileBytes);
    EXPECT_TRUE(pinned.ok()) << "cannot lock " << file_.path() << " in the page cache";
    EXPECT_EQ(file_.Resident(), static_cast<int64_t>(kFilePages)) << "the file is not hot";
    return Delta(c, cg, reader);
  }

  static Counts Delta(Collector& c, const TestCgroup& cg, StepChild& child) {
    const Counts before = CountsOf(c, cg);
    EXPECT_TRUE(child.Run());
    const Counts after = CountsOf(c, cg);
    return {after.accesses - before.accesses, after.misses - before.misses};
  }

  DiskFile file_{kFileBytes};
  DiskFile warm_{kPage * 64};
};

TEST_F(PagecacheRootTest, ReadColdMissesEveryPageAndReadHotHitsEveryPage) {
  PagecacheCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  absl::Status st = c.Start(DefaultConfig());
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(c.choice().hooks, PagecacheHooks::kTracepoints);
  TestCgroup cold_cg, hot_cg;

  // Cold: every page is asked for once (eight 1 MiB reads; the kernel's batches of
  // the same read count once), and readahead adds exactly the file: it stops at the
  // end of the file and the reader reads it all, so no page is added that is not read.
  const Counts cold = Measure(c, Access::kRead, cold_cg, /*cold=*/true);
  EXPECT_EQ(cold.accesses, kFilePages);
  EXPECT_EQ(cold.misses, kFilePages);
  EXPECT_EQ(file_.Resident(), static_cast<int64_t>(kFilePages));

  // Hot, from another cgroup: the same pages asked for, nothing added.
  const Counts hot = Measure(c, Access::kRead, hot_cg, /*cold=*/false);
  EXPECT_EQ(hot.accesses, kFilePages);
  EXPECT_EQ(hot.misses, 0);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

TEST_F(PagecacheRootTest, MmapColdMissesEveryPageAndMmapHotHitsEveryPage) {
  PagecacheCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DefaultConfig()).ok());
  TestCgroup cold_cg, hot_cg;

  // Cold: the first fault of each read-around window reads it in (mm_filemap_fault,
  // one page), the next fault maps the window (mm_filemap_map_pages, 16 pages of
  // 64 KiB fault-around) with that page not counted again; read-around and async
  // readahead add each page of the file once, in the reader's context.
  const Counts cold = Measure(c, Access::kMmap, cold_cg, /*cold=*/true);
  EXPECT_EQ(cold.accesses, kFilePages);
  EXPECT_EQ(cold.misses, kFilePages);

  // Hot: one fault per fault-around window maps all of it; the windows tile the file.
  const Counts hot = Measure(c, Access::kMmap, hot_cg, /*cold=*/false);
  EXPECT_EQ(hot.accesses, kFilePages);
  EXPECT_EQ(hot.misses, 0);
}

TEST_F(PagecacheRootTest, AWriteThatCreatesPagesCountsThemAsAccessedAndMissed) {
  PagecacheCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(DefaultConfig()).ok());
  TestCgroup cg;
  const std::string path = file_.path() + ".new";
  struct Remove {
    std::string path;
    ~Remove() { unlink(path.c_str()); }
  } remove{path};
  // 1 MiB appended to a new file: each page is added (a miss) and dirtied (an access)
  // exactly once, whatever the size of the folios the filesystem makes for it.
  int fd = -1;
  std::vector<char> buf(kReadBytes, 'x');
  StepChild writer(cg, {[&] {
                          fd = open(path.c_str(), O_WRONLY | O_CREAT | O_NOATIME, 0600);
                          return fd >= 0 && pwrite(fd, buf.data(), 1, 0) == 1;
                        },
                        [&] {
                          return pwrite(fd, buf.data(), buf.size(), kPage) ==
                                 static_cast<ssize_t>(buf.size());
                        }});
  ASSERT_TRUE(writer.ready());
  const Counts w = Delta(c, cg, writer);
  EXPECT_EQ(w.misses, kReadBytes / kPage);
  EXPECT_EQ(w.accesses, kReadBytes / kPage);
}

TEST_F(PagecacheRootTest, WatchedCgroupsControlMapFiltersWithoutReload) {
  PagecacheCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = DefaultConfig();
  ASSERT_TRUE(c.Start(cfg).ok());
  cfg.targets.host_processes = false;  // only pod cgroups: ours is none
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  TestCgroup cg;
  const Counts unwatched = Measure(c, Access::kRead, cg, /*cold=*/false);
  EXPECT_EQ(unwatched.accesses, 0);
  cfg.targets.host_processes = true;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  const Counts watched = Measure(c, Access::kRead, cg, /*cold=*/false);
  EXPECT_EQ(watched.accesses, kFilePages);
}

// The cachestat twin through the features seam: the running kernel's BTF has the
// functions, so the collector tries the fentry and kprobe twins; this kernel is
// locked down (fentry refused) and has no kprobe events (attach refused), so it must
// come up on the tracepoints, count, and say in the log which hooks and why.
TEST_F(PagecacheRootTest, CachestatTwinRefusedHereLeavesItCountingOnTracepoints) {
  PagecacheCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  const uint32_t before = testing::MaxBpfProgramId();
  ::testing::internal::CaptureStderr();
  absl::Status st = c.Start(PagecacheConfigYaml("{hooks: cachestat}"));
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(st.ok()) << st << "\n" << log;
  const PagecacheChoice choice = c.choice();
  if (choice.hooks == PagecacheHooks::kCachestat) {
    GTEST_SKIP() << "this kernel lets BPF attach to folio_mark_accessed (" << choice.twin
                 << "): the refusal this test is about cannot happen here";
  }
  EXPECT_EQ(choice.requested, PagecacheHooks::kCachestat);
  EXPECT_NE(choice.reason.find("fentry: "), std::string::npos) << choice.reason;
  EXPECT_NE(choice.reason.find("kprobe: "), std::string::npos) << choice.reason;
  EXPECT_NE(log.find("cachestat hooks unavailable; counting on tracepoints"), std::string::npos)
      << log;
  EXPECT_NE(log.find("hooks=tracepoints"), std::string::npos) << log;
  // The tracepoint programs are what is loaded, none of the twin's.
  EXPECT_EQ(testing::BpfProgramIds("kmon_pc_read", before).size(), 1u);
  EXPECT_EQ(testing::BpfProgramIds("kmon_pc_fault", before).size(), 1u);
  EXPECT_TRUE(testing::BpfProgramIds("kmon_pc_mpa_fe", before).empty());
  EXPECT_TRUE(testing::BpfProgramIds("kmon_pc_mpa_kp", before).empty());
  TestCgroup cg;
  const Counts hot = Measure(c, Access::kRead, cg, /*cold=*/false);
  EXPECT_EQ(hot.accesses, kFilePages);
  EXPECT_EQ(hot.misses, 0);
}

// Features that have no kernel BTF to show (as on a kernel without
// CONFIG_DEBUG_INFO_BTF): the twin is not tried, the reason says why.
class NoBtfFeatures : public KernelFeatures {
 public:
  absl::StatusOr<const btf*> VmlinuxBtf() override {
    return absl::FailedPreconditionError("load vmlinux BTF: No such file or directory");
  }
  void Release() override {}
};

TEST_F(PagecacheRootTest, FeaturesWithoutTheFunctionsKeepItOnTracepoints) {
  NoBtfFeatures features;
  PagecacheCollector c(
      {.workloads = workloads_.get(), .watched = watched_.get(), .features = &features});
  absl::Status st = c.Start(PagecacheConfigYaml("{hooks: cachestat}"));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(c.choice().hooks, PagecacheHooks::kTracepoints);
  EXPECT_EQ(c.choice().reason, "load vmlinux BTF: No such file or directory");
}

// A kernel whose BTF has neither the functions nor the v6.11 filemap tracepoints
// (an empty BTF stands for it): nothing can count accesses, and Start says what.
class EmptyBtfFeatures : public KernelFeatures {
 public:
  EmptyBtfFeatures() : btf_(btf__new_empty()) {}
  ~EmptyBtfFeatures() override { btf__free(btf_); }
  absl::StatusOr<const btf*> VmlinuxBtf() override { return btf_; }
  void Release() override {}

 private:
  btf* btf_;
};

TEST_F(PagecacheRootTest, KernelWithoutTheTracepointsFailsToStartSayingWhich) {
  EmptyBtfFeatures features;
  PagecacheCollector c(
      {.workloads = workloads_.get(), .watched = watched_.get(), .features = &features});
  absl::Status st = c.Start(PagecacheConfigYaml("{hooks: cachestat}"));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(),
            "collector=pagecache: the kernel has no tracepoint filemap:mm_filemap_get_pages "
            "(Linux 6.11+); cachestat hooks: the kernel has no function folio_mark_accessed to "
            "hook");
  // Still the real kernel underneath: with its features the same collector starts.
  PagecacheCollector real({.workloads = workloads_.get(), .watched = watched_.get()});
  EXPECT_TRUE(real.Start(DefaultConfig()).ok());
}

}  // namespace
}  // namespace kmon
