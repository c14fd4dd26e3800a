// The off-CPU profiler against fake kernel maps and a fake /proc: naming stacks,
// keeping exited processes' time (once each when there is no room), telling a reused
// PID from the process that had it, dropping gone cgroups, windows over snapshots,
// sweeping the stack map (when full and after collisions), interning frames, and
// parsing /debug/offcpu requests.
#include "collectors/offcpu/offcpu_profiler.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "collectors/offcpu/offcpu_service.h"

namespace kmon {
namespace {

using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kStart = 1'000'000'000;  // processes' start time, unless a test says

offcpu_stack_key Key(uint64_t cg, uint32_t tgid, int32_t k, int32_t u, uint64_t start = kStart,
                     const char* comm = "") {
  offcpu_stack_key key{};
  std::strncpy(key.comm, comm, sizeof key.comm);
  key.cgroup_id = cg;
  key.start_ns = start;
  key.tgid = tgid;
  key.kstack = k;
  key.ustack = u;
  return key;
}

bool Same(const offcpu_stack_key& a, const offcpu_stack_key& b) {
  return a.cgroup_id == b.cgroup_id && a.start_ns == b.start_ns && a.tgid == b.tgid &&
         a.kstack == b.kstack && a.ustack == b.ustack &&
         std::memcmp(a.comm, b.comm, sizeof a.comm) == 0;
}

struct FakeKernel {
  std::vector<OffCpuRawEntry> entries;
  std::map<int32_t, std::vector<uint64_t>> stacks;
  std::vector<int32_t> held;
  std::vector<int32_t> deleted_stacks;
  uint64_t collisions = 0;
  size_t capacity = 8;
  int takes = 0;
  int stack_id_reads = 0;
  void Add(const offcpu_stack_key& k, uint64_t ns, uint64_t count) {
    for (auto& e : entries) {
      if (Same(e.key, k)) {
        e.totals.ns += ns;
        e.totals.count += count;
        return;
      }
    }
    entries.push_back({k, {ns, count}});
  }
};

class FakeSource : public OffCpuStackSource {
 public:
  explicit FakeSource(FakeKernel* k) : k_(k) {}
  absl::Status Read(std::vector<OffCpuRawEntry>* out) override {
    *out = k_->entries;
    return absl::OkStatus();
  }
  std::vector<uint64_t> Stack(int32_t id) override {
    auto it = k_->stacks.find(id);
    return it == k_->stacks.end() ? std::vector<uint64_t>{} : it->second;
  }
  std::optional<OffCpuTotals> Take(const offcpu_stack_key& key) override {
    ++k_->takes;
    for (auto it = k_->entries.begin(); it != k_->entries.end(); ++it) {
      if (Same(it->key, key)) {
        OffCpuTotals t = it->totals;
        k_->entries.erase(it);
        return t;
      }
    }
    return std::nullopt;
  }
  std::vector<int32_t> StackIds() override {
    ++k_->stack_id_reads;
    std::vector<int32_t> ids;
    for (const auto& [id, s] : k_->stacks) ids.push_back(id);
    return ids;
  }
  std::vector<int32_t> StackIdsHeldByThreads() override { return k_->held; }
  void DeleteStack(int32_t id) override {
    k_->stacks.erase(id);
    k_->deleted_stacks.push_back(id);
  }
  size_t StackCapacity() const override { return k_->capacity; }
  uint64_t StackCollisions() override { return k_->collisions; }

