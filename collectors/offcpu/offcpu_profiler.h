// Off-CPU stacks for /debug/offcpu: the kernel aggregates blocked time per (cgroup,
// process, kernel stack id, user stack id); this turns those aggregates into named
// stacks per workload, keeps them when processes exit, and keeps snapshots so a
// query can ask for the last N seconds only.
#pragma once

#include <absl/status/status.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "bpf/cpu.h"
#include "collectors/missing_since.h"
#include "collectors/offcpu/frame_resolver.h"
#include "collectors/offcpu/offcpu_render.h"
#include "provider/workload.h"

namespace kmon {

struct OffCpuTotals {
  uint64_t ns = 0;
  uint64_t count = 0;
};

/// One entry of the kernel's aggregate map, summed over CPUs.
struct OffCpuRawEntry {
  offcpu_stack_key key{};
  OffCpuTotals totals;
};

/// Seam for the BPF maps: `offcpu_stacks`, `stacks`, `task_state`, `cpu_lost` in production.
class OffCpuStackSource {
 public:
  virtual ~OffCpuStackSource() = default;
  /// Every aggregate, cumulative.
  virtual absl::Status Read(std::vector<OffCpuRawEntry>* out) = 0;
  /// The addresses of a stack id, innermost first; empty when the id is unknown.
  virtual std::vector<uint64_t> Stack(int32_t id) = 0;
  /// Reads one aggregate and deletes it (only for keys nothing adds to any more).
  virtual std::optional<OffCpuTotals> Take(const offcpu_stack_key& key) = 0;
  /// Every id in the stack map, and the ids threads hold while off CPU.
  virtual std::vector<int32_t> StackIds() = 0;
  virtual std::vector<int32_t> StackIdsHeldByThreads() = 0;
  virtual void DeleteStack(int32_t id) = 0;
  /// Capacity of the stack map.
  virtual size_t StackCapacity() const = 0;
  /// Stacks refused so far because their hash bucket held another (cumulative).
  virtual uint64_t StackCollisions() = 0;
  /// Empties the aggregates and the stack map (before and after an on-demand
  /// profiling window, while nothing captures stacks).
  virtual void Clear();
};

/// What a /debug/offcpu query selects. An unset filter matches everything.
struct OffCpuQuery {
  std::optional<std::string> namespace_, pod, container;
  /// Only time recorded in about the last `window`; nullopt: since the collector started.
  std::optional<std::chrono::nanoseconds> window;
};

struct OffCpuResult {
  std::vector<OffCpuStack> stacks;
  /// The span actually covered (the window rounded up to the snapshot grid, or
  /// shortened to what kmon has seen).
  std::chrono::nanoseconds covered{0};
  /// Profiled on demand: the span is the window that followed the request.
  bool on_demand = false;
};

/// Not thread-safe: OffCpuService serializes calls.
///
/// Memory: the kernel map holds at most KMON_CPU_OFFCPU_STACKS_MAX aggregates; user
/// space keeps their totals, at most kMaxRetired (cgroup, stack) totals of exited
/// processes, the named stacks those and the history refer to (each stack a vector
/// of frame ids, each distinct frame name stored once), and the history: deltas
/// every kSnapshotPeriod for the last kFineHistory, merged into deltas of about
/// kCoarsePeriod beyond, for kRetention. With the defaults that is at most 12 + 9
/// deltas, each a vector of 32-byte entries of the (cgroup, stack)s that changed.
class OffCpuProfiler {
 public:
  /// Snapshots of the cumulative totals are kept this often and this long: a window
  /// of N seconds is served from the newest snapshot at least N seconds old.
  static constexpr std::chrono::seconds kSnapshotPeriod{5};
  static constexpr std::chrono::seconds kFineHistory{60};
  static constexpr std::chrono::seconds kCoarsePeriod{60};
  static constexpr std::chrono::seconds kRetention{600};
  /// Stacks of exited processes kept in user space, by (cgroup, named stack).
  static constexpr size_t kMaxRetired = 16384;

  /// `max_retired` is kMaxRetired but for tests.
  OffCpuProfiler(std::unique_ptr<OffCpuStackSource> source, std::unique_ptr<FrameResolver> frames,
                 WorkloadResolver* workloads, std::chrono::steady_clock::time_point start,
                 size_t max_retired = kMaxRetired);

  /// Reads the kernel's aggregates, names stacks seen for the first time (capturing
  /// their process's maps while it lives), moves exited processes' aggregates into
  /// user space, drops cgroups gone for a while, and keeps a snapshot every
  /// kSnapshotPeriod. OffCpuService calls it every second and before each query.
  absl::Status Refresh(std::chrono::steady_clock::time_point now);

