// The events collector against the running kernel: a workload in a cgroup of its
// own forks children that exec /bin/true, so the number of forks, execs and exits
// in that cgroup is known exactly, and kmon must count exactly those; reloads hook
// and unhook single events without touching the others; a function the kernel
// will not let BPF hook leaves the collector up with that event reported 0.
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <thread>

#include "collectors/events.h"
#include "collectors/kernel_features.h"
#include "exporter/config.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::ExporterProcess;
using testing::RunInCgroup;
using testing::SampleValue;
using testing::TestCgroup;

constexpr char kFork[] = "sched:sched_process_fork";
constexpr char kExec[] = "sched:sched_process_exec";
constexpr char kExit[] = "sched:sched_process_exit";
constexpr char kNewTask[] = "task:task_newtask";
constexpr char kGetppid[] = "syscalls:sys_enter_getppid";
constexpr int kChildren = 17;

// Forks kChildren children one after the other, each exec'ing /bin/true. Run in a
// cgroup of its own (by RunInCgroup, which forked this process in the test's
// cgroup and moved it there) that makes exactly:
//   kChildren forks and kChildren new tasks (this process forking; nobody else in
//   the cgroup forks), kChildren execs (the children), and kChildren + 1 exits
//   (the children, and this process itself when it returns).
void ForkExecChildren() {
  for (int i = 0; i < kChildren; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      execl("/bin/true", "true", static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
      _exit(1);
    }
  }
}

std::string EventsYaml(const std::vector<std::string>& tracepoints,
                       const std::vector<std::string>& functions) {
  std::string y = "interval: 1s\ncollectors:\n  events:\n    enabled: true\n    tracepoints: [";
  for (size_t i = 0; i < tracepoints.size(); ++i) y += (i ? ", \"" : "\"") + tracepoints[i] + "\"";
  y += "]\n    functions: [";
  for (size_t i = 0; i < functions.size(); ++i) y += (i ? ", " : "") + functions[i];
  return y + "]\n";
}

Config EventsConfig(const std::vector<std::string>& tracepoints,
                    const std::vector<std::string>& functions = {}) {
  ConfigResult r = ParseConfig(EventsYaml(tracepoints, functions), ProcessEnv());
  EXPECT_TRUE(r.problems.empty()) << r.problems[0].ToString();
  return r.config.value_or(DefaultConfig());
}

class EventsRootTest : public testing::CollectorRootTest {
 protected:
  std::vector<prometheus::MetricFamily> Scrape(EventsCollector* c) {
    std::vector<prometheus::MetricFamily> fams;
    c->Collect(&fams);
    EXPECT_TRUE(c->LastCollect().ok()) << c->LastCollect();
    return fams;
  }
  // kmon_kernel_events_total of `cg` for `event`; -1 when there is no such series.
  static double Count(const std::vector<prometheus::MetricFamily>& fams, const TestCgroup& cg,
                      const std::string& event) {
    const auto* m =
        FindSample(fams, "kmon_kernel_events_total", {{"container", cg.name()}, {"event", event}});
    return m == nullptr ? -1 : m->counter.value;
  }
  static double Attached(const std::vector<prometheus::MetricFamily>& fams,
                         const std::string& event) {
    const auto* m = FindSample(fams, "kmon_kernel_event_attached", {{"event", event}});
    return m == nullptr ? -1 : m->gauge.value;
  }
};

// Raw tracepoint links of the program with id `prog_id`: tracepoint -> link id.
std::map<std::string, uint32_t> RawTpLinks(uint32_t prog_id) {
  std::map<std::string, uint32_t> out;
  uint32_t id = 0;
  while (bpf_link_get_next_id(id, &id) == 0) {
    const int fd = bpf_link_get_fd_by_id(id);
    if (fd < 0) continue;
    char name[128] = {};
    bpf_link_info info{};
    info.raw_tracepoint.tp_name = reinterpret_cast<uintptr_t>(name);
    info.raw_tracepoint.tp_name_len = sizeof name;
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.prog_id == prog_id &&
        info.type == BPF_LINK_TYPE_RAW_TRACEPOINT) {
      out[name] = id;
    }
    close(fd);
  }
  return out;
}

