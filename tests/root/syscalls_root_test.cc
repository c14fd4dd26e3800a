// The syscalls collector against the running kernel: a workload in a cgroup of its
// own makes known numbers of syscalls, and kmon must count exactly those, on
// whichever hook the kernel allows (fexit on each syscall's function, else
// tp_btf/sys_exit): each test branches on the probe's answer and asserts in both.
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/log.h"
#include "bpf/syscalls.h"
#include "collectors/bpf_util.h"
#include "collectors/syscalls.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "provider/workload.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::ExporterProcess;
using testing::RunInCgroup;
using testing::SampleValue;
using testing::TestCgroup;

constexpr int kGetppid = 1000;
constexpr int kFailingOpenat = 50;

void MakeCalls(int getppid, int getpid, int failing_openat) {
  for (int i = 0; i < getppid; ++i) syscall(SYS_getppid);
  for (int i = 0; i < getpid; ++i) syscall(SYS_getpid);
  for (int i = 0; i < failing_openat; ++i) {
    syscall(SYS_openat, AT_FDCWD, "/nonexistent/kmon-test", O_RDONLY);
  }
}

// Value of `family` for container `container` and syscall `sc`; -1 when absent.
double Find(const std::vector<prometheus::MetricFamily>& fams, const std::string& family,
            const std::string& container, const std::string& sc) {
  for (const auto& f : fams) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      if (m.label[2].value == container && m.label[3].value == sc) return m.counter.value;
    }
  }
  return -1;
}

Config SyscallConfig(std::vector<std::string> names, const std::string& hook = "auto") {
  std::string yaml =
      "collectors:\n  syscalls:\n    enabled: true\n    hook: " + hook + "\n    syscalls: [";
  for (size_t i = 0; i < names.size(); ++i) yaml += (i ? ", " : "") + names[i];
  yaml += "]\n";
  ConfigResult r = ParseConfig(yaml, ProcessEnv());
  EXPECT_TRUE(r.problems.empty());
  return r.config.value_or(DefaultConfig());
}

// The kernel's own answer, without kmon's code: can an (empty) fexit program on
// getppid's function load? OK, or the errno of the refusal.
int RawFexitLoadErrno() {
  btf* vmlinux = btf__parse("/sys/kernel/btf/vmlinux", nullptr);
  if (vmlinux == nullptr) return ENOENT;
  // The function as the planner names it (unit-tested against this BTF too).
  const FexitPlan plan =
      PlanFexitSlots(vmlinux, SyscallFunctionPrefix(), {"getppid"}, {SYS_getppid}, 1);
  const int id =
      plan.ok ? btf__find_by_name_kind(vmlinux, plan.functions[0].c_str(), BTF_KIND_FUNC) : -1;
  btf__free(vmlinux);
  if (id <= 0) return ENOENT;
  const bpf_insn insns[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
      {.code = BPF_JMP | BPF_EXIT},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_FEXIT,
              .attach_btf_id = static_cast<__u32>(id));
  const int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "kmon_t_fexit", "GPL", insns, 2, &opts);
  if (fd < 0) return -fd;
  close(fd);
  return 0;
}

// Everything written to stderr (kmon's log) while it lives.
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    saved_ = dup(2);
    std::FILE* f = std::tmpfile();
    fd_ = dup(fileno(f));
    std::fclose(f);
    dup2(fd_, 2);
  }
  ~StderrCapture() { Restore(); }
  std::string Text() {
    Restore();
    std::string out;
    char buf[4096];
    ssize_t n;
    lseek(fd_, 0, SEEK_SET);
    while ((n = read(fd_, buf, sizeof buf)) > 0) out.append(buf, n);
    return out;
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
    saved_ = -1;
  }
  int saved_ = -1;
  int fd_ = -1;
};

std::vector<std::string> LinesWith(const std::string& text, const std::string& what) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find(what) != std::string::npos) out.push_back(line);
  }
  return out;
}

