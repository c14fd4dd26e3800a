#include "provider/workload.h"

#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace kmon {
namespace {

namespace fs = std::filesystem;

const std::string kUid = "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc";
const std::string kId = "3f1e9a7c5b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
const std::string kOtherId = "aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33bb44cc55dd66";
const std::string kPodSlice =
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
    "0c4b8f6e_1d2a_4c3b_9e8f_123456789abc.slice";

PodMeta CartPod() {
  PodMeta meta;
  meta.namespace_ = "shop";
  meta.name = "cart-7d9f";
  meta.labels = {{"app", "cart"}};
  meta.containers = {{kId, "cart"}};
  return meta;
}

// ---------------------------------------------------------------------------------------
// BuildLabels

TEST(BuildLabelsTest, HostProcessIsNamedByItsUnitOrLeaf) {
  EXPECT_EQ(BuildLabels(ParseCgroupPath("/system.slice/nginx.service"), nullptr),
            (WorkloadLabels{"", "", "nginx.service"}));
  EXPECT_EQ(BuildLabels(ParseCgroupPath("/"), nullptr), (WorkloadLabels{"", "", "/"}));
  EXPECT_EQ(BuildLabels(ParseCgroupPath("/system.slice/docker-" + kId + ".scope"), nullptr),
            (WorkloadLabels{"", "", "docker-3f1e9a7c5b2d"}));
  // Metadata, if someone passes it for a host cgroup, cannot make it a pod.
  PodMeta meta = CartPod();
  EXPECT_EQ(BuildLabels(ParseCgroupPath("/kmon-test-7"), &meta),
            (WorkloadLabels{"", "", "kmon-test-7"}));
}

TEST(BuildLabelsTest, PodWithoutMetadataIsNamedByUidAndShortId) {
  EXPECT_EQ(BuildLabels(ParseCgroupPath(kPodSlice + "/cri-containerd-" + kId + ".scope"), nullptr),
            (WorkloadLabels{"", kUid, "3f1e9a7c5b2d"}));
  EXPECT_EQ(BuildLabels(ParseCgroupPath(kPodSlice), nullptr), (WorkloadLabels{"", kUid, ""}));
}

TEST(BuildLabelsTest, PodWithMetadataUsesNames) {
  PodMeta meta = CartPod();
  EXPECT_EQ(BuildLabels(ParseCgroupPath(kPodSlice + "/cri-containerd-" + kId + ".scope"), &meta),
            (WorkloadLabels{"shop", "cart-7d9f", "cart"}));
  // The sandbox container, or one the watch has not caught up with: the short ID.
  EXPECT_EQ(
      BuildLabels(ParseCgroupPath(kPodSlice + "/cri-containerd-" + kOtherId + ".scope"), &meta),
      (WorkloadLabels{"shop", "cart-7d9f", "aa11bb22cc33"}));
  EXPECT_EQ(BuildLabels(ParseCgroupPath(kPodSlice), &meta),
            (WorkloadLabels{"shop", "cart-7d9f", ""}));
  EXPECT_EQ(BuildLabels(ParseCgroupPath(kPodSlice + "/crio-conmon-" + kId + ".scope"), &meta),
            (WorkloadLabels{"shop", "cart-7d9f", ""}));
}

// ---------------------------------------------------------------------------------------
// mountinfo

// This machine's layout: systemd's hybrid mode, v1 controllers plus v2 at .../unified.
constexpr char kHybridMountinfo[] =
    "21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "30 22 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "31 30 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 "
    "cgroup2 rw,nsdelegate\n"
    "32 30 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup "
    "cgroup rw,xattr,name=systemd\n"
    "35 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup "
    "cgroup rw,memory\n";

// Debian 12 default: only the unified hierarchy, at /sys/fs/cgroup.
constexpr char kPureV2Mountinfo[] =
    "22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "26 21 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "27 21 0:25 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw\n";

TEST(Cgroup2MountTest, Hybrid) {
  EXPECT_EQ(ParseCgroup2MountPoint(kHybridMountinfo), "/sys/fs/cgroup/unified");
}

TEST(Cgroup2MountTest, PureV2) {
  EXPECT_EQ(ParseCgroup2MountPoint(kPureV2Mountinfo), "/sys/fs/cgroup");
}

TEST(Cgroup2MountTest, NoUnifiedHierarchy) {
  EXPECT_EQ(ParseCgroup2MountPoint(""), std::nullopt);
  EXPECT_EQ(ParseCgroup2MountPoint(
                "35 30 0:32 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw\n"
                // "cgroup2" as the source of another filesystem type is not a cgroup2 mount.
                "36 30 0:33 / /mnt/x rw,relatime - tmpfs cgroup2 rw\n"
                "garbage line\n"),
            std::nullopt);
}

TEST(Cgroup2MountTest, NoOptionalFieldsAndEscapedMountPoint) {
  // Zero optional fields (private mount), a space in the path, no trailing newline.
  EXPECT_EQ(ParseCgroup2MountPoint("40 22 0:37 / /mnt/cg\\040two rw,relatime - cgroup2 none rw"),
            "/mnt/cg two");
}

TEST(Cgroup2MountTest, PrefersHierarchyRootOverSubtreeBindMount) {
  // A bind mount of one sub-cgroup comes first; its paths are not relative to the v2 root.
  EXPECT_EQ(ParseCgroup2MountPoint(
                "50 22 0:28 /kubepods.slice /host/kubepods rw,relatime shared:1 - cgroup2 "
                "cgroup2 rw\n"
                "51 22 0:28 / /run/cg rw,relatime shared:1 - cgroup2 cgroup2 rw\n"
                "52 22 0:28 / /sys/fs/cgroup rw,relatime shared:1 master:2 - cgroup2 cgroup2 rw\n"),
            "/sys/fs/cgroup");
  EXPECT_EQ(ParseCgroup2MountPoint(
                "50 22 0:28 /kubepods.slice /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
                "51 22 0:28 / /run/cg rw,relatime - cgroup2 cgroup2 rw\n"),
            "/run/cg");
}

// ---------------------------------------------------------------------------------------
// WorkloadResolver with fakes

// What the fake "filesystem" holds, shared with the test after the resolver takes the source.
struct FakeTree {
  std::mutex mu;
  std::unordered_map<uint64_t, std::string> paths;
  int scans = 0;
};

class FakePathSource : public CgroupPathSource {
 public:
  explicit FakePathSource(std::shared_ptr<FakeTree> tree) : tree_(std::move(tree)) {}
  std::unordered_map<uint64_t, std::string> Scan() override {
    std::lock_guard<std::mutex> lock(tree_->mu);
    ++tree_->scans;
    return tree_->paths;
  }

