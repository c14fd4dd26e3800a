// `syscalls`: counts of chosen syscalls and their failures per cgroup (Kmon's
// fine-grained syscall indicator), from one tp_btf hook on sys_exit.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "collectors/collector.h"
#include "collectors/families.h"
#include "collectors/missing_since.h"

struct syscalls_bpf;

namespace kmon {

/// Aggregated counts of one (cgroup, syscall) pair, summed over CPUs.
struct SyscallCount {
  uint64_t cgroup_id = 0;
  int nr = 0;
  uint64_t count = 0;
  uint64_t errors = 0;
};

/// Seam for the data map: the BPF map in production, a vector in tests.
class SyscallCountSource {
 public:
  virtual ~SyscallCountSource() = default;
  virtual absl::Status Read(std::vector<SyscallCount>* out) = 0;
};

/// Turns counts into the two families, resolving cgroups and syscall names.
/// Pure apart from the resolver: golden tests feed it fixed input.
/// `names` maps native syscall numbers to names; numbers not in it are skipped.
std::vector<prometheus::MetricFamily> BuildSyscallFamilies(
    const std::vector<SyscallCount>& counts, const std::map<int, std::string>& names,
    WorkloadResolver* workloads, SeriesBudget* budget, int64_t max_series);

class SyscallsCollector : public Collector {
 public:
  explicit SyscallsCollector(const CollectorDeps& deps);
  ~SyscallsCollector() override;

  absl::Status Start(const Config& config) override;
  absl::Status Reconfigure(const Config& config) override;
  void Collect(std::vector<prometheus::MetricFamily>* out) noexcept override;
  void Stop() override;
  const bpf_object* BpfObject() const override;
  std::map<std::string, uint64_t> EventsLost() const override;
  uint64_t SeriesOverflow() const override;

 private:
  absl::Status WriteSyscallSet(const std::vector<int>& numbers);
  /// Deletes data-map entries of cgroups that are gone and of syscalls no longer counted.
  void DropStale(const std::vector<SyscallCount>& counts);

  CollectorDeps deps_;
  syscalls_bpf* skel_ = nullptr;
  std::unique_ptr<SyscallCountSource> source_;
  mutable std::mutex mu_;  // guards names_, max_series_, budget_ against reload
  std::map<int, std::string> names_;
  int64_t max_series_ = 20000;
  SeriesBudget budget_;
  std::atomic<uint64_t> read_errors_{0};
  MissingSince<uint64_t> missing_;
};

}  // namespace kmon
