// The one place a collector turns a cgroup id from a BPF map key into the labels
// every per-workload series carries (ebpf_exporter's decoders are the model: a key
// field becomes a label in one place), with the two rules that go with it:
//  - the series budget (`limits.max_series_per_collector`): workloads are admitted
//    in the order they are asked for until the budget is spent, later ones are
//    folded into namespace/pod/container = "__overflow__" and counted once each;
//  - gone cgroups: an id no live cgroup has is not exported, and its map entries
//    may be deleted once it has been missing at every pass for a grace period
//    (a cgroup made after the resolver's last rescan is unknown for a moment too).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "collectors/families.h"
#include "collectors/missing_since.h"
#include "provider/workload.h"

namespace kmon {

class WorkloadLabeler {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr Clock::duration kDefaultGrace = std::chrono::seconds(5);

  /// A pass is open from construction on, so pure builders can be fed one directly.
  explicit WorkloadLabeler(WorkloadResolver* workloads, int64_t max_series = 20000,
                           Clock::duration grace = kDefaultGrace);

  void SetMaxSeries(int64_t max_series) { max_series_ = max_series; }
  int64_t MaxSeries() const { return max_series_; }

  /// Starts one pass over a collector's data (one scrape): the budget is spent
  /// afresh and the gone-cgroup clock advances to `now`.
  void BeginPass(Clock::time_point now = Clock::now());
  /// Ends the pass: an id not looked up in it is forgotten by the gone rule.
  void EndPass();

  /// Labels of a cgroup id: all empty (node level) for 0, nullopt when no live
  /// cgroup has the id (see Gone).
  std::optional<WorkloadLabels> Lookup(uint64_t cgroup_id);
  /// The same without a copy: the labeler's own, valid until EndPass; null when gone.
  /// A cgroup is asked of the resolver once per pass, however many rows name it, and
  /// its labels (and its budget key) are kept from pass to pass while they stay the same.
  const WorkloadLabels* Find(uint64_t cgroup_id);
  /// Find, then the budget: the labels, the "__overflow__" labels, or null when gone.
  const WorkloadLabels* Labels(uint64_t cgroup_id, int64_t series);
  /// `labels` when `series` more fit the budget, else the "__overflow__" labels.
  /// A workload is charged once per pass, however many of its cgroups ask.
  WorkloadLabels Admit(const WorkloadLabels& labels, int64_t series);
  /// Lookup, then Admit; nullopt when the cgroup is gone.
  std::optional<WorkloadLabels> LabelsFor(uint64_t cgroup_id, int64_t series);
  /// The budget for series keyed by something else than one workload (a
  /// topology edge): true when `series` more fit under `key` in this pass.
  bool Fits(const std::string& key, int64_t series) { return budget_.Fits(key, series); }

  /// True when `cgroup_id` was looked up in this pass, was missing, and has been
  /// missing at every pass for the grace period: its map entries can be deleted.
  bool Gone(uint64_t cgroup_id) const { return gone_.count(cgroup_id) > 0; }

  /// Series folded into "__overflow__" so far (each folded workload counted once).
  uint64_t Overflowed() const { return budget_.Overflowed(); }

 private:
  struct Known {
    WorkloadLabels labels;
    std::string budget_key;  // the workload's key in the series budget
    uint64_t pass = 0;       // the pass it was last asked of the resolver in
    bool found = false;      // whether the resolver knew it then
  };
  Known* Resolve(uint64_t cgroup_id);

  WorkloadResolver* workloads_;
  int64_t max_series_;
  uint64_t pass_ = 0;
  std::unordered_map<uint64_t, Known> known_;  // cgroups asked for in this pass or the last
  SeriesBudget budget_;
  MissingSince<uint64_t> missing_;
  std::unordered_set<uint64_t> gone_;
};

}  // namespace kmon