 private:
  std::shared_ptr<FakeTree> tree_;
};

class FakePods : public PodMetadataSource {
 public:
  std::optional<PodMeta> PodByUid(const std::string& uid) const override {
    std::lock_guard<std::mutex> lock(mu_);
    ++asked_;
    auto it = pods_.find(uid);
    if (it == pods_.end()) return std::nullopt;
    return it->second;
  }
  uint64_t Generation() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }
  void Set(const std::string& uid, PodMeta meta) {
    std::lock_guard<std::mutex> lock(mu_);
    pods_[uid] = std::move(meta);
    ++generation_;
  }
  int Asked() const {
    std::lock_guard<std::mutex> lock(mu_);
    return asked_;
  }

 private:
  mutable std::mutex mu_;
  uint64_t generation_ = 0;
  mutable int asked_ = 0;
  std::map<std::string, PodMeta> pods_;
};

class WorkloadResolverTest : public ::testing::Test {
 protected:
  WorkloadResolverTest() : tree_(std::make_shared<FakeTree>()) {
    tree_->paths = {
        {1, "/"},
        {10, "/system.slice/nginx.service"},
        {20, kPodSlice},
        {21, kPodSlice + "/cri-containerd-" + kId + ".scope"},
    };
  }

  std::unique_ptr<WorkloadResolver> Make(std::chrono::milliseconds interval,
                                         const PodMetadataSource* pods = nullptr) {
    return std::make_unique<WorkloadResolver>(std::make_unique<FakePathSource>(tree_), pods,
                                              interval);
  }
  int Scans() {
    std::lock_guard<std::mutex> lock(tree_->mu);
    return tree_->scans;
  }
  void SetPath(uint64_t id, std::string path) {
    std::lock_guard<std::mutex> lock(tree_->mu);
    tree_->paths[id] = std::move(path);
  }
  void Remove(uint64_t id) {
    std::lock_guard<std::mutex> lock(tree_->mu);
    tree_->paths.erase(id);
  }