TEST_F(EventsRootTest, CountsForksExecsAndExitsExactlyAndReloadsOneEventAtATime) {
  EventsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  const uint32_t before = testing::MaxBpfProgramId();
  ::testing::internal::CaptureStderr();
  absl::Status st = c.Start(EventsConfig({kFork, kExec, kExit}, {"tcp_connect"}));
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(st.ok()) << st;
  // fentry is refused here (or the kernel lacks the function): a log line names
  // it and the reason, the collector is up and the tracepoints count on.
  EXPECT_NE(log.find("event=tcp_connect"), std::string::npos) << log;
  EXPECT_NE(log.find("fentry/tcp_connect"), std::string::npos) << log;
  const auto progs = testing::BpfProgramIds("kmon_ev_rawtp", before);
  ASSERT_EQ(progs.size(), 1u);  // one program for every tracepoint
  const auto links = RawTpLinks(progs[0]);
  ASSERT_EQ(links.size(), 3u);
  ASSERT_TRUE(links.count("sched_process_fork") && links.count("sched_process_exec") &&
              links.count("sched_process_exit"));

  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  auto fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kFork), kChildren);
  EXPECT_EQ(Count(fams, cg, kExec), kChildren);
  EXPECT_EQ(Count(fams, cg, kExit), kChildren + 1);
  EXPECT_EQ(Count(fams, cg, "tcp_connect"), -1);
  EXPECT_EQ(Attached(fams, kFork), 1);
  EXPECT_EQ(Attached(fams, kExec), 1);
  EXPECT_EQ(Attached(fams, kExit), 1);
  EXPECT_EQ(Attached(fams, "tcp_connect"), 0);

  // A reload adding an event hooks just that one: the earlier links stay as they are.
  ASSERT_TRUE(c.Reconfigure(EventsConfig({kFork, kExec, kExit, kNewTask}, {"tcp_connect"})).ok());
  auto grown = RawTpLinks(progs[0]);
  ASSERT_EQ(grown.size(), 4u);
  EXPECT_EQ(grown.at("sched_process_fork"), links.at("sched_process_fork"));
  EXPECT_EQ(grown.at("sched_process_exec"), links.at("sched_process_exec"));
  EXPECT_EQ(grown.at("sched_process_exit"), links.at("sched_process_exit"));
  EXPECT_EQ(testing::BpfProgramIds("kmon_ev_rawtp", before), progs);
  fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kFork), kChildren);  // untouched by the reload
  EXPECT_EQ(Count(fams, cg, kNewTask), -1);      // nothing yet
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kFork), 2 * kChildren);
  EXPECT_EQ(Count(fams, cg, kExec), 2 * kChildren);
  EXPECT_EQ(Count(fams, cg, kExit), 2 * (kChildren + 1));
  EXPECT_EQ(Count(fams, cg, kNewTask), kChildren);  // counted from the reload on
  EXPECT_EQ(Attached(fams, "tcp_connect"), 0);

  // Removing one unhooks only it; its series leave /metrics.
  ASSERT_TRUE(c.Reconfigure(EventsConfig({kFork, kExit, kNewTask})).ok());
  auto shrunk = RawTpLinks(progs[0]);
  EXPECT_EQ(shrunk.size(), 3u);
  EXPECT_EQ(shrunk.count("sched_process_exec"), 0u);
  EXPECT_EQ(shrunk.at("sched_process_fork"), links.at("sched_process_fork"));
  EXPECT_EQ(shrunk.at("task_newtask"), grown.at("task_newtask"));
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kExec), -1);
  EXPECT_EQ(Attached(fams, kExec), -1);
  EXPECT_EQ(Attached(fams, "tcp_connect"), -1);
  EXPECT_EQ(Count(fams, cg, kFork), 3 * kChildren);
  EXPECT_EQ(Count(fams, cg, kExit), 3 * (kChildren + 1));
  EXPECT_EQ(Count(fams, cg, kNewTask), 2 * kChildren);

  // Added back, it continues from its kept count: no jump back (no counter
  // reset for rate()), and the execs while it was removed were not counted.
  ASSERT_TRUE(c.Reconfigure(EventsConfig({kFork, kExec, kExit, kNewTask})).ok());
  fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kExec), 2 * kChildren);
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kExec), 3 * kChildren);
  EXPECT_EQ(Count(fams, cg, kFork), 4 * kChildren);
  EXPECT_EQ(RawTpLinks(progs[0]).at("sched_process_fork"), links.at("sched_process_fork"));
  EXPECT_EQ(c.EventsLost().at("map_full"), 0u);
}

