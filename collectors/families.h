// Building prometheus-cpp MetricFamily values from aggregated BPF data, with the
// per-collector series limit (`limits.max_series_per_collector`).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_set>
#include <vector>

#include <prometheus/metric_family.h>

#include "provider/workload.h"

namespace kmon {

inline constexpr char kOverflowLabel[] = "__overflow__";

/// Bounds in seconds of the log2 histograms BPF fills with kmon_log2_us_slot
/// (bpf/kmon_common.h): 2^i microseconds for i = 0 .. count-1.
std::vector<double> Log2MicrosecondBounds(int count);

/// Collects samples of one family; samples with equal label values are summed.
class FamilyBuilder {
 public:
  FamilyBuilder(std::string name, std::string help, prometheus::MetricType type,
                std::vector<std::string> label_names);

  void AddCounter(const std::vector<std::string>& label_values, double value);
  void AddGauge(const std::vector<std::string>& label_values, double value);
  /// `counts` are per-bucket (not cumulative), one per bound plus the +Inf slot.
  void AddHistogram(const std::vector<std::string>& label_values,
                    const std::vector<double>& bounds, const std::vector<uint64_t>& counts,
                    double sum);

  /// The family, samples ordered by label values (stable output for golden tests).
  prometheus::MetricFamily Build() const;

 private:
  struct Hist {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;
    double sum = 0;
  };
  std::string name_, help_;
  prometheus::MetricType type_;
  std::vector<std::string> label_names_;
  std::map<std::vector<std::string>, double> values_;
  std::map<std::vector<std::string>, Hist> hists_;
};

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

 private:
  int64_t max_ = 0;
  int64_t used_ = 0;
  std::map<std::string, bool> seen_this_scrape_;
  std::unordered_set<std::string> folded_ever_;
  uint64_t overflowed_ = 0;
};

}  // namespace kmon