  std::shared_ptr<FakeTree> tree_;
};

TEST_F(WorkloadResolverTest, FirstLookupScansOnceAndLabelsEveryKind) {
  auto resolver = Make(std::chrono::hours(1));
  EXPECT_EQ(resolver->CachedCount(), 0u);
  EXPECT_EQ(Scans(), 0);  // lazy: nothing walked before it is needed
  EXPECT_EQ(resolver->Lookup(10), (WorkloadLabels{"", "", "nginx.service"}));
  EXPECT_EQ(Scans(), 1);
  EXPECT_EQ(resolver->CachedCount(), 4u);
  EXPECT_EQ(resolver->Lookup(1), (WorkloadLabels{"", "", "/"}));
  EXPECT_EQ(resolver->Lookup(20), (WorkloadLabels{"", kUid, ""}));
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"", kUid, "3f1e9a7c5b2d"}));
  EXPECT_EQ(Scans(), 1);
}

TEST_F(WorkloadResolverTest, BurstOfUnknownIdsCostsOneScan) {
  auto resolver = Make(std::chrono::hours(1));
  for (uint64_t id = 1000; id < 1100; ++id) EXPECT_EQ(resolver->Lookup(id), std::nullopt);
  EXPECT_EQ(Scans(), 1);
  EXPECT_EQ(resolver->CachedCount(), 4u);
  // A cgroup born after the scan stays unknown until the interval has passed.
  SetPath(30, "/system.slice/late.service");
  EXPECT_EQ(resolver->Lookup(30), std::nullopt);
  EXPECT_EQ(resolver->Describe(30), std::nullopt);
  EXPECT_EQ(Scans(), 1);
}

TEST_F(WorkloadResolverTest, ConcurrentBurstOfUnknownIdsCostsOneScan) {
  auto resolver = Make(std::chrono::hours(1));
  std::vector<std::thread> threads;
  std::atomic<int> found{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; i < 200; ++i) {
        if (resolver->Lookup(5000 + t * 1000 + i)) ++found;
        if (resolver->Lookup(21)) ++found;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(Scans(), 1);
  EXPECT_EQ(found.load(), 8 * 200);  // only id 21 is ever found
  EXPECT_EQ(resolver->CachedCount(), 4u);
}

TEST_F(WorkloadResolverTest, UnknownIdRescansOnceIntervalHasPassed) {
  auto resolver = Make(std::chrono::milliseconds(50));
  EXPECT_EQ(resolver->Lookup(30), std::nullopt);
  EXPECT_EQ(Scans(), 1);
  SetPath(30, "/system.slice/late.service");
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  EXPECT_EQ(resolver->Lookup(30), (WorkloadLabels{"", "", "late.service"}));
  EXPECT_EQ(Scans(), 2);
  EXPECT_EQ(resolver->CachedCount(), 5u);
  // Known ids never rescan, however long it has been.
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  EXPECT_EQ(resolver->Lookup(10), (WorkloadLabels{"", "", "nginx.service"}));
  EXPECT_EQ(Scans(), 2);
}

TEST_F(WorkloadResolverTest, RemovedCgroupDisappearsAfterRescan) {
  auto resolver = Make(std::chrono::milliseconds(0));
  ASSERT_EQ(resolver->Lookup(21), (WorkloadLabels{"", kUid, "3f1e9a7c5b2d"}));
  EXPECT_EQ(resolver->CachedCount(), 4u);
  Remove(21);
  Remove(10);
  // Still cached: nothing has asked for a rescan yet.
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"", kUid, "3f1e9a7c5b2d"}));
  EXPECT_EQ(Scans(), 1);
  // An unknown id triggers the rescan that forgets both dead cgroups.
  EXPECT_EQ(resolver->Lookup(999), std::nullopt);
  EXPECT_EQ(Scans(), 2);
  EXPECT_EQ(resolver->CachedCount(), 2u);
  EXPECT_EQ(resolver->Describe(10), std::nullopt);
  EXPECT_EQ(Scans(), 3);  // interval 0: every miss may rescan
}