// A workload in a cgroup of its own makes `getppid` and `getpid` calls (which
// never fail): the collector, counting both, must count exactly those.
void ExpectCountsExactly(SyscallsCollector* c, int getppid, int getpid) {
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [&] { MakeCalls(getppid, getpid, 0); }), 0);
  std::vector<prometheus::MetricFamily> fams;
  c->Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), getppid);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getpid"), getpid > 0 ? getpid : -1);
  EXPECT_EQ(Find(fams, "kmon_syscall_errors_total", cg.name(), "getppid"), 0);
}

using SyscallsRootTest = testing::CollectorRootTest;

TEST_F(SyscallsRootTest, ProbeChoosesFexitWhereTheKernelAllowsItAndFailsCleanlyElsewhere) {
  InstallLibbpfLogger();
  ConfigureLogging(LogLevel::kInfo, LogFormat::kLogfmt);
  const int raw = RawFexitLoadErrno();
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  const uint32_t before = testing::MaxBpfProgramId();
  StderrCapture log;
  absl::Status st = c.Start(SyscallConfig({"getppid", "openat"}));
  const std::string text = log.Text();
  ASSERT_TRUE(st.ok()) << st;
  const SyscallHookState hook = c.hook();
  EXPECT_EQ(c.Detail(), hook.Describe());
  // No libbpf warning reaches the log, whichever way the probe went.
  EXPECT_TRUE(LinesWith(text, "libbpf").empty()) << text;
  if (raw == 0) {
    // The kernel loads fexit: kmon hooks getppid's and openat's functions only.
    EXPECT_TRUE(hook.fexit) << hook.reason;
    EXPECT_THAT(hook.hooked, ::testing::ElementsAre(SYS_getppid, SYS_openat));
    EXPECT_EQ(c.Detail(),
              "hook: fexit on 2 syscall functions (the kernel lets BPF attach to "
              "each chosen syscall function)");
    EXPECT_TRUE(LinesWith(text, "level=warn").empty()) << text;
    EXPECT_FALSE(testing::BpfProgramIds("kmon_sc_fx1", before).empty());
  } else {
    // Refused (this kernel: lockdown, EPERM): one clear warning, the tracepoint counts.
    EXPECT_FALSE(hook.fexit);
    EXPECT_EQ(hook.reason,
              absl::StrCat("fexit refused by this kernel: load: ", std::strerror(raw)));
    EXPECT_EQ(c.Detail(),
              absl::StrCat("hook: tp_btf/sys_exit (fexit refused by this kernel: load: ",
                           std::strerror(raw), ")"));
    const auto warnings = LinesWith(text, "level=warn");
    ASSERT_EQ(warnings.size(), 1u) << text;
    EXPECT_NE(warnings[0].find("tp_btf/sys_exit"), std::string::npos) << warnings[0];
    EXPECT_NE(warnings[0].find(std::strerror(raw)), std::string::npos) << warnings[0];
    EXPECT_TRUE(testing::BpfProgramIds("kmon_sc_fx0", before).empty());
  }
  EXPECT_EQ(testing::BpfProgramIds("kmon_sys_exit", before).size(), 1u);
  ExpectCountsExactly(&c, kGetppid, 0);
}

TEST_F(SyscallsRootTest, TracepointHookCountsExactlyOnEveryKernel) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  const uint32_t before = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(SyscallConfig({"getppid", "getpid"}, "tracepoint")).ok());
  EXPECT_FALSE(c.hook().fexit);
  EXPECT_EQ(c.Detail(), "hook: tp_btf/sys_exit (collectors.syscalls.hook: tracepoint)");
  EXPECT_TRUE(testing::BpfProgramIds("kmon_sc_fx0", before).empty());
  ExpectCountsExactly(&c, kGetppid, 333);
}