 private:
  FakeKernel* k_;
};

struct FakeProc {
  std::map<uint32_t, uint64_t> alive;  // tgid -> start of the process that has it now
  std::set<std::pair<uint32_t, uint64_t>> captured;
  std::map<uint64_t, std::string> kernel;  // ip -> name
  // start -> ip -> name, for captured processes (a reused PID maps other code)
  std::map<uint64_t, std::map<uint64_t, std::string>> user;
  int forgets = 0;
};

class FakeFrames : public FrameResolver {
 public:
  explicit FakeFrames(FakeProc* p) : p_(p) {}
  void Capture(const ProcessId& p) override {
    if (Alive(p)) p_->captured.insert({p.tgid, p.start_ns});
  }
  bool Alive(const ProcessId& p) override {
    auto it = p_->alive.find(p.tgid);
    return it != p_->alive.end() && it->second == p.start_ns;
  }
  void Forget(const ProcessId& p) override {
    ++p_->forgets;
    p_->captured.erase({p.tgid, p.start_ns});
  }
  std::string Kernel(uint64_t ip) override {
    auto it = p_->kernel.find(ip);
    return it == p_->kernel.end() ? kUnknownFrame : it->second;
  }
  std::string User(const ProcessId& p, uint64_t ip, bool leaf) override {
    if (!p_->captured.count({p.tgid, p.start_ns})) return kUnknownFrame;
    auto it = p_->user[p.start_ns].find(ip);
    return it == p_->user[p.start_ns].end() ? kUnknownFrame : it->second;
  }

 private:
  FakeProc* p_;
};

class MutablePaths : public CgroupPathSource {
 public:
  explicit MutablePaths(std::unordered_map<uint64_t, std::string>* paths) : paths_(paths) {}
  std::unordered_map<uint64_t, std::string> Scan() override { return *paths_; }

 private:
  std::unordered_map<uint64_t, std::string>* paths_;
};

class OffCpuProfilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    paths_ = {{1, "/"}, {10, "/system.slice/a.service"}, {20, "/system.slice/b.service"}};
    workloads_ = std::make_unique<WorkloadResolver>(std::make_unique<MutablePaths>(&paths_),
                                                    nullptr, std::chrono::milliseconds(0));
    // Kernel stack 1 as bpf_get_stackid gives it from sched_switch: innermost first,
    // starting with the tracing machinery.
    kernel_.stacks[1] = {0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17};
    proc_.kernel = {{0x11, "bpf_prog_abc_kmon_sched_switch"},
                    {0x12, "bpf_trace_run4"},
                    {0x13, "__traceiter_sched_switch"},
                    {0x14, "__schedule"},
                    {0x15, "schedule"},
                    {0x16, "do_nanosleep"},
                    {0x17, "entry_SYSCALL_64"}};
    kernel_.stacks[2] = {0x21, 0x22, 0x23};  // user stack: leaf first
    proc_.user[kStart] = {{0x21, "sleepy"}, {0x22, "work"}, {0x23, "main"}};
    proc_.alive = {{100, kStart}, {200, kStart}};
    MakeProfiler(OffCpuProfiler::kMaxRetired);
  }

  void MakeProfiler(size_t max_retired) {
    profiler_ = std::make_unique<OffCpuProfiler>(std::make_unique<FakeSource>(&kernel_),
                                                 std::make_unique<FakeFrames>(&proc_),
                                                 workloads_.get(), t0_, max_retired);
  }

  std::string Folded(const OffCpuQuery& q, Clock::time_point now) {
    auto r = profiler_->Query(q, now);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? RenderFolded(r->stacks) : "";
  }

  std::unordered_map<uint64_t, std::string> paths_;
  std::unique_ptr<WorkloadResolver> workloads_;
  FakeKernel kernel_;
  FakeProc proc_;
  Clock::time_point t0_ = Clock::now();
  std::unique_ptr<OffCpuProfiler> profiler_;
};

TEST_F(OffCpuProfilerTest, NamesStacksWithoutTheTracingFrames) {
  kernel_.Add(Key(10, 100, 1, 2), 5'000'000, 2);
  EXPECT_EQ(
      Folded({}, t0_ + seconds(1)),
      "a.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 5000000\n");
  EXPECT_TRUE(proc_.captured.count({100, kStart}));  // maps captured at first sight
}

TEST_F(OffCpuProfilerTest, KernelThreadsAndMissingStacks) {
  kernel_.Add(Key(1, 300, 1, KMON_CPU_NO_STACK), 7, 1);  // no user stack (kernel thread)
  kernel_.Add(Key(1, 200, 1, 99), 9, 1);                 // user stack id not in the map
  EXPECT_EQ(Folded({}, t0_ + seconds(1)),
            "/;[unknown];entry_SYSCALL_64;do_nanosleep;schedule;__schedule 9\n"
            "/;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 7\n");
}

