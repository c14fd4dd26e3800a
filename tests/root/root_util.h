// Helpers for tests that load BPF into the running kernel: a cgroup of the test's
// own (removed even when the test fails), workloads run inside it, the exporter run
// as a real process, and scraping it.
#pragma once

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "collectors/watched_cgroups.h"
#include "provider/workload.h"

namespace kmon::testing {

/// Skips when not root; fails instead when CI=true (CI must run these tests).
#define KMON_REQUIRE_ROOT()                                                                       \
  do {                                                                                            \
    if (geteuid() != 0) {                                                                         \
      if (::kmon::testing::InCi()) FAIL() << "root tests must run in CI (CI=true) but euid != 0"; \
      GTEST_SKIP() << "needs root to load BPF programs";                                          \
    }                                                                                             \
  } while (0)

bool InCi();

/// Skips with `why` when the machine has fewer than `n` CPUs; fails instead when
/// CI=true (CI must run the test, so its machine must have them).
#define KMON_REQUIRE_CPUS(n, why)                                                  \
  do {                                                                             \
    if (std::thread::hardware_concurrency() < (n)) {                               \
      if (::kmon::testing::InCi()) FAIL() << "CI must run this test, and " << why; \
      GTEST_SKIP() << why;                                                         \
    }                                                                              \
  } while (0)

/// Pins the calling thread to one CPU while it lives (children forked meanwhile
/// inherit it); the old set comes back at the end.
class PinnedTo {
 public:
  explicit PinnedTo(int cpu);
  ~PinnedTo();
  PinnedTo(const PinnedTo&) = delete;
  PinnedTo& operator=(const PinnedTo&) = delete;
  bool ok() const { return ok_; }

 private:
  cpu_set_t saved_;
  bool ok_ = false;
};

/// What RunOnCpuWhileAlive did: runs of the program, how many returned non-zero
/// (found the CPU busy), and whether `pid` exited 0 (reaped).
struct FlushRuns {
  int runs = 0;
  int busy = 0;
  bool reaped = false;
  bool exited_ok = false;
};

/// Runs a never-attached program (a cache flush) on `cpu` through BPF_PROG_TEST_RUN,
/// over and over, until the child `pid` exits (reaped here) or a run fails (the
/// child is then left to the caller). From another CPU, each run is an IPI.
FlushRuns RunOnCpuWhileAlive(const bpf_program* prog, int cpu, pid_t pid);

class TestCgroup;
/// The flush-race tests' shape: `work` runs in a child in `cg` pinned to CPU 1 while
/// the calling thread, pinned to CPU 0, runs `prog` on CPU 1 (each run an IPI that
/// may land in the middle of the child's BPF programs) until the child exits. Fails
/// the test when the child fails; a failed run ends the loop early (runs says so).
FlushRuns FlushCpu1WhileChildWorks(const bpf_program* prog, const TestCgroup& cg,
                                   const std::function<void()>& work);

/// A cgroup v2 directory "kmon-test-<pid>-<n>" under the v2 root; rmdir'd on destruction
/// after moving any leftover processes back to the root cgroup.
class TestCgroup {
 public:
  TestCgroup();
  /// A cgroup at `relative` under the v2 root (e.g. a kubelet layout), parents made
  /// as needed; on destruction its parents are removed too once empty.
  explicit TestCgroup(const std::string& relative);
  ~TestCgroup();
  TestCgroup(const TestCgroup&) = delete;
  TestCgroup& operator=(const TestCgroup&) = delete;
  const std::string& path() const { return path_; }
  const std::string& name() const { return name_; }
  uint64_t id() const { return id_; }