TEST_F(WorkloadResolverTest, RefreshRebuildsAndReturnsEveryLiveCgroup) {
  auto resolver = Make(std::chrono::hours(1));
  ASSERT_TRUE(resolver->Lookup(1).has_value());
  Remove(20);
  SetPath(10, "/system.slice/renamed.service");  // same id, new path: parsed afresh
  SetPath(40, "/kubepods/besteffort/pod" + kUid + "/" + kOtherId);
  std::vector<std::pair<uint64_t, CgroupIdentity>> all = resolver->Refresh();
  EXPECT_EQ(Scans(), 2);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].first, 1u);
  EXPECT_EQ(all[0].second.host_name, "/");
  EXPECT_EQ(all[1].first, 10u);
  EXPECT_EQ(all[1].second.host_name, "renamed.service");
  EXPECT_EQ(all[2].first, 21u);
  EXPECT_EQ(all[2].second.container_id, kId);
  EXPECT_EQ(all[2].second.runtime, "containerd");
  EXPECT_EQ(all[3].first, 40u);
  EXPECT_EQ(all[3].second.pod_uid, kUid);
  EXPECT_EQ(all[3].second.qos, "besteffort");
  EXPECT_EQ(all[3].second.container_id, kOtherId);
  EXPECT_EQ(resolver->CachedCount(), 4u);
  EXPECT_EQ(resolver->Lookup(10), (WorkloadLabels{"", "", "renamed.service"}));
  EXPECT_EQ(resolver->Lookup(20), std::nullopt);
  EXPECT_EQ(Scans(), 2);  // 20 is unknown now, but the interval has not passed
}

TEST_F(WorkloadResolverTest, DescribeGivesPathAndIdentity) {
  auto resolver = Make(std::chrono::hours(1));
  auto described = resolver->Describe(21);
  ASSERT_TRUE(described.has_value());
  EXPECT_EQ(described->first, kPodSlice + "/cri-containerd-" + kId + ".scope");
  EXPECT_EQ(described->second.pod_uid, kUid);
  EXPECT_EQ(described->second.qos, "burstable");
  EXPECT_EQ(described->second.container_id, kId);
}

TEST_F(WorkloadResolverTest, PodMetadataIsUsedAsSoonAsItArrives) {
  FakePods pods;
  auto resolver = Make(std::chrono::hours(1), &pods);
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"", kUid, "3f1e9a7c5b2d"}));
  pods.Set(kUid, CartPod());
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"shop", "cart-7d9f", "cart"}));
  EXPECT_EQ(resolver->Lookup(20), (WorkloadLabels{"shop", "cart-7d9f", ""}));
  EXPECT_EQ(resolver->Lookup(10), (WorkloadLabels{"", "", "nginx.service"}));
  EXPECT_EQ(Scans(), 1);  // metadata changes need no rescan
}

// ---------------------------------------------------------------------------------------
// CgroupFsPathSource on an ordinary directory tree (the walk itself needs no cgroupfs)

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "kmon-workload-XXXXXX").string();
    char* made = mkdtemp(pattern.data());
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

uint64_t InodeOf(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return 0;
  return st.st_ino;
}

TEST(CgroupFsPathSourceTest, WalksDirectoriesOnlyWithoutFollowingSymlinks) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty()) << std::strerror(errno);
  const std::string& r = tmp.path();
  fs::create_directories(r + "/a/b/c");
  fs::create_directories(r + "/a/d");
  fs::create_directories(r + "/outside/e");
  { std::ofstream(r + "/a/cgroup.procs") << "1\n"; }
  fs::create_directory_symlink(r + "/outside", r + "/a/link");

  CgroupFsPathSource source(r + "/a");
  EXPECT_EQ(source.root(), r + "/a");
  std::unordered_map<uint64_t, std::string> want = {
      {InodeOf(r + "/a"), "/"},
      {InodeOf(r + "/a/b"), "/b"},
      {InodeOf(r + "/a/b/c"), "/b/c"},
      {InodeOf(r + "/a/d"), "/d"},
  };
  EXPECT_EQ(source.Scan(), want);
}

TEST(CgroupFsPathSourceTest, MissingRootGivesNothing) {
  CgroupFsPathSource source("/nonexistent/kmon/cgroup/root");
  EXPECT_EQ(source.Scan().size(), 0u);
}