TEST_F(OffCpuProfilerTest, ExitedProcessesKeepTheirTimeInUserSpace) {
  kernel_.Add(Key(10, 100, 1, 2), 1000, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(1)).ok());
  kernel_.Add(Key(10, 100, 1, 2), 500, 1);  // its last episode, just before it exits
  proc_.alive.erase(100);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(2)).ok());
  EXPECT_TRUE(kernel_.entries.empty());  // moved out of the kernel map...
  EXPECT_EQ(kernel_.takes, 1);
  EXPECT_FALSE(proc_.captured.count({100, kStart}));  // ...and its maps let go
  // ...with the final value read at the delete, named from the maps captured earlier.
  EXPECT_EQ(Folded({}, t0_ + seconds(3)),
            "a.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 1500\n");
  // Another process with the same stack in the same cgroup adds to the same line.
  proc_.alive[101] = kStart;
  kernel_.Add(Key(10, 101, 1, 2), 10, 1);
  EXPECT_EQ(Folded({}, t0_ + seconds(4)),
            "a.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 1510\n");
}

TEST_F(OffCpuProfilerTest, FiltersByWorkload) {
  kernel_.Add(Key(10, 100, 1, 2), 1000, 1);
  kernel_.Add(Key(20, 200, 1, 2), 2000, 1);
  OffCpuQuery q;
  q.container = "b.service";
  EXPECT_EQ(Folded(q, t0_ + seconds(1)),
            "b.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 2000\n");
  q.namespace_ = "prod";
  EXPECT_EQ(Folded(q, t0_ + seconds(1)), "");
}

TEST_F(OffCpuProfilerTest, GoneCgroupsAreDroppedAfterAWhile) {
  kernel_.Add(Key(20, 200, 1, 2), 2000, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(1)).ok());
  paths_.erase(20);
  workloads_->Refresh();  // the exporter rescans every interval
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(2)).ok());
  EXPECT_EQ(kernel_.entries.size(), 1u);  // missing for a moment only: kept
  EXPECT_NE(Folded({}, t0_ + seconds(3)).find("[cgroup 20];main"), std::string::npos);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(8)).ok());
  EXPECT_TRUE(kernel_.entries.empty());
  EXPECT_EQ(Folded({}, t0_ + seconds(9)), "");
}

TEST_F(OffCpuProfilerTest, WindowsComeFromSnapshots) {
  const auto key = Key(10, 100, 1, 2);
  kernel_.Add(key, 100, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(5)).ok());  // snapshot: 100
  kernel_.Add(key, 20, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(10)).ok());  // snapshot: 120
  kernel_.Add(key, 3, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(15)).ok());  // snapshot: 123
  kernel_.Add(key, 4000, 1);                                // since the last snapshot

  auto total = [&](std::optional<int> window_s, int at_s, int64_t* covered_s = nullptr) {
    OffCpuQuery q;
    if (window_s) q.window = seconds(*window_s);
    auto r = profiler_->Query(q, t0_ + seconds(at_s));
    EXPECT_TRUE(r.ok());
    uint64_t ns = 0;
    for (const auto& s : r->stacks) ns += s.ns;
    if (covered_s) *covered_s = std::chrono::duration_cast<seconds>(r->covered).count();
    return ns;
  };
  int64_t covered = 0;
  EXPECT_EQ(total(std::nullopt, 17, &covered), 4123u);
  EXPECT_EQ(covered, 17);
  // The newest snapshot at least 5 s old is the one at 10 s: 123 - 120 + 4000.
  EXPECT_EQ(total(5, 17, &covered), 4003u);
  EXPECT_EQ(covered, 7);
  EXPECT_EQ(total(2, 17, &covered), 4000u);  // from the snapshot at 15 s
  EXPECT_EQ(covered, 2);
  EXPECT_EQ(total(10, 17, &covered), 4023u);  // from 5 s
  EXPECT_EQ(total(60, 17, &covered), 4123u);  // longer than kmon has run: everything
  EXPECT_EQ(covered, 17);
}