TEST_F(SyscallsRootTest, FexitHookCountsExactlyOrRefusesToStartWithTheReason) {
  const int raw = RawFexitLoadErrno();
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  const uint32_t before = testing::MaxBpfProgramId();
  absl::Status st = c.Start(SyscallConfig({"getppid", "getpid"}, "fexit"));
  if (raw != 0) {
    EXPECT_EQ(st.message(), absl::StrCat("collector=syscalls: collectors.syscalls.hook is fexit, "
                                         "but fexit refused by this kernel: load: ",
                                         std::strerror(raw)));
    // Nothing stays loaded (the kernel frees programs shortly after their last fd).
    for (int i = 0; i < 100 && !testing::BpfProgramIds("kmon_sys_exit", before).empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(testing::BpfProgramIds("kmon_sys_exit", before).empty());
    return;
  }
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(c.hook().fexit);
  ExpectCountsExactly(&c, kGetppid, 333);
}

TEST_F(SyscallsRootTest, CountsExactlyWhatTheWorkloadDid) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = SyscallConfig({"getppid", "openat"});
  absl::Status st = c.Start(cfg);
  ASSERT_TRUE(st.ok()) << st;
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(kGetppid, 0, kFailingOpenat); }), 0);

  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), kGetppid);
  EXPECT_EQ(Find(fams, "kmon_syscall_errors_total", cg.name(), "getppid"), 0);
  EXPECT_GE(Find(fams, "kmon_syscalls_total", cg.name(), "openat"), kFailingOpenat);
  EXPECT_GE(Find(fams, "kmon_syscall_errors_total", cg.name(), "openat"), kFailingOpenat);
  // Counters are cumulative: a second scrape of the same data gives the same numbers.
  fams.clear();
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), kGetppid);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// The tracepoint's per-CPU write-back cache, on (the flush runs here) and off (as
// after a flush that could not run): every call is counted either way, once.
TEST_F(SyscallsRootTest, CountsExactlyWithTheCacheOnAndOff) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(SyscallConfig({"getppid"})).ok());
  std::optional<syscall_config> sc =
      testing::ReadControl<syscall_config>(c.BpfObject(), "sc_config");
  ASSERT_TRUE(sc.has_value());
  EXPECT_EQ(sc->cache, 1u) << "the flush runs here, so the cache is on";
  auto getppids = [&](const TestCgroup& cg) {
    std::vector<prometheus::MetricFamily> fams;
    c.Collect(&fams);
    return Find(fams, "kmon_syscalls_total", cg.name(), "getppid");
  };
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(300, 0, 0); }), 0);
  EXPECT_EQ(getppids(cg), 300);
  sc->cache = 0;
  ASSERT_TRUE(testing::WriteControl(c.BpfObject(), "sc_config", *sc));
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(200, 0, 0); }), 0);
  EXPECT_EQ(getppids(cg), 500);
  sc->cache = 1;
  ASSERT_TRUE(testing::WriteControl(c.BpfObject(), "sc_config", *sc));
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(100, 0, 0); }), 0);
  EXPECT_EQ(getppids(cg), 600);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// The flush runs in an IPI, which can land on a CPU in the middle of its
// tracepoint's update of a cache way or of `counts`: many flushes at a CPU busy
// counting syscalls, and still every call is counted once.
TEST_F(SyscallsRootTest, FlushesInTheMiddleOfCountingLoseAndDoubleNothing) {
  // The race needs a second CPU to send the IPIs from: a one-CPU machine has none.
  KMON_REQUIRE_CPUS(2, "it needs two CPUs: one counting, one sending it flush IPIs");
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(SyscallConfig({"getppid"})).ok());
  bpf_program* flush = bpf_object__find_program_by_name(c.BpfObject(), "kmon_sc_flush");
  ASSERT_NE(flush, nullptr);
  constexpr int kCalls = 2'000'000;
  TestCgroup cg;
  const testing::FlushRuns runs =
      testing::FlushCpu1WhileChildWorks(flush, cg, [] { MakeCalls(kCalls, 0, 0); });
  const int flushes = runs.runs, busy = runs.busy;
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);  // the collector's own flush, with its retries
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), kCalls)
      << "after " << flushes << " flushes on the counting CPU";
  // The race was run into, not just run beside: some IPIs found the program mid-way.
  EXPECT_GT(flushes, 1000);
  EXPECT_GT(busy, 0) << flushes << " flushes";
  std::printf("%d flushes, %d found the CPU busy\n", flushes, busy);
}

