#include "collectors/families.h"

#include <limits>

namespace kmon {

FamilyBuilder::FamilyBuilder(std::string name, std::string help, prometheus::MetricType type,
                             std::vector<std::string> label_names)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)) {}

void FamilyBuilder::AddCounter(const std::vector<std::string>& label_values, double value) {
  values_[label_values] += value;
}

void FamilyBuilder::AddGauge(const std::vector<std::string>& label_values, double value) {
  values_[label_values] += value;
}

void FamilyBuilder::AddHistogram(const std::vector<std::string>& label_values,
                                 const std::vector<double>& bounds,
                                 const std::vector<uint64_t>& counts, double sum) {
  Hist& h = hists_[label_values];
  if (h.counts.empty()) {
    h.bounds = bounds;
    h.counts.assign(counts.size(), 0);
  }
  for (size_t i = 0; i < counts.size() && i < h.counts.size(); ++i) h.counts[i] += counts[i];
  h.sum += sum;
}

prometheus::MetricFamily FamilyBuilder::Build() const {
  prometheus::MetricFamily f;
  f.name = name_;
  f.help = help_;
  f.type = type_;
  auto labels_of = [&](const std::vector<std::string>& values) {
    std::vector<prometheus::ClientMetric::Label> out;
    for (size_t i = 0; i < label_names_.size() && i < values.size(); ++i) {
      out.push_back({label_names_[i], values[i]});
    }
    return out;
  };
  for (const auto& [lv, v] : values_) {
    prometheus::ClientMetric m;
    m.label = labels_of(lv);
    if (type_ == prometheus::MetricType::Gauge) {
      m.gauge.value = v;
    } else {
      m.counter.value = v;
    }
    f.metric.push_back(std::move(m));
  }
  for (const auto& [lv, h] : hists_) {
    prometheus::ClientMetric m;
    m.label = labels_of(lv);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += h.counts[i];
      prometheus::ClientMetric::Bucket b;
      b.cumulative_count = cumulative;
      b.upper_bound = i < h.bounds.size() ? h.bounds[i] : std::numeric_limits<double>::infinity();
      m.histogram.bucket.push_back(b);
    }
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = h.sum;
    f.metric.push_back(std::move(m));
  }
  return f;
}

void SeriesBudget::Begin(int64_t max_series) {
  max_ = max_series;
  used_ = 0;
  seen_this_scrape_.clear();
}

bool SeriesBudget::Fits(const std::string& key, int64_t series) {
  auto it = seen_this_scrape_.find(key);
  if (it != seen_this_scrape_.end()) return it->second;
  const bool admitted = used_ + series <= max_;
  if (admitted) used_ += series;
  seen_this_scrape_.emplace(key, admitted);
  // Remember folded keys (bounded) so each is counted once, not per scrape.
  if (!admitted && folded_ever_.size() < 100000 && folded_ever_.insert(key).second) {
    overflowed_ += static_cast<uint64_t>(series);
  }
  return admitted;
}

WorkloadLabels SeriesBudget::Admit(const WorkloadLabels& labels, int64_t series) {
  if (Fits(labels.namespace_ + '\x1f' + labels.pod + '\x1f' + labels.container, series)) {
    return labels;
  }
  return WorkloadLabels{kOverflowLabel, kOverflowLabel, kOverflowLabel};
}

std::vector<double> Log2MicrosecondBounds(int count) {
  std::vector<double> b;
  for (int i = 0; i < count; ++i) b.push_back(1e-6 * static_cast<double>(1ULL << i));
  return b;
}

}  // namespace kmon
