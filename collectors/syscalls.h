// `syscalls`: counts of chosen syscalls and their failures per cgroup (Kmon's
// fine-grained syscall indicator). Off by default (SPEC): where the kernel lets BPF
// attach to single syscall functions it hooks only the chosen ones (fexit on each
// `__<arch>_sys_<name>`, probed at start); elsewhere (a locked-down kernel refuses
// fexit) its one hook is tp_btf/sys_exit, which every syscall on the node pays for.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bpf/syscalls.h"
#include "collectors/bpf_collector.h"
#include "collectors/bpf_util.h"
#include "collectors/data_source.h"

struct btf;
struct syscalls_bpf;

namespace kmon {

/// collectors.syscalls.hook: which hook counts (kAuto: fexit where the kernel allows it).
enum class SyscallHookMode { kAuto, kFexit, kTracepoint };

/// collectors.syscalls
struct SyscallsConfig : CollectorSectionOf<SyscallsConfig> {
  static constexpr char kName[] = "syscalls";
  std::vector<std::string> syscalls{"read",    "write",      "sendto",  "recvfrom",
                                    "sendmsg", "recvmsg",    "openat",  "close",
                                    "futex",   "epoll_wait", "connect", "accept4"};
  /// Native syscall numbers of `syscalls`, same order; filled by the parser.
  std::vector<int> numbers;
  /// Names libseccomp knows but this CPU architecture lacks (e.g. `epoll_wait`
  /// on arm64). They are dropped from `syscalls` so one config can serve a
  /// mixed-architecture cluster; the collector logs them. Filled by the parser.
  std::vector<std::string> unavailable;
  /// Not in the SPEC: forces a hook, for tests and for kernels where fexit misbehaves.
  SyscallHookMode hook = SyscallHookMode::kAuto;
};

/// The built-in section, with the names resolved to this architecture's numbers.
std::unique_ptr<SyscallsConfig> DefaultSyscallsSection();
void ParseSyscallsSection(YamlParser& p, const YamlValue& v, SyscallsConfig* c);

/// The kernel function behind a syscall, as BTF names it: `prefix` (the running
/// architecture's, "__x64_sys_" or "__arm64_sys_") and the name of its
/// SYSCALL_DEFINE, which differs from the syscall's own name for a few (uname is
/// newuname, sendfile is sendfile64; `__x64_sys_uname` is the old uname of 32-bit
/// tasks: hooking it would count nothing).
std::string SyscallFunction(std::string_view prefix, std::string_view name);
/// This build's architecture's prefix; empty where kmon knows none (no fexit there).
std::string_view SyscallFunctionPrefix();

/// Which fexit slot counts which syscall; `ok` false says why there is no plan.
struct FexitPlan {
  bool ok = false;
  std::vector<std::string> functions;  // slot i hooks functions[i]
  std::vector<int> numbers;            // ... and counts it as numbers[i]
  std::string reason;                  // when !ok: why the tracepoint counts instead
};
/// Pure: one slot per syscall, each function found in `vmlinux` as a BTF FUNC;
/// more syscalls than `slots`, or a function missing, is no plan at all (the
/// tracepoint then counts every chosen syscall, one hook for all).
FexitPlan PlanFexitSlots(const btf* vmlinux, std::string_view prefix,
                         const std::vector<std::string>& names, const std::vector<int>& numbers,
                         size_t slots);

/// The hook in use and why, as the log and `/` say it.
struct SyscallHookState {
  bool fexit = false;
  std::vector<int> hooked;  // fexit: the numbers with a slot attached
  std::string reason;       // why this hook
  /// "hook: tp_btf/sys_exit (fexit refused by this kernel: load: Operation not permitted)"
  std::string Describe() const;
};

/// Aggregated counts of one (cgroup, syscall) pair, summed over CPUs.
struct SyscallCount {
  uint64_t cgroup_id = 0;
  int nr = 0;
  uint64_t count = 0;
  uint64_t errors = 0;
};

/// The data maps (collectors/data_source.h).
using SyscallCountSource = DataSource<SyscallCount>;

/// Turns counts into the two families, resolving cgroups and syscall names.
/// Pure apart from the labeler: golden tests feed it fixed input.
/// `names` maps native syscall numbers to names; numbers not in it are skipped.
std::vector<prometheus::MetricFamily> BuildSyscallFamilies(const std::vector<SyscallCount>& counts,
                                                           const std::map<int, std::string>& names,
                                                           WorkloadLabeler* labeler);

class SyscallsCollector : public BpfCollector {
 public:
  explicit SyscallsCollector(const CollectorDeps& deps);
  /// The hook chosen at the last start (and a reload's switch to the tracepoint).
  SyscallHookState hook() const;

 private:
  absl::Status BeforeLoad(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override { source_.reset(); }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  /// Loads and attaches the planned slots in an object of their own, thrown away
  /// after: a refusal (lockdown) leaves the collector's object untouched.
  absl::Status ProbeFexit(const FexitPlan& plan);
  absl::Status WriteSyscallSet(const std::vector<int>& numbers, uint8_t hook);
  absl::Status WriteConfig();
  /// A new cache generation: every way takes its key anew, through `counts`.
  void NextGeneration();
  /// A reload asked for a syscall no slot hooks: the tracepoint takes over all.
  absl::Status SwitchToTracepoint(const std::vector<int>& numbers, const std::string& why);
  /// Deletes data-map entries of cgroups that are gone and of syscalls no longer
  /// counted; true when it deleted one.
  bool DropStale(const std::vector<SyscallCount>& counts);

  syscalls_bpf* skel_ = nullptr;
  std::unique_ptr<SyscallCountSource> source_;
  syscall_config config_{};
  std::map<int, std::string> names_;
  SyscallHookMode requested_ = SyscallHookMode::kAuto;
  SyscallHookState hook_;  // guarded by mu_
  // The tracepoint's sc_cache: kmon_sc_flush on every CPU before each read.
  CpuCacheFlush cache_{"syscalls", "syscalls are counted without the per-CPU cache"};
};

}  // namespace kmon