// limits.bpf_map_entries sizes the kernel's map: 2 (cgroup, syscall) keys hold
// two workloads' counts and the third's calls are lost, counted; above the
// object's size (16384), the reader reads every key the kernel holds.
TEST_F(SyscallsRootTest, TheCountsMapIsTheSizeTheConfigGives) {
  auto kernel_max_entries = [](const bpf_object* obj) {
    const bpf_map* m = bpf_object__find_map_by_name(obj, "counts");
    bpf_map_info info{};
    uint32_t len = sizeof(info);
    if (m == nullptr || bpf_obj_get_info_by_fd(bpf_map__fd(m), &info, &len) != 0) return 0u;
    return info.max_entries;
  };
  {
    Config cfg = SyscallConfig({"getppid"});
    cfg.limits.bpf_map_entries["syscalls"]["counts"] = 2;
    SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
    ASSERT_TRUE(c.Start(cfg).ok());
    EXPECT_EQ(kernel_max_entries(c.BpfObject()), 2u);
    TestCgroup a, b, third;
    ASSERT_EQ(RunInCgroup(a, [] { MakeCalls(10, 0, 0); }), 0);
    ASSERT_EQ(RunInCgroup(b, [] { MakeCalls(20, 0, 0); }), 0);
    ASSERT_EQ(RunInCgroup(third, [] { MakeCalls(30, 0, 0); }), 0);
    std::vector<prometheus::MetricFamily> fams;
    c.Collect(&fams);
    EXPECT_EQ(Find(fams, "kmon_syscalls_total", a.name(), "getppid"), 10);
    EXPECT_EQ(Find(fams, "kmon_syscalls_total", b.name(), "getppid"), 20);
    EXPECT_EQ(Find(fams, "kmon_syscalls_total", third.name(), "getppid"), -1);
    EXPECT_EQ(c.EventsLost().at("map_full"), 30u);
  }
  Config cfg = SyscallConfig({"getppid"});
  constexpr uint32_t kEntries = 20000;
  cfg.limits.bpf_map_entries["syscalls"]["counts"] = kEntries;
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(cfg).ok());
  ASSERT_EQ(kernel_max_entries(c.BpfObject()), kEntries);
  const int fd = bpf_map__fd(bpf_object__find_map_by_name(c.BpfObject(), "counts"));
  std::vector<syscall_value> per_cpu(PossibleCpus(), syscall_value{1, 0});
  for (uint32_t i = 0; i < kEntries; ++i) {
    syscall_key k{.cgroup_id = (uint64_t{1} << 40) + i, .nr = 39};
    ASSERT_EQ(bpf_map_update_elem(fd, &k, per_cpu.data(), BPF_NOEXIST), 0) << i;
  }
  std::vector<uint64_t> rows;
  ASSERT_TRUE(
      (ReadPerCpuHashAs<syscall_key, syscall_value>(
           fd, [](const syscall_key& k, std::span<const syscall_value>) { return k.cgroup_id; },
           &rows))
          .ok());
  EXPECT_EQ(rows.size(), kEntries);
}

TEST_F(SyscallsRootTest, WatchedCgroupsControlMapFiltersWithoutReload) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = SyscallConfig({"getppid"});
  const uint32_t before = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(cfg).ok());
  const auto ids = testing::BpfProgramIds("kmon_sys_exit", before);
  ASSERT_EQ(ids.size(), 1u);
  ASSERT_FALSE(ids.empty());

  // host_processes: false watches only pod cgroups: our test cgroup is not one.
  cfg.targets.host_processes = false;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  ASSERT_TRUE(c.Reconfigure(cfg).ok());
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(300, 0, 0); }), 0);
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), -1);

  cfg.targets.host_processes = true;
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  ASSERT_TRUE(c.Reconfigure(cfg).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(200, 0, 0); }), 0);
  fams.clear();
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), 200);
  EXPECT_EQ(testing::BpfProgramIds("kmon_sys_exit", before), ids);
}