TEST(CgroupFsPathSourceTest, DirectoriesVanishingDuringTheWalkDoNotFailIt) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty()) << std::strerror(errno);
  const std::string& r = tmp.path();
  fs::create_directories(r + "/stable/x");
  fs::create_directories(r + "/churn");
  std::atomic<bool> stop{false};
  // Deep, short-lived subtrees so the walk regularly lists a directory that is gone by the
  // time it opens it.
  std::thread churn([&] {
    int n = 0;
    while (!stop.load()) {
      std::string base = r + "/churn/" + std::to_string(n++ % 16);
      std::error_code ec;
      fs::create_directories(base + "/p/q/r", ec);
      fs::remove_all(base, ec);
    }
  });
  const uint64_t root_ino = InodeOf(r);
  const uint64_t stable_ino = InodeOf(r + "/stable");
  const uint64_t x_ino = InodeOf(r + "/stable/x");
  const uint64_t churn_ino = InodeOf(r + "/churn");
  CgroupFsPathSource source(r);
  int complete = 0;
  for (int i = 0; i < 300; ++i) {
    std::unordered_map<uint64_t, std::string> got = source.Scan();
    if (got.count(root_ino) && got[root_ino] == "/" && got.count(stable_ino) &&
        got[stable_ino] == "/stable" && got.count(x_ino) && got[x_ino] == "/stable/x" &&
        got.count(churn_ino) && got[churn_ino] == "/churn") {
      ++complete;
    }
  }
  stop = true;
  churn.join();
  EXPECT_EQ(complete, 300);
}

// ---------------------------------------------------------------------------------------
// The real cgroup v2 filesystem (root only)

// Root tests are skipped for developers without root, but CI runs as root on purpose: a skip
// there would hide a broken test, so it fails instead.
#define KMON_REQUIRE_ROOT()                                                                   \
  do {                                                                                        \
    if (geteuid() != 0) {                                                                     \
      const char* ci = std::getenv("CI");                                                     \
      if (ci != nullptr && std::string(ci) == "true") {                                       \
        FAIL() << "CI=true but not running as root: this test creates cgroups and mounts";    \
      }                                                                                       \
      GTEST_SKIP() << "needs root to create cgroups and mounts (run as root, or set CI=true " \
                      "to make this a failure)";                                              \
    }                                                                                         \
  } while (0)

// Removes the directory however the test ends, so a failed assertion leaves no cgroup behind.
class RmdirGuard {
 public:
  explicit RmdirGuard(std::string path) : path_(std::move(path)) {}
  ~RmdirGuard() { Remove(); }
  RmdirGuard(const RmdirGuard&) = delete;
  RmdirGuard& operator=(const RmdirGuard&) = delete;
  bool Remove() {
    if (path_.empty()) return true;
    bool ok = rmdir(path_.c_str()) == 0;
    path_.clear();
    return ok;
  }

 private:
  std::string path_;
};

class UnmountGuard {
 public:
  explicit UnmountGuard(std::string path) : path_(std::move(path)) {}
  ~UnmountGuard() { umount2(path_.c_str(), MNT_DETACH); }
  UnmountGuard(const UnmountGuard&) = delete;
  UnmountGuard& operator=(const UnmountGuard&) = delete;

 private:
  std::string path_;
};

TEST(RealCgroupFsTest, NewCgroupIsScannedByInodeAndLabelledByName) {
  KMON_REQUIRE_ROOT();
  std::optional<std::string> root = DetectCgroup2Root();
  ASSERT_TRUE(root.has_value()) << "no cgroup2 mount in /proc/self/mountinfo";
  struct statfs sfs;
  ASSERT_EQ(statfs(root->c_str(), &sfs), 0) << std::strerror(errno);
  EXPECT_EQ(static_cast<unsigned long>(sfs.f_type), static_cast<unsigned long>(CGROUP2_SUPER_MAGIC))
      << *root << " is not a cgroup2 filesystem";

  const std::string name = "kmon-test-" + std::to_string(getpid());
  const std::string dir = *root + "/" + name;
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0) << dir << ": " << std::strerror(errno);
  RmdirGuard guard(dir);
  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0) << std::strerror(errno);

  CgroupFsPathSource source(*root);
  std::unordered_map<uint64_t, std::string> scanned = source.Scan();
  ASSERT_EQ(scanned.count(st.st_ino), 1u);
  EXPECT_EQ(scanned[st.st_ino], "/" + name);
  struct stat root_st;
  ASSERT_EQ(stat(root->c_str(), &root_st), 0);
  EXPECT_EQ(scanned[root_st.st_ino], "/");
  // The kernel numbers the v2 root cgroup 1; bpf_get_current_cgroup_id() says 1 for it too.
  EXPECT_EQ(root_st.st_ino, 1u);

  WorkloadResolver resolver(std::make_unique<CgroupFsPathSource>(*root), nullptr,
                            std::chrono::milliseconds(0));
  EXPECT_EQ(resolver.Lookup(st.st_ino), (WorkloadLabels{"", "", name}));
  EXPECT_EQ(resolver.Lookup(1), (WorkloadLabels{"", "", "/"}));

  ASSERT_TRUE(guard.Remove()) << std::strerror(errno);
  resolver.Refresh();
  EXPECT_EQ(resolver.Lookup(st.st_ino), std::nullopt);
}