TEST_F(OffCpuProfilerTest, OldSnapshotsAgeOut) {
  const auto key = Key(10, 100, 1, 2);
  for (int s = 5; s <= 700; s += 5) {
    kernel_.Add(key, 1, 1);
    ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(s)).ok());
  }
  OffCpuQuery q;
  q.window = seconds(100000);
  auto r = profiler_->Query(q, t0_ + seconds(700));
  ASSERT_TRUE(r.ok());
  // Only 600 s of history are kept: the window reaches back to the oldest kept base,
  // which beyond the last minute lies on a grid of about a minute.
  const int64_t covered = std::chrono::duration_cast<seconds>(r->covered).count();
  EXPECT_GE(covered, 600);
  EXPECT_LE(covered, 660);
  ASSERT_EQ(r->stacks.size(), 1u);
  EXPECT_EQ(r->stacks[0].ns, static_cast<uint64_t>(covered / 5));  // 1 ns every 5 s
  // 12 deltas of 5 s for the last minute, about one a minute before: not 120.
  EXPECT_LE(profiler_->Deltas(), 12u + 10u);

  // Windows within the last minute still have 5 s resolution...
  q.window = seconds(30);
  r = profiler_->Query(q, t0_ + seconds(700));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::chrono::duration_cast<seconds>(r->covered).count(), 30);
  ASSERT_EQ(r->stacks.size(), 1u);
  EXPECT_EQ(r->stacks[0].ns, 6u);
  // ...and older ones are rounded up to the minute grid, with the time that covers.
  q.window = seconds(200);
  r = profiler_->Query(q, t0_ + seconds(700));
  ASSERT_TRUE(r.ok());
  const int64_t c200 = std::chrono::duration_cast<seconds>(r->covered).count();
  EXPECT_GE(c200, 200);
  EXPECT_LE(c200, 260);
  ASSERT_EQ(r->stacks.size(), 1u);
  EXPECT_EQ(r->stacks[0].ns, static_cast<uint64_t>(c200 / 5));
}

TEST_F(OffCpuProfilerTest, SweepsStackIdsNothingRefersTo) {
  kernel_.stacks[3] = {0x99};
  kernel_.stacks[4] = {0x98};
  kernel_.stacks[5] = {0x97};  // 5 of capacity 8: over a quarter full
  kernel_.held = {4};          // a thread off CPU holds 4
  kernel_.Add(Key(10, 100, 1, 2), 10, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(31)).ok());
  std::sort(kernel_.deleted_stacks.begin(), kernel_.deleted_stacks.end());
  EXPECT_EQ(kernel_.deleted_stacks, (std::vector<int32_t>{3, 5}));
  EXPECT_EQ(kernel_.stacks.size(), 3u);
}

TEST_F(OffCpuProfilerTest, SweepsAfterCollisionsEvenWhenTheMapIsNotFull) {
  kernel_.capacity = 64;
  kernel_.stacks[3] = {0x99};  // 3 of capacity 64: under a quarter full
  kernel_.Add(Key(10, 100, 1, 2), 10, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(31)).ok());
  EXPECT_TRUE(kernel_.deleted_stacks.empty());  // not full, no collisions: nothing swept
  const int reads = kernel_.stack_id_reads;
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(32)).ok());
  EXPECT_EQ(kernel_.stack_id_reads, reads);  // and the map is not walked every second

  kernel_.collisions = 4;  // a new stack found its bucket taken
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(33)).ok());
  EXPECT_EQ(kernel_.deleted_stacks, (std::vector<int32_t>{3}));
  kernel_.stacks[4] = {0x98};
  kernel_.collisions = 5;  // more, but within 5 s of the last sweep: later
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(35)).ok());
  EXPECT_EQ(kernel_.deleted_stacks, (std::vector<int32_t>{3}));
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(38)).ok());
  EXPECT_EQ(kernel_.deleted_stacks, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(kernel_.stacks.size(), 2u);  // 1 and 2, in use by the aggregate
}