// A cache way keeps its key after a flush. A syscall dropped (its entry deleted) and
// chosen again counts from zero, every call (before the cache's generation, its
// calls went into the way and never out: -1); a cgroup no longer watched is not
// counted at once, though its (cgroup, syscall) is in a way.
TEST_F(SyscallsRootTest, ASyscallChosenAgainAndACgroupNoLongerWatchedCountExactly) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = SyscallConfig({"getppid", "getpid"});
  ASSERT_TRUE(c.Start(cfg).ok());
  testing::PinnedTo cpu0(0);  // the workloads below (forked) meet the ways they filled
  TestCgroup cg;
  auto collect = [&](const char* name) {
    std::vector<prometheus::MetricFamily> fams;
    c.Collect(&fams);
    return Find(fams, "kmon_syscalls_total", cg.name(), name);
  };
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(30, 5, 0); }), 0);
  EXPECT_EQ(collect("getppid"), 30);
  ASSERT_TRUE(c.Reconfigure(SyscallConfig({"getpid"})).ok());
  EXPECT_EQ(collect("getppid"), -1);  // its entry deleted
  ASSERT_TRUE(c.Reconfigure(cfg).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(17, 5, 0); }), 0);
  EXPECT_EQ(collect("getppid"), 17);
  EXPECT_EQ(collect("getpid"), 10);

  // The watched set changes (as when a pod's namespace becomes known) with no reload.
  Config unwatched = cfg;
  unwatched.targets.host_processes = false;
  ASSERT_TRUE(watched_->Update(unwatched.targets).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(40, 0, 0); }), 0);
  EXPECT_EQ(collect("getppid"), 17);
  ASSERT_TRUE(watched_->Update(cfg.targets).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(8, 0, 0); }), 0);
  EXPECT_EQ(collect("getppid"), 25);
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

TEST_F(SyscallsRootTest, ReconfigureChangesTheSetInPlace) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  Config cfg = SyscallConfig({"getppid"});
  const uint32_t before = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(cfg).ok());
  const auto ids = testing::BpfProgramIds("kmon_sys_exit", before);
  ASSERT_EQ(ids.size(), 1u);
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(10, 20, 0); }), 0);
  ASSERT_TRUE(c.Reconfigure(SyscallConfig({"getppid", "getpid"})).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(10, 20, 0); }), 0);
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), 20);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getpid"), 20);  // only after reload
  EXPECT_EQ(testing::BpfProgramIds("kmon_sys_exit", before), ids);
  // getpid has no fexit slot: where getppid was on fexit, the tracepoint took over
  // both (exactly: no call lost or counted twice above); it was the tracepoint anyway
  // where the kernel refuses fexit.
  EXPECT_FALSE(c.hook().fexit);
  if (RawFexitLoadErrno() == 0) {
    EXPECT_EQ(c.Detail(),
              "hook: tp_btf/sys_exit (a reload chose getpid, which no fexit slot "
              "hooks; fexit again when the collector restarts)");
  }
  // Dropping a syscall again stops its count at once, on either hook.
  ASSERT_TRUE(c.Reconfigure(SyscallConfig({"getpid"})).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(10, 5, 0); }), 0);
  fams.clear();
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getpid"), 25);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), -1);  // not counted now
}

TEST_F(SyscallsRootTest, AReloadWithinTheHookedSetStaysOnItsHook) {
  SyscallsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(c.Start(SyscallConfig({"getppid", "getpid"})).ok());
  const bool fexit = c.hook().fexit;
  EXPECT_EQ(fexit, RawFexitLoadErrno() == 0);
  TestCgroup cg;
  ASSERT_TRUE(c.Reconfigure(SyscallConfig({"getppid"})).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(40, 30, 0); }), 0);
  ASSERT_TRUE(c.Reconfigure(SyscallConfig({"getpid", "getppid"})).ok());
  ASSERT_EQ(RunInCgroup(cg, [] { MakeCalls(2, 3, 0); }), 0);
  EXPECT_EQ(c.hook().fexit, fexit);
  std::vector<prometheus::MetricFamily> fams;
  c.Collect(&fams);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getppid"), 42);
  EXPECT_EQ(Find(fams, "kmon_syscalls_total", cg.name(), "getpid"), 3);
}