TEST(RealCgroupFsTest, WalkStaysOnOneFilesystem) {
  KMON_REQUIRE_ROOT();
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty()) << std::strerror(errno);
  const std::string& r = tmp.path();
  fs::create_directories(r + "/mnt");
  fs::create_directories(r + "/kept");
  ASSERT_EQ(mount("kmon-test", (r + "/mnt").c_str(), "tmpfs", 0, "size=64k"), 0)
      << std::strerror(errno);
  UnmountGuard unmount(r + "/mnt");
  fs::create_directories(r + "/mnt/inside");

  std::unordered_map<uint64_t, std::string> want = {
      {InodeOf(r), "/"},
      {InodeOf(r + "/kept"), "/kept"},
  };
  EXPECT_EQ(CgroupFsPathSource(r).Scan(), want);
}

TEST_F(WorkloadResolverTest, LabelsAreBuiltOncePerMetadataGeneration) {
  FakePods pods;
  pods.Set(kUid, CartPod());
  auto resolver = Make(std::chrono::hours(1), &pods);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"shop", "cart-7d9f", "cart"}));
  }
  EXPECT_EQ(pods.Asked(), 1);
  PodMeta renamed = CartPod();
  renamed.containers.begin()->second = "cart-v2";
  pods.Set(kUid, renamed);
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"shop", "cart-7d9f", "cart-v2"}));
  EXPECT_EQ(pods.Asked(), 2);
}

TEST_F(WorkloadResolverTest, AGonePodCgroupKeepsItsNamesForThePodGrace) {
  FakePods pods;
  pods.Set(kUid, CartPod());
  auto resolver = Make(std::chrono::milliseconds(0), &pods);
  WorkloadResolver::Clock::time_point now{};
  resolver->SetClockForTest([&now] { return now; });
  resolver->SetPodGrace(std::chrono::minutes(5));
  ASSERT_TRUE(resolver->Lookup(21).has_value());
  ASSERT_TRUE(resolver->Lookup(10).has_value());
  Remove(21);
  Remove(20);
  Remove(10);
  now += std::chrono::seconds(1);
  resolver->Refresh();  // the scan that sees them gone
  // The host process's cgroup is forgotten at once; the pod's answers for the grace.
  EXPECT_EQ(resolver->Lookup(10), std::nullopt);
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"shop", "cart-7d9f", "cart"}));
  // A gone cgroup is no longer live: the watched-cgroups map is not told of it.
  for (const auto& [id, identity] : resolver->Refresh()) EXPECT_NE(id, 21u);
  now += std::chrono::minutes(5) - std::chrono::seconds(1);
  resolver->Refresh();
  EXPECT_EQ(resolver->Lookup(21), (WorkloadLabels{"shop", "cart-7d9f", "cart"}));
  now += std::chrono::seconds(1);
  // Over without a scan: the lookup itself sees the grace has ended (and needs no walk).
  const int scans = Scans();
  EXPECT_EQ(resolver->Lookup(21), std::nullopt);
  EXPECT_EQ(Scans(), scans);
  EXPECT_EQ(resolver->CachedCount(), 2u);  // "/", and the pod's own cgroup until a scan
  resolver->Refresh();
  EXPECT_EQ(resolver->CachedCount(), 1u);
}

}  // namespace
}  // namespace kmon