TEST_F(OffCpuProfilerTest, ExitedProcessesWithNoRoomAreCountedOnce) {
  MakeProfiler(/*max_retired=*/1);
  kernel_.stacks[3] = {0x23};  // a second user stack: "main" alone
  kernel_.Add(Key(10, 100, 1, 2), 1000, 1);
  kernel_.Add(Key(10, 100, 1, 3), 2000, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(1)).ok());
  proc_.alive.erase(100);
  for (int s = 2; s <= 6; ++s) ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(s)).ok());
  // One aggregate found room, the other stays in the kernel map: counted once, not
  // once a second, and the process forgotten once.
  EXPECT_EQ(profiler_->RetiredDropped(), 1u);
  EXPECT_EQ(kernel_.entries.size(), 1u);
  EXPECT_EQ(kernel_.takes, 1);
  EXPECT_EQ(proc_.forgets, 1);
  // Both still count where they are.
  auto r = profiler_->Query({}, t0_ + seconds(7));
  ASSERT_TRUE(r.ok());
  uint64_t ns = 0;
  for (const auto& st : r->stacks) ns += st.ns;
  EXPECT_EQ(ns, 3000u);
  // Once there is room (the retired one's cgroup is gone), the stuck one moves too.
  kernel_.Add(Key(20, 200, 1, 2), 5, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(8)).ok());
  proc_.alive.erase(200);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(9)).ok());
  EXPECT_EQ(profiler_->RetiredDropped(), 2u);  // 200's, once
  paths_.erase(10);
  workloads_->Refresh();
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(10)).ok());
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(16)).ok());  // cgroup 10 gone: room again
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(17)).ok());
  EXPECT_TRUE(kernel_.entries.empty());  // 200's moved to user space
  EXPECT_EQ(profiler_->RetiredDropped(), 2u);
  EXPECT_EQ(proc_.forgets, 2);
  EXPECT_EQ(Folded({}, t0_ + seconds(18)),
            "b.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 5\n");
}

TEST_F(OffCpuProfilerTest, AReusedPidIsAnotherProcess) {
  constexpr uint64_t kLater = 9'000'000'000;
  proc_.user[kLater] = {{0x21, "other_leaf"}, {0x22, "other_main"}, {0x23, "other_start"}};
  kernel_.Add(Key(10, 100, 1, 2), 1000, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(1)).ok());
  // Process 100 exits and a new process gets PID 100; it blocks at the same addresses
  // (another binary), under a key of its own.
  proc_.alive[100] = kLater;
  kernel_.Add(Key(10, 100, 1, 2, kLater), 30, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(2)).ok());
  // The old one's aggregate retired (its PID answers, but with another start time)...
  EXPECT_EQ(kernel_.takes, 1);
  ASSERT_EQ(kernel_.entries.size(), 1u);
  EXPECT_EQ(kernel_.entries[0].key.start_ns, kLater);
  EXPECT_FALSE(proc_.captured.count({100, kStart}));
  // ...and the new one is named from its own maps, not the old process's.
  EXPECT_EQ(Folded({}, t0_ + seconds(3)),
            "a.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 1000\n"
            "a.service;other_start;other_main;other_leaf;entry_SYSCALL_64;do_nanosleep;schedule;"
            "__schedule 30\n");
}

TEST_F(OffCpuProfilerTest, FramesAreStoredOnceAndLostStacksSaySo) {
  kernel_.stacks[3] = {0x22, 0x23};  // "work;main": frames shared with stack 2
  kernel_.Add(Key(10, 100, 1, 2), 10, 1);
  kernel_.Add(Key(10, 100, 1, 3), 20, 1);
  kernel_.Add(Key(20, 200, 1, 2), 30, 1);                        // same named stack, other cgroup
  kernel_.Add(Key(20, 200, 1, KMON_CPU_STACK_COLLIDED), 40, 1);  // the user stack did not fit
  kernel_.Add(Key(20, 200, 1, KMON_CPU_STACK_NO_ROOM), 2, 1);    // nor this one
  EXPECT_EQ(Folded({}, t0_ + seconds(1)),
            "a.service;main;work;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 20\n"
            "a.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 10\n"
            "b.service;[stack lost];entry_SYSCALL_64;do_nanosleep;schedule;__schedule 42\n"
            "b.service;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;__schedule 30\n");
  EXPECT_EQ(profiler_->NamedStacks(), 3u);
  // sleepy, work, main, [stack lost], and the four kernel frames: each once.
  EXPECT_EQ(profiler_->InternedFrames(), 8u);
}