// Tracefs events that are raw tracepoints (a btf_trace_<name> in the kernel's BTF),
// less the ones the tests count.
std::vector<std::string> OtherRawTracepoints() {
  std::vector<std::string> out;
  btf* vmlinux = btf__load_vmlinux_btf();
  if (vmlinux == nullptr) return out;
  std::ifstream in("/sys/kernel/tracing/available_events");
  for (std::string line; std::getline(in, line);) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos || line == kFork || line == kExec || line == kExit ||
        line == kNewTask) {
      continue;
    }
    const std::string typedef_name = "btf_trace_" + line.substr(colon + 1);
    if (btf__find_by_name_kind(vmlinux, typedef_name.c_str(), BTF_KIND_TYPEDEF) > 0) {
      out.push_back(line);
    }
  }
  btf__free(vmlinux);
  std::sort(out.begin(), out.end());
  return out;
}

// 60 + 60 + 64 distinct events, more than the 128 event numbers: numbers of
// removed events are reused oldest first, and only then are their counters lost.
TEST_F(EventsRootTest, ARemovedEventKeepsItsCountersUntilItsNumberIsNeeded) {
  const std::vector<std::string> others = OtherRawTracepoints();
  // A: sched_process_fork and 59 events named after it, so that fork is the
  // first of A to be removed (events go in name order) and the first number reused.
  std::vector<std::string> a{kFork}, b{kExit}, c;
  for (const std::string& e : others) {
    if (e > kFork && a.size() < 60) {
      a.push_back(e);
    } else if (e < kFork && b.size() < 60) {
      b.push_back(e);
    } else if (std::find(a.begin(), a.end(), e) == a.end() && c.size() < 64) {
      c.push_back(e);
    }
  }
  ASSERT_EQ(a.size() + b.size() + c.size(), 184u) << others.size() << " raw tracepoints";
  EventsCollector col({.workloads = workloads_.get(), .watched = watched_.get()});
  ASSERT_TRUE(col.Start(EventsConfig(a)).ok());
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  EXPECT_EQ(Count(Scrape(&col), cg, kFork), kChildren);

  ASSERT_TRUE(col.Reconfigure(EventsConfig(b)).ok());  // A removed: 60 numbers kept
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  auto fams = Scrape(&col);
  EXPECT_EQ(Count(fams, cg, kExit), kChildren + 1);
  EXPECT_EQ(Count(fams, cg, kFork), -1);

  // C takes the 8 free numbers and 56 of A's, sched_process_fork's first; B's stay.
  ASSERT_TRUE(col.Reconfigure(EventsConfig(c)).ok());
  ASSERT_TRUE(col.Reconfigure(EventsConfig({kFork, kExit})).ok());
  fams = Scrape(&col);
  EXPECT_EQ(Count(fams, cg, kExit), kChildren + 1);  // kept through C: continues
  EXPECT_EQ(Count(fams, cg, kFork), -1);             // its counters went with its number
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  fams = Scrape(&col);
  EXPECT_EQ(Count(fams, cg, kFork), kChildren);  // starts again from 0: a counter reset
  EXPECT_EQ(Count(fams, cg, kExit), 2 * (kChildren + 1));
  EXPECT_EQ(Attached(fams, kFork), 1);
  EXPECT_EQ(Attached(fams, kExit), 1);
}