// --- the real exporter process ---

std::string ConfigYaml(const std::string& syscalls) {
  return "interval: 1s\ncollectors:\n  syscalls:\n    enabled: true\n    syscalls: [" + syscalls +
         "]\n";
}

// Polls until `pred(scrape)` holds; returns the last scrape.
std::string WaitFor(const ExporterProcess& p, const std::function<bool(const std::string&)>& pred,
                    int timeout_ms = 10000) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string text;
  do {
    text = p.Scrape();
    if (pred(text)) return text;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return text;
}

double ReloadStamp(const std::string& text) {
  return SampleValue(text, "kmon_config_last_reload_success_timestamp_seconds", {}).value_or(0);
}

TEST(ExporterRootTest, ReloadsBySighupHttpAndFileChangeKeepingPrograms) {
  KMON_REQUIRE_ROOT();
  const TempFile cfg_file(ConfigYaml("getppid"));
  const std::string& cfg_path = cfg_file.path();
  const uint32_t before = testing::MaxBpfProgramId();
  ExporterProcess exporter({"--config.file=" + cfg_path, "--web.enable-lifecycle"});
  ASSERT_TRUE(exporter.WaitReady());
  const auto ids = testing::BpfProgramIds("kmon_sys_exit", before);
  ASSERT_EQ(ids.size(), 1u);

  TestCgroup cg1;
  ASSERT_EQ(RunInCgroup(cg1, [] { MakeCalls(kGetppid, 7, 0); }), 0);
  std::string text = WaitFor(exporter, [&](const std::string& t) {
    return SampleValue(t, "kmon_syscalls_total", {{"container", cg1.name()}}).has_value();
  });
  EXPECT_EQ(
      SampleValue(text, "kmon_syscalls_total", {{"container", cg1.name()}, {"syscall", "getppid"}}),
      kGetppid);
  EXPECT_FALSE(
      SampleValue(text, "kmon_syscalls_total", {{"container", cg1.name()}, {"syscall", "getpid"}}));
  EXPECT_EQ(SampleValue(text, "kmon_collector_up", {{"collector", "syscalls"}}), 1);
  EXPECT_EQ(SampleValue(text, "kmon_config_last_reload_successful", {}), 1);
  // `/` says which hook counts and why.
  const std::string landing = testing::HttpGet(exporter.Url("/")).body;
  const int raw = RawFexitLoadErrno();
  const std::string hook =
      raw == 0 ? "hook: fexit on 1 syscall function (the kernel lets BPF attach to each chosen "
                 "syscall function)"
               : absl::StrCat("hook: tp_btf/sys_exit (fexit refused by this kernel: load: ",
                              std::strerror(raw), ")");
  EXPECT_NE(landing.find("<td>syscalls</td><td>up</td><td></td><td>" + hook + "</td>"),
            std::string::npos)
      << landing;
  double stamp = ReloadStamp(text);

  // SIGHUP with getpid added: counted from then on, same program.
  std::ofstream(cfg_path) << ConfigYaml("getppid, getpid");
  exporter.Signal(SIGHUP);
  WaitFor(exporter, [&](const std::string& t) { return ReloadStamp(t) > stamp; });
  TestCgroup cg2;
  ASSERT_EQ(RunInCgroup(cg2, [] { MakeCalls(3, 11, 0); }), 0);
  text = WaitFor(exporter, [&](const std::string& t) {
    return SampleValue(t, "kmon_syscalls_total", {{"container", cg2.name()}}).has_value();
  });
  EXPECT_EQ(
      SampleValue(text, "kmon_syscalls_total", {{"container", cg2.name()}, {"syscall", "getpid"}}),
      11);
  EXPECT_EQ(testing::BpfProgramIds("kmon_sys_exit", before), ids);
  stamp = ReloadStamp(text);

  // A broken config is rejected whole: the old one (getpid counted) stays in force.
  std::ofstream(cfg_path) << ConfigYaml("getppid, getpid") << "bogus_key: 1\n";
  exporter.Signal(SIGHUP);
  text = WaitFor(exporter, [&](const std::string& t) {
    return SampleValue(t, "kmon_config_last_reload_successful", {}) == 0;
  });
  EXPECT_EQ(SampleValue(text, "kmon_config_last_reload_successful", {}), 0);
  EXPECT_EQ(ReloadStamp(text), stamp);
  TestCgroup cg3;
  ASSERT_EQ(RunInCgroup(cg3, [] { MakeCalls(0, 13, 0); }), 0);
  text = WaitFor(exporter, [&](const std::string& t) {
    return SampleValue(t, "kmon_syscalls_total", {{"container", cg3.name()}}).has_value();
  });
  EXPECT_EQ(
      SampleValue(text, "kmon_syscalls_total", {{"container", cg3.name()}, {"syscall", "getpid"}}),
      13);

  // POST /-/reload: 500 while the file is broken, 200 once it is fixed.
  EXPECT_EQ(testing::HttpPost(exporter.Url("/-/reload")).status, 500);
  EXPECT_EQ(testing::HttpGet(exporter.Url("/-/reload")).status, 405);
  std::ofstream(cfg_path) << ConfigYaml("getpid");
  // (the file change may be picked up by the watcher first; either way it reloads)
  auto post = testing::HttpPost(exporter.Url("/-/reload"));
  EXPECT_EQ(post.status, 200) << post.body;
  text = exporter.Scrape();
  EXPECT_EQ(SampleValue(text, "kmon_config_last_reload_successful", {}), 1);
  stamp = ReloadStamp(text);

  // A change of the file alone reloads it.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::ofstream(cfg_path) << ConfigYaml("getppid");
  WaitFor(exporter, [&](const std::string& t) { return ReloadStamp(t) > stamp; });
  TestCgroup cg4;
  ASSERT_EQ(RunInCgroup(cg4, [] { MakeCalls(5, 9, 0); }), 0);
  text = WaitFor(exporter, [&](const std::string& t) {
    return SampleValue(t, "kmon_syscalls_total", {{"container", cg4.name()}}).has_value();
  });
  EXPECT_EQ(
      SampleValue(text, "kmon_syscalls_total", {{"container", cg4.name()}, {"syscall", "getppid"}}),
      5);
  EXPECT_FALSE(
      SampleValue(text, "kmon_syscalls_total", {{"container", cg4.name()}, {"syscall", "getpid"}}));
  EXPECT_EQ(testing::BpfProgramIds("kmon_sys_exit", before), ids);

  EXPECT_EQ(exporter.Terminate(), 0);  // clean shutdown on SIGTERM
  // The kernel frees a detached program shortly after its last reference goes.
  for (int i = 0; i < 100 && !testing::BpfProgramIds("kmon_sys_exit", before).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(testing::BpfProgramIds("kmon_sys_exit", before).empty());
}

TEST(ExporterRootTest, BadConfigAtStartExitsOneNamingKeyAndLine) {
  const TempFile cfg_file(
      "interval: soon\ncollectors:\n  syscalls:\n    syscalls: [getppid, not_a_syscall]\n");
  const std::string& cfg_path = cfg_file.path();
  std::string cmd =
      std::string(KMON_EXPORTER_BIN) + " --check-config --config.file=" + cfg_path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int rc = pclose(p);
  EXPECT_EQ(WEXITSTATUS(rc), 1) << out;
  EXPECT_NE(out.find("line 1: interval"), std::string::npos) << out;
  EXPECT_NE(out.find("line 4: collectors.syscalls.syscalls[1]"), std::string::npos) << out;
  EXPECT_NE(out.find("not_a_syscall"), std::string::npos) << out;
}

}  // namespace
}  // namespace kmon