// The process name comes right after the workload; a process renamed between two
// episodes (prctl PR_SET_NAME) is two stacks.
TEST_F(OffCpuProfilerTest, TheProcessNameFollowsTheWorkload) {
  kernel_.Add(Key(10, 100, 1, 2, kStart, "sleeper"), 30, 1);
  kernel_.Add(Key(10, 100, 1, 2, kStart, "renamed;x"), 12, 1);
  auto r = profiler_->Query({}, t0_ + seconds(1));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->stacks.size(), 2u);
  EXPECT_EQ(r->stacks[0].process, "sleeper");
  EXPECT_EQ(RenderFolded(r->stacks),
            "a.service;renamed:x;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;"
            "__schedule 12\n"
            "a.service;sleeper;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;"
            "__schedule 30\n");
}

// Reset empties the kernel's maps and forgets what was seen: a query covers only
// what came after (an on-demand window).
TEST_F(OffCpuProfilerTest, ResetStartsAfresh) {
  kernel_.Add(Key(10, 100, 1, 2), 1000, 1);
  ASSERT_TRUE(profiler_->Refresh(t0_ + seconds(5)).ok());
  profiler_->Reset(t0_ + seconds(7));
  EXPECT_TRUE(kernel_.entries.empty());
  EXPECT_TRUE(kernel_.stacks.empty());
  EXPECT_EQ(Folded({}, t0_ + seconds(8)), "");
  kernel_.stacks[1] = {0x14, 0x15};  // new stacks, ids reused
  kernel_.stacks[2] = {0x23};
  kernel_.Add(Key(10, 100, 1, 2), 40, 1);
  auto r = profiler_->Query({}, t0_ + seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->covered, seconds(3));
  EXPECT_EQ(RenderFolded(r->stacks), "a.service;main;schedule;__schedule 40\n");
}

TEST(OnDemandWindowTest, OneWindowAtATime) {
  OnDemandWindow w;
  const auto t = Clock::now();
  Clock::duration left{};
  EXPECT_FALSE(w.open());
  ASSERT_TRUE(w.Begin(t, seconds(30), &left));
  EXPECT_TRUE(w.open());
  EXPECT_EQ(w.deadline(), t + seconds(30));
  EXPECT_FALSE(w.Due(t + seconds(29)));
  EXPECT_TRUE(w.Due(t + seconds(30)));
  EXPECT_FALSE(w.Begin(t + seconds(10), seconds(5), &left));  // refused, not joined
  EXPECT_EQ(left, seconds(20));
  EXPECT_FALSE(w.Begin(t + seconds(31), seconds(5), &left));  // due but not ended yet
  EXPECT_EQ(left, Clock::duration::zero());
  w.End();
  EXPECT_FALSE(w.open());
  EXPECT_FALSE(w.Due(t + seconds(40)));
  ASSERT_TRUE(w.Begin(t + seconds(40), seconds(5), &left));
  EXPECT_EQ(w.windows(), 2u);
}

TEST(OffCpuStacksTest, NamesRoundTrip) {
  for (auto s : {OffCpuStacks::kOnDemand, OffCpuStacks::kAlways, OffCpuStacks::kOff}) {
    EXPECT_EQ(ParseOffCpuStacks(OffCpuStacksName(s)), s);
  }
  EXPECT_EQ(ParseOffCpuStacks("true"), std::nullopt);
  EXPECT_EQ(ParseOffCpuStacks("ON_DEMAND"), std::nullopt);
}