TEST_F(EventsRootTest, TracefsEventsThatAreNotRawTracepointsCountThroughPerfLinks) {
  EventsCollector c({.workloads = workloads_.get(), .watched = watched_.get()});
  const uint32_t before = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(EventsConfig({kGetppid, kFork})).ok());
  EXPECT_EQ(testing::BpfProgramIds("kmon_ev_tp", before).size(), 1u);
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg,
                        [] {
                          for (int i = 0; i < 1000; ++i) syscall(SYS_getppid);
                        }),
            0);
  const auto fams = Scrape(&c);
  EXPECT_EQ(Attached(fams, kGetppid), 1);
  EXPECT_EQ(Count(fams, cg, kGetppid), 1000);
  EXPECT_EQ(Count(fams, cg, kFork), -1);  // the process forked in the test's cgroup
}

// A kernel without BPF cookies, as far as the collector can tell: a BTF with the
// raw tracepoints' typedefs and nothing else (no cookie fields, no functions).
class NoCookieFeatures : public KernelFeatures {
 public:
  explicit NoCookieFeatures(const std::vector<std::string>& raw_tracepoints)
      : btf_(btf__new_empty()) {
    const int id = btf__add_int(btf_, "int", 4, BTF_INT_SIGNED);
    for (const std::string& tp : raw_tracepoints) {
      btf__add_typedef(btf_, ("btf_trace_" + tp).c_str(), id);
    }
  }
  ~NoCookieFeatures() override { btf__free(btf_); }
  absl::StatusOr<const btf*> VmlinuxBtf() override { return btf_; }
  void Release() override {}

 private:
  btf* btf_;
};

TEST_F(EventsRootTest, WithoutCookiesEachEventGetsAProgramCopyAndCountsTheSame) {
  NoCookieFeatures features({"sched_process_fork", "sched_process_exec", "sched_process_exit"});
  EventsCollector c(
      {.workloads = workloads_.get(), .watched = watched_.get(), .features = &features});
  const uint32_t before = testing::MaxBpfProgramId();
  ASSERT_TRUE(c.Start(EventsConfig({kFork, kExec, kExit, kGetppid}, {"tcp_connect"})).ok());
  EXPECT_TRUE(testing::BpfProgramIds("kmon_ev_rawtp", before).empty());
  EXPECT_TRUE(testing::BpfProgramIds("kmon_ev_tp", before).empty());
  EXPECT_EQ(testing::BpfProgramIds("kmon_ev1_rawtp", before).size(), 3u);
  EXPECT_EQ(testing::BpfProgramIds("kmon_ev1_tp", before).size(), 1u);
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg,
                        [] {
                          ForkExecChildren();
                          for (int i = 0; i < 300; ++i) syscall(SYS_getppid);
                        }),
            0);
  auto fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kFork), kChildren);
  EXPECT_EQ(Count(fams, cg, kExec), kChildren);
  EXPECT_EQ(Count(fams, cg, kExit), kChildren + 1);
  EXPECT_EQ(Count(fams, cg, kGetppid), 300);
  EXPECT_EQ(Attached(fams, "tcp_connect"), 0);  // "no function in this kernel's BTF"

  // Removing an event frees its copy; the others keep theirs.
  const auto copies = testing::BpfProgramIds("kmon_ev1_rawtp", before);
  ASSERT_TRUE(c.Reconfigure(EventsConfig({kFork, kExit})).ok());
  std::vector<uint32_t> left;
  EXPECT_TRUE(Eventually([&] {
    left = testing::BpfProgramIds("kmon_ev1_rawtp", before);
    return left.size() == 2u;
  })) << left.size();
  for (uint32_t id : left) EXPECT_NE(std::find(copies.begin(), copies.end(), id), copies.end());
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  fams = Scrape(&c);
  EXPECT_EQ(Count(fams, cg, kFork), 2 * kChildren);
  EXPECT_EQ(Count(fams, cg, kExit), 2 * (kChildren + 1));
  EXPECT_EQ(Count(fams, cg, kExec), -1);
  c.Stop();
  EXPECT_TRUE(Eventually([&] { return testing::BpfProgramIds("kmon_ev1_rawtp", before).empty(); }));
}

// --- the real exporter process ---

double ReloadStamp(const std::string& text) {
  return SampleValue(text, "kmon_config_last_reload_success_timestamp_seconds", {}).value_or(0);
}

std::string WaitFor(const ExporterProcess& p, const std::function<bool(const std::string&)>& pred) {
  std::string text;
  Eventually(
      [&] {
        text = p.Scrape();
        return pred(text);
      },
      std::chrono::milliseconds(10000), std::chrono::milliseconds(50));
  return text;
}