 private:
  std::string root_, name_, path_;
  uint64_t id_ = 0;
  std::vector<std::string> made_parents_;  // the path's parents, innermost last
};

/// Forks a child, moves it into `cg`, then runs `body` in it; waits for it.
/// Returns the child's exit status (0 when body returned normally).
int RunInCgroup(const TestCgroup& cg, const std::function<void()>& body);

/// Like RunInCgroup but returns at once with the child's pid. With `netns`, the
/// child enters that network namespace (from /var/run/netns) before `body`.
pid_t SpawnInCgroup(const TestCgroup& cg, const std::function<void()>& body,
                    const std::string& netns = "");
/// Waits for a child; its exit status, or -1 after SIGKILL when it outlives the timeout.
int WaitChild(pid_t pid, int timeout_ms = 20000);

/// A network namespace `kmon-<pid>-<n>` made with `ip netns add`; deleted (with
/// its interfaces) on destruction.
class TestNetns {
 public:
  TestNetns();
  ~TestNetns();
  TestNetns(const TestNetns&) = delete;
  TestNetns& operator=(const TestNetns&) = delete;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

/// Runs a shell command; its exit status.
int Sh(const std::string& command);

/// A free TCP port on 127.0.0.1.
int FreePort();

struct HttpResult {
  long status = 0;
  std::string body;
};
HttpResult HttpGet(const std::string& url);
HttpResult HttpPost(const std::string& url);

/// The value of one sample in Prometheus text: name and every label given must match.
std::optional<double> SampleValue(const std::string& text, const std::string& name,
                                  const std::map<std::string, std::string>& labels);

/// kmon_exporter running as a child process; killed (SIGTERM, then SIGKILL) on destruction.
class ExporterProcess {
 public:
  /// `wrapper`: a command the exporter is run under (e.g. setpriv and its options).
  explicit ExporterProcess(std::vector<std::string> args, std::vector<std::string> wrapper = {});
  ~ExporterProcess();
  /// Waits until /-/ready answers 200; false on timeout or exit.
  bool WaitReady(int timeout_ms = 20000);
  std::string Url(const std::string& path) const;
  std::string Scrape() const { return HttpGet(Url("/metrics")).body; }
  void Signal(int sig);
  /// Sends SIGTERM and returns the exit status (-1 if it did not exit in time).
  int Terminate(int timeout_ms = 10000);
  pid_t pid() const { return pid_; }
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

/// IDs of loaded BPF programs whose name is `name`, above `min_id`. IDs only grow,
/// so a process's programs are those above the largest ID seen before it started
/// (programs of earlier tests may still be on their way out).
std::vector<uint32_t> BpfProgramIds(const std::string& name, uint32_t min_id = 0);
/// The largest BPF program ID in use now.
uint32_t MaxBpfProgramId();

/// Fixture of the tests that run one collector in-process: needs root, and gives
/// the collector a resolver that rescans on every miss and the watched-cgroups map.
/// A subclass's SetUp calls this one first and returns if it skipped or failed.
class CollectorRootTest : public ::testing::Test {
 protected:
  void SetUp() override;
  std::unique_ptr<WorkloadResolver> workloads_;
  std::unique_ptr<WatchedCgroups> watched_;
};

/// Entry 0 of the one-entry control map `map` of a loaded object (a collector's
/// config); nullopt when the object has no such map or it cannot be read.
template <typename T>
std::optional<T> ReadControl(const bpf_object* obj, const char* map) {
  const bpf_map* m = bpf_object__find_map_by_name(obj, map);
  T value{};
  uint32_t zero = 0;
  if (m == nullptr || bpf_map_lookup_elem(bpf_map__fd(m), &zero, &value) != 0) return std::nullopt;
  return value;
}
/// Writes entry 0 of the control map `map` behind the collector's back; false on failure.
template <typename T>
bool WriteControl(const bpf_object* obj, const char* map, const T& value) {
  const bpf_map* m = bpf_object__find_map_by_name(obj, map);
  uint32_t zero = 0;
  return m != nullptr && bpf_map_update_elem(bpf_map__fd(m), &zero, &value, BPF_ANY) == 0;
}

}  // namespace kmon::testing