// The service's on-demand path against the fakes: the request switches capture on,
// the window sees what the kernel captured meanwhile, capture goes off and the maps
// are empty again; a second request during the window is refused with 429.
class OffCpuOnDemandTest : public OffCpuProfilerTest {
 protected:
  void SetUp() override {
    OffCpuProfilerTest::SetUp();
    const auto stacks = kernel_.stacks;  // emptied with the maps before each window
    service_ = std::make_unique<OffCpuService>(
        std::make_unique<FakeSource>(&kernel_), std::make_unique<FakeFrames>(&proc_),
        workloads_.get(), [this, stacks](bool on) {
          switches_.push_back(on);
          // What the kernel captures while the window is open (under the service's
          // lock: the request thread reads the fake kernel too).
          if (on) {
            kernel_.stacks = stacks;
            kernel_.Add(Key(10, 100, 1, 2, kStart, "sleeper"), 25'000'000, 1);
          }
          capturing_ = on;
          return absl::OkStatus();
        });
  }

  HttpResponse Get(const std::map<std::string, std::string>& query) {
    HttpRequest req;
    req.method = "GET";
    req.query = query;
    return service_->Handler()(req);
  }

  void WaitCapturing() {
    for (int i = 0; i < 5000 && !capturing_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(capturing_);
  }

  std::vector<bool> switches_;
  std::atomic<bool> capturing_{false};
  std::unique_ptr<OffCpuService> service_;
};

TEST_F(OffCpuOnDemandTest, ARequestProfilesTheNextSecondsAndLeavesTheMapsEmpty) {
  kernel_.Add(Key(20, 200, 1, 2), 999, 1);  // before the request: not in its answer
  HttpResponse answer;
  std::thread request([&] { answer = Get({{"seconds", "600"}, {"format", "folded"}}); });
  WaitCapturing();
  const HttpResponse busy = Get({});
  EXPECT_EQ(busy.status, 429);
  const int retry = std::stoi(busy.headers.at("Retry-After"));
  EXPECT_GT(retry, 590);
  EXPECT_LE(retry, 600);
  EXPECT_NE(busy.body.find("one at a time"), std::string::npos) << busy.body;
  service_->EndWindowNow();
  request.join();
  EXPECT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(answer.body,
            "a.service;sleeper;main;work;sleepy;entry_SYSCALL_64;do_nanosleep;schedule;"
            "__schedule 25000000\n");
  EXPECT_EQ(switches_, (std::vector<bool>{true, false}));
  EXPECT_TRUE(kernel_.entries.empty());  // emptied after the window
  EXPECT_TRUE(kernel_.stacks.empty());
  // The next request gets a window of its own.
  std::thread again([&] { answer = Get({{"seconds", "5"}}); });
  WaitCapturing();
  service_->EndWindowNow();
  again.join();
  EXPECT_EQ(answer.status, 200);
  EXPECT_EQ(switches_, (std::vector<bool>{true, false, true, false}));
}

TEST_F(OffCpuOnDemandTest, OffAnswers503AndAModeChangeCutsAWindowShort) {
  service_->SetStacks(OffCpuStacks::kOff);
  const HttpResponse off = Get({});
  EXPECT_EQ(off.status, 503);
  EXPECT_NE(off.body.find("collectors.cpu.stacks: off"), std::string::npos) << off.body;
  EXPECT_TRUE(switches_.empty());

  service_->SetStacks(OffCpuStacks::kOnDemand);
  HttpResponse answer;
  std::thread request([&] { answer = Get({}); });  // the default window: 30 s
  WaitCapturing();
  service_->SetStacks(OffCpuStacks::kAlways);
  request.join();
  EXPECT_EQ(answer.status, 503);
  EXPECT_NE(answer.body.find("changed during the profile"), std::string::npos) << answer.body;
  EXPECT_EQ(switches_, (std::vector<bool>{true, false}));
  // `always` looks back: no window, no switching (the collector keeps capture on).
  EXPECT_EQ(Get({}).status, 200);
  EXPECT_EQ(switches_.size(), 2u);
}

TEST_F(OffCpuOnDemandTest, StopEndsAnOpenWindow) {
  HttpResponse answer;
  std::thread request([&] { answer = Get({{"seconds", "600"}}); });
  WaitCapturing();
  service_->Stop();
  request.join();
  EXPECT_EQ(answer.status, 503);
  EXPECT_EQ(switches_, (std::vector<bool>{true, false}));
  EXPECT_EQ(Get({}).status, 503);
}

TEST(OffCpuRequestTest, ParsesFiltersAndRejectsWhatItDoesNotKnow) {
  HttpRequest req;
  req.query = {{"format", "svg"},
               {"namespace", "shop"},
               {"pod", "cart-1"},
               {"container", "cart"},
               {"seconds", "30"}};
  OffCpuQuery q;
  std::string format;
  ASSERT_TRUE(ParseOffCpuRequest(req, &q, &format).ok());
  EXPECT_EQ(format, "svg");
  EXPECT_EQ(q.namespace_, "shop");
  EXPECT_EQ(q.pod, "cart-1");
  EXPECT_EQ(q.container, "cart");
  EXPECT_EQ(q.window, std::chrono::nanoseconds(seconds(30)));

  HttpRequest plain;
  OffCpuQuery q2;
  ASSERT_TRUE(ParseOffCpuRequest(plain, &q2, &format).ok());
  EXPECT_EQ(format, "folded");
  EXPECT_FALSE(q2.window.has_value());

  for (auto [k, v] :
       {std::pair{"format", "json"}, std::pair{"seconds", "-1"}, std::pair{"seconds", "soon"},
        std::pair{"seconds", "inf"}, std::pair{"bogus", "1"}}) {
    HttpRequest bad;
    bad.query = {{k, v}};
    OffCpuQuery q3;
    EXPECT_EQ(ParseOffCpuRequest(bad, &q3, &format).code(), absl::StatusCode::kInvalidArgument)
        << k << "=" << v;
  }
}

// seconds= is a whole multiple of the snapshot period within the retention, as the
// README says (5..600 in 5 s steps); anything else is refused, never read as a guess.
TEST(OffCpuRequestTest, SecondsIsAFiveSecondStepUpToTheRetention) {
  std::string format;
  for (auto [v, want] : {std::pair{"5", 5}, std::pair{"35", 35}, std::pair{"600", 600}}) {
    HttpRequest req;
    req.query = {{"seconds", v}};
    OffCpuQuery q;
    ASSERT_TRUE(ParseOffCpuRequest(req, &q, &format).ok()) << v;
    EXPECT_EQ(q.window, std::chrono::nanoseconds(seconds(want))) << v;
  }
  for (const std::string v : {"1e2", "7", "0", "605", "86400", "30s", "30.0", "+30", ""}) {
    HttpRequest req;
    req.query = {{"seconds", v}};
    OffCpuQuery q;
    const absl::Status st = ParseOffCpuRequest(req, &q, &format);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << v;
    EXPECT_EQ(st.message(), "seconds: want a multiple of 5 from 5 to 600, got \"" + v + "\"");
    EXPECT_FALSE(q.window.has_value()) << v;
  }
}

TEST(OffCpuRequestTest, ResponsesCarryTheirTypeAndWindow) {
  OffCpuResult r;
  r.covered = seconds(35);
  OffCpuStack s;
  s.labels = {"", "", "x.service"};
  s.kernel = {"schedule"};
  s.ns = 42;
  s.count = 1;
  r.stacks = {s};
  auto folded = RenderOffCpuResponse(r, {}, "folded");
  EXPECT_EQ(folded.status, 200);
  EXPECT_EQ(folded.body, "x.service;schedule 42\n");
  EXPECT_EQ(folded.headers["X-Kmon-Window-Seconds"], "35");
  auto svg = RenderOffCpuResponse(r, {}, "svg");
  EXPECT_EQ(svg.content_type, "image/svg+xml");
  EXPECT_NE(svg.body.find("since start, 35 s"), std::string::npos);
  r.on_demand = true;
  EXPECT_NE(RenderOffCpuResponse(r, {}, "svg").body.find("profiled for 35 s"), std::string::npos);
  auto pprof = RenderOffCpuResponse(r, {}, "pprof");
  EXPECT_EQ(pprof.content_type, "application/octet-stream");
  ASSERT_GE(pprof.body.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(pprof.body[0]), 0x1f);
}

}  // namespace
}  // namespace kmon
