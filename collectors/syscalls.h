// `syscalls`: counts of chosen syscalls and their failures per cgroup (Kmon's
// fine-grained syscall indicator), from one tp_btf hook on sys_exit.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectors/bpf_collector.h"
#include "collectors/data_source.h"

struct syscalls_bpf;

namespace kmon {

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
};

/// The built-in section, with the names resolved to this architecture's numbers.
std::unique_ptr<SyscallsConfig> DefaultSyscallsSection();
void ParseSyscallsSection(YamlParser& p, const YamlValue& v, SyscallsConfig* c);

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

 private:
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override { source_.reset(); }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  absl::Status WriteSyscallSet(const std::vector<int>& numbers);
  /// Deletes data-map entries of cgroups that are gone and of syscalls no longer counted.
  void DropStale(const std::vector<SyscallCount>& counts);

  syscalls_bpf* skel_ = nullptr;
  std::unique_ptr<SyscallCountSource> source_;
  std::map<int, std::string> names_;
};

}  // namespace kmon
