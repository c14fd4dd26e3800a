// Building prometheus-cpp MetricFamily values from aggregated BPF data, with the
// per-collector series limit (`limits.max_series_per_collector`).
#pragma once

#include <absl/container/inlined_vector.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "provider/workload.h"

namespace kmon {

inline constexpr char kOverflowLabel[] = "__overflow__";

/// Bounds in seconds of the log2 histograms BPF fills with kmon_log2_us_slot
/// (bpf/kmon_common.h): 2^i microseconds for i = 0 .. count-1.
std::vector<double> Log2MicrosecondBounds(int count);

/// The label values of one sample, viewed rather than copied: a braced list
/// (`{l.namespace_, l.pod, l.container, "read"}`) or a vector of strings. The views
/// need only last for the call that takes them.
class LabelValues {
 public:
  LabelValues() = default;
  LabelValues(std::initializer_list<std::string_view> values) : values_(values) {}
  LabelValues(const std::vector<std::string>& values) : values_(values.begin(), values.end()) {}
  size_t size() const { return values_.size(); }
  std::string_view operator[](size_t i) const { return values_[i]; }

 private:
  absl::InlinedVector<std::string_view, 8> values_;
};

/// Collects samples of one family; samples with equal label values are summed.
/// What it holds per sample is small: each distinct label value is kept once (a
/// node's thousands of series repeat a few hundred workload names), a sample is its
/// values' numbers and its value (or its bucket counts); label strings are made only
/// by Build(), once, for the family it returns.
class FamilyBuilder {
 public:
  FamilyBuilder(std::string name, std::string help, prometheus::MetricType type,
                std::vector<std::string> label_names);

  /// One value per label name (extra ones are ignored, missing ones left out).
  void AddCounter(const LabelValues& label_values, double value);
  void AddGauge(const LabelValues& label_values, double value);
  /// `counts` are per-bucket (not cumulative), one per bound plus the +Inf slot.
  /// Summed into an earlier sample with the same labels, that sample's bounds stay.
  void AddHistogram(const LabelValues& label_values, const std::vector<double>& bounds,
                    std::span<const uint64_t> counts, double sum);
  void AddHistogram(const LabelValues& label_values, const std::vector<double>& bounds,
                    const std::vector<uint64_t>& counts, double sum) {
    AddHistogram(label_values, bounds, std::span<const uint64_t>(counts), sum);
  }

  /// The family, samples ordered by label values (stable output for golden tests).
  prometheus::MetricFamily Build() const;

 private:
  static constexpr uint32_t kMissing = UINT32_MAX;  // fewer values than label names
  struct Hist {
    uint32_t bounds;               // index into bounds_
    uint32_t first_count, counts;  // slice of counts_
    double sum;
  };
  /// Appends the ids of `values` (interning new ones) to `ids`.
  void AddIds(const LabelValues& values, std::vector<uint32_t>* ids);
  /// Sample indexes ordered by label values, equal ones adjacent in the order added.
  std::vector<uint32_t> Sorted(const std::vector<uint32_t>& ids, size_t samples) const;
  bool SameLabels(const std::vector<uint32_t>& ids, uint32_t a, uint32_t b) const;
  std::vector<prometheus::ClientMetric::Label> Labels(const std::vector<uint32_t>& ids,
                                                      uint32_t sample) const;

  std::string name_, help_;
  prometheus::MetricType type_;
  std::vector<std::string> label_names_;
  std::deque<std::string> strings_;  // interned label values; a deque never moves them
  std::unordered_map<std::string_view, uint32_t> string_ids_;
  std::vector<uint32_t> value_ids_;  // label_names_.size() per counter/gauge sample
  std::vector<double> values_;
  std::vector<uint32_t> hist_ids_;  // label_names_.size() per histogram sample
  std::vector<Hist> hists_;
  std::vector<uint64_t> counts_;
  std::vector<std::vector<double>> bounds_;  // distinct bounds, usually one
};

/// Each builder's family, in order. (A braced list of built families would copy
/// every one of them: an initializer_list's elements cannot be moved from.)
std::vector<prometheus::MetricFamily> BuildAll(
    std::initializer_list<const FamilyBuilder*> builders);

/// Admits workloads into a collector's output until its series limit is reached;
/// later workloads are folded into namespace/pod/container = "__overflow__".
/// Each distinct folded workload adds its series to Overflowed() once, not per scrape.
class SeriesBudget {
 public:
  /// Starts a scrape: `max_series` for the whole collector.
  void Begin(int64_t max_series);
  /// `labels` unchanged when `series` more fit in the budget, else overflow labels.
  WorkloadLabels Admit(const WorkloadLabels& labels, int64_t series);
  /// True when `series` more fit under `key`; a key asked again in the same
  /// scrape gets the first answer and costs nothing more.
  bool Fits(const std::string& key, int64_t series);
  uint64_t Overflowed() const { return overflowed_; }
  /// The key Admit charges a workload under.
  static std::string KeyOf(const WorkloadLabels& labels);

 private:
  struct Answer {
    uint64_t scrape;  // the scrape it was given in
    bool admitted;
  };
  int64_t max_ = 0;
  int64_t used_ = 0;
  uint64_t scrape_ = 0;
  // Kept across scrapes (a key asked every scrape is not copied anew each time);
  // keys not asked in the last scrape are dropped at the next Begin.
  std::unordered_map<std::string, Answer> answers_;
  std::unordered_set<std::string> folded_ever_;
  uint64_t overflowed_ = 0;
};

}  // namespace kmon