TEST(EventsExporterRootTest, SighupAddsAnEventWhileTheOthersCountOn) {
  KMON_REQUIRE_ROOT();
  const TempFile cfg(EventsYaml({kFork, kExec, kExit}, {"tcp_connect"}));
  std::vector<std::string> args{"--config.file=" + cfg.path()};
  for (const char* other : {"tcp", "topology", "drops", "blockio", "syscalls", "cpu"}) {
    args.push_back(std::string("--no-collector.") + other);
  }
  ExporterProcess exporter(args);
  ASSERT_TRUE(exporter.WaitReady());
  TestCgroup cg;
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  const std::map<std::string, std::string> mine{{"container", cg.name()}};
  auto count = [&](const std::string& text, const char* event) {
    return SampleValue(text, "kmon_kernel_events_total",
                       {{"container", cg.name()}, {"event", event}});
  };
  std::string text =
      WaitFor(exporter, [&](const std::string& t) { return count(t, kExit).has_value(); });
  EXPECT_EQ(SampleValue(text, "kmon_collector_up", {{"collector", "events"}}), 1);
  EXPECT_EQ(SampleValue(text, "kmon_kernel_event_attached", {{"event", "tcp_connect"}}), 0);
  EXPECT_EQ(SampleValue(text, "kmon_kernel_event_attached", {{"event", kFork}}), 1);
  EXPECT_EQ(count(text, kFork), kChildren);
  EXPECT_EQ(count(text, kExec), kChildren);
  EXPECT_EQ(count(text, kExit), kChildren + 1);
  EXPECT_GT(SampleValue(text, "kmon_bpf_program_runs_total",
                        {{"collector", "events"}, {"program", "kmon_ev_rawtp"}})
                .value_or(0),
            0);
  const double stamp = ReloadStamp(text);

  ASSERT_TRUE(cfg.ok());
  std::ofstream(cfg.path()) << EventsYaml({kFork, kExec, kExit, kNewTask}, {"tcp_connect"});
  exporter.Signal(SIGHUP);
  text = WaitFor(exporter, [&](const std::string& t) {
    return ReloadStamp(t) > stamp &&
           SampleValue(t, "kmon_kernel_event_attached", {{"event", kNewTask}}) == 1;
  });
  EXPECT_EQ(SampleValue(text, "kmon_config_last_reload_successful", {}), 1);
  EXPECT_EQ(count(text, kFork), kChildren);  // not reset by the reload
  ASSERT_EQ(RunInCgroup(cg, ForkExecChildren), 0);
  text = WaitFor(exporter, [&](const std::string& t) { return count(t, kNewTask).has_value(); });
  EXPECT_EQ(count(text, kFork), 2 * kChildren);
  EXPECT_EQ(count(text, kExec), 2 * kChildren);
  EXPECT_EQ(count(text, kExit), 2 * (kChildren + 1));
  EXPECT_EQ(count(text, kNewTask), kChildren);
  EXPECT_EQ(SampleValue(text, "kmon_kernel_event_attached", {{"event", "tcp_connect"}}), 0);
  EXPECT_EQ(exporter.Terminate(), 0);
}

TEST(EventsExporterRootTest, CheckConfigNamesAnUnknownTracepointWithItsLine) {
  KMON_REQUIRE_ROOT();
  const TempFile cfg(
      "collectors:\n"
      "  events:\n"
      "    tracepoints:\n"
      "      - sched:sched_process_fork\n"
      "      - sched:sched_process_exec\n"
      "      - foo:bar\n"
      "      - nocolon\n");
  const std::string cmd =
      std::string(KMON_EXPORTER_BIN) + " --check-config --config.file=" + cfg.path() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  const int rc = pclose(p);
  EXPECT_EQ(WEXITSTATUS(rc), 1) << out;
  EXPECT_NE(out.find("line 6: collectors.events.tracepoints[2]: no tracepoint \"foo:bar\" in "
                     "this kernel"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("line 7: collectors.events.tracepoints[3]: malformed tracepoint"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace kmon