  /// Refreshes, then answers: stacks by workload, filtered, over the window. The
  /// result is a copy: rendering it needs no lock on the profiler.
  absl::StatusOr<OffCpuResult> Query(const OffCpuQuery& query,
                                     std::chrono::steady_clock::time_point now);

  /// Forgets everything and empties the kernel's aggregates and stacks: what is
  /// queried next covers only what happens from `now` (an on-demand window).
  void Reset(std::chrono::steady_clock::time_point now);

  /// Aggregates of exited processes that found no room in user space (kMaxRetired),
  /// each counted once; they stay in the kernel map, where they still count.
  uint64_t RetiredDropped() const { return retired_dropped_; }
  size_t NamedStacks() const { return stacks_.size(); }
  size_t InternedFrames() const { return frame_index_.size(); }
  size_t Deltas() const { return deltas_.size(); }

 private:
  struct KeyHash {
    size_t operator()(const offcpu_stack_key& k) const;
  };
  struct KeyEq {
    bool operator()(const offcpu_stack_key& a, const offcpu_stack_key& b) const;
  };
  struct ViewKey {
    uint64_t cgroup_id;
    uint32_t stack;
    bool operator==(const ViewKey&) const = default;
    bool operator<(const ViewKey& o) const {
      return cgroup_id != o.cgroup_id ? cgroup_id < o.cgroup_id : stack < o.stack;
    }
  };
  struct ViewKeyHash {
    size_t operator()(const ViewKey& k) const;
  };
  using View = std::unordered_map<ViewKey, OffCpuTotals, ViewKeyHash>;
  // What changed between two snapshots, sorted by key.
  struct DeltaEntry {
    ViewKey key;
    OffCpuTotals totals;
  };
  struct Delta {
    std::chrono::steady_clock::time_point time;  // of the snapshot it ends at
    std::vector<DeltaEntry> entries;
  };
  struct Live {
    uint32_t stack;
    OffCpuTotals totals;
    bool stuck = false;  // its process has exited, and retired_ had no room
  };
  // A named stack: frame ids, the process name (or kNoProcess), user frames outermost
  // first, then kSplit, then kernel frames outermost first. Stored once, as the key
  // of stack_index_.
  using Frames = std::vector<uint32_t>;
  struct FramesHash {
    size_t operator()(const Frames& f) const;
  };
  static constexpr uint32_t kSplit = UINT32_MAX;
  static constexpr uint32_t kNoProcess = UINT32_MAX - 1;

  uint32_t Name(const offcpu_stack_key& key);
  const Frames& KernelFrames(int32_t id);
  uint32_t InternFrame(const std::string& name);
  uint32_t InternStack(Frames frames);
  View CurrentView() const;
  void Retire(const ProcessId& p, const std::vector<offcpu_stack_key>& keys, bool known_dead);
  void DropGoneCgroups(std::chrono::steady_clock::time_point now);
  void SweepStackIds(std::chrono::steady_clock::time_point now);
  void CollectNamedStacks();
  void MergeOldDeltas(std::chrono::steady_clock::time_point now);

  std::unique_ptr<OffCpuStackSource> source_;
  std::unique_ptr<FrameResolver> frames_;
  WorkloadResolver* workloads_;
  std::chrono::steady_clock::time_point start_;

  std::unordered_map<offcpu_stack_key, Live, KeyHash, KeyEq> live_;  // in the kernel map
  size_t max_retired_;
  View retired_;  // of exited processes, moved out of the kernel map
  uint64_t retired_dropped_ = 0;

  // Interned frame names: id -> name (null when free), name -> id.
  std::unordered_map<std::string, uint32_t> frame_index_;
  std::vector<const std::string*> frame_names_;
  std::vector<uint32_t> free_frames_;
  // Interned named stacks: the frames -> id, and id -> the same frames (the map's key).
  std::unordered_map<Frames, uint32_t, FramesHash> stack_index_;
  std::unordered_map<uint32_t, const Frames*> stacks_;
  uint32_t next_stack_ = 1;
  size_t stacks_gc_mark_ = 1024;
  std::unordered_map<int32_t, Frames> kernel_frames_;  // by kernel stack id

  std::chrono::steady_clock::time_point last_stack_sweep_{};
  std::chrono::steady_clock::time_point last_fill_check_{};
  uint64_t collisions_at_sweep_ = 0;

  View last_snapshot_;
  std::chrono::steady_clock::time_point last_snapshot_time_;
  std::chrono::steady_clock::time_point base_time_;  // the view before the oldest delta
  std::deque<Delta> deltas_;
  MissingSince<uint64_t> missing_cgroups_;
};

}  // namespace kmon
