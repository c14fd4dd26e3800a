#include "collectors/families.h"

#include <algorithm>
#include <limits>

namespace kmon {

FamilyBuilder::FamilyBuilder(std::string name, std::string help, prometheus::MetricType type,
                             std::vector<std::string> label_names)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)) {}

void FamilyBuilder::AddIds(const LabelValues& values, std::vector<uint32_t>* ids) {
  for (size_t i = 0; i < label_names_.size(); ++i) {
    if (i >= values.size()) {
      ids->push_back(kMissing);
      continue;
    }
    auto it = string_ids_.find(values[i]);
    if (it == string_ids_.end()) {
      strings_.emplace_back(values[i]);
      it = string_ids_.emplace(strings_.back(), static_cast<uint32_t>(strings_.size() - 1)).first;
    }
    ids->push_back(it->second);
  }
}

void FamilyBuilder::AddCounter(const LabelValues& label_values, double value) {
  AddIds(label_values, &value_ids_);
  values_.push_back(value);
}

void FamilyBuilder::AddGauge(const LabelValues& label_values, double value) {
  AddCounter(label_values, value);
}

void FamilyBuilder::AddHistogram(const LabelValues& label_values, const std::vector<double>& bounds,
                                 std::span<const uint64_t> counts, double sum) {
  AddIds(label_values, &hist_ids_);
  if (bounds_.empty() || bounds_.back() != bounds) bounds_.push_back(bounds);
  hists_.push_back({static_cast<uint32_t>(bounds_.size() - 1),
                    static_cast<uint32_t>(counts_.size()), static_cast<uint32_t>(counts.size()),
                    sum});
  counts_.insert(counts_.end(), counts.begin(), counts.end());
}

std::vector<uint32_t> FamilyBuilder::Sorted(const std::vector<uint32_t>& ids,
                                            size_t samples) const {
  const size_t k = label_names_.size();
  std::vector<uint32_t> order(samples);
  for (size_t i = 0; i < samples; ++i) order[i] = static_cast<uint32_t>(i);
  // By label values, as strings; a missing value sorts before any (a shorter list).
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    for (size_t i = 0; i < k; ++i) {
      const uint32_t x = ids[a * k + i], y = ids[b * k + i];
      if (x == y) continue;
      if (x == kMissing || y == kMissing) return x == kMissing;
      return strings_[x] < strings_[y];
    }
    return false;
  });
  return order;
}

bool FamilyBuilder::SameLabels(const std::vector<uint32_t>& ids, uint32_t a, uint32_t b) const {
  const size_t k = label_names_.size();
  return std::equal(ids.begin() + a * k, ids.begin() + (a + 1) * k, ids.begin() + b * k);
}

std::vector<prometheus::ClientMetric::Label> FamilyBuilder::Labels(const std::vector<uint32_t>& ids,
                                                                   uint32_t sample) const {
  const size_t k = label_names_.size();
  std::vector<prometheus::ClientMetric::Label> out;
  out.reserve(k);
  for (size_t i = 0; i < k; ++i) {
    const uint32_t id = ids[sample * k + i];
    if (id != kMissing) out.push_back({label_names_[i], strings_[id]});
  }
  return out;
}

prometheus::MetricFamily FamilyBuilder::Build() const {
  prometheus::MetricFamily f;
  f.name = name_;
  f.help = help_;
  f.type = type_;
  f.metric.reserve(values_.size() + hists_.size());  // at most: equal labels merge
  const std::vector<uint32_t> values = Sorted(value_ids_, values_.size());
  for (size_t i = 0; i < values.size();) {
    double v = 0;
    size_t j = i;
    for (; j < values.size() && SameLabels(value_ids_, values[i], values[j]); ++j) {
      v += values_[values[j]];
    }
    prometheus::ClientMetric m;
    m.label = Labels(value_ids_, values[i]);
    if (type_ == prometheus::MetricType::Gauge) {
      m.gauge.value = v;
    } else {
      m.counter.value = v;
    }
    f.metric.push_back(std::move(m));
    i = j;
  }
  const std::vector<uint32_t> hists = Sorted(hist_ids_, hists_.size());
  std::vector<uint64_t> counts;
  for (size_t i = 0; i < hists.size();) {
    // The first sample added with these labels decides the bounds and the slots.
    const Hist& first = hists_[hists[i]];
    counts.assign(first.counts, 0);
    double sum = 0;
    size_t j = i;
    for (; j < hists.size() && SameLabels(hist_ids_, hists[i], hists[j]); ++j) {
      const Hist& h = hists_[hists[j]];
      for (uint32_t s = 0; s < h.counts && s < first.counts; ++s)
        counts[s] += counts_[h.first_count + s];
      sum += h.sum;
    }
    const std::vector<double>& bounds = bounds_[first.bounds];
    prometheus::ClientMetric m;
    m.label = Labels(hist_ids_, hists[i]);
    m.histogram.bucket.reserve(counts.size());
    uint64_t cumulative = 0;
    for (size_t b = 0; b < counts.size(); ++b) {
      cumulative += counts[b];
      m.histogram.bucket.push_back(
          {cumulative, b < bounds.size() ? bounds[b] : std::numeric_limits<double>::infinity()});
    }
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = sum;
    f.metric.push_back(std::move(m));
    i = j;
  }
  return f;
}

std::vector<prometheus::MetricFamily> BuildAll(
    std::initializer_list<const FamilyBuilder*> builders) {
  std::vector<prometheus::MetricFamily> out;
  out.reserve(builders.size());
  for (const FamilyBuilder* b : builders) out.push_back(b->Build());
  return out;
}

void SeriesBudget::Begin(int64_t max_series) {
  max_ = max_series;
  used_ = 0;
  ++scrape_;
  for (auto it = answers_.begin(); it != answers_.end();) {
    it = it->second.scrape + 1 < scrape_ ? answers_.erase(it) : std::next(it);
  }
}

bool SeriesBudget::Fits(const std::string& key, int64_t series) {
  auto it = answers_.find(key);
  if (it != answers_.end() && it->second.scrape == scrape_) return it->second.admitted;
  const bool admitted = used_ + series <= max_;
  if (admitted) used_ += series;
  if (it == answers_.end()) it = answers_.emplace(key, Answer{}).first;
  it->second = {scrape_, admitted};
  // Remember folded keys (bounded) so each is counted once, not per scrape.
  if (!admitted && folded_ever_.size() < 100000 && folded_ever_.insert(key).second) {
    overflowed_ += static_cast<uint64_t>(series);
  }
  return admitted;
}

std::string SeriesBudget::KeyOf(const WorkloadLabels& labels) {
  return labels.namespace_ + '\x1f' + labels.pod + '\x1f' + labels.container;
}

WorkloadLabels SeriesBudget::Admit(const WorkloadLabels& labels, int64_t series) {
  if (Fits(KeyOf(labels), series)) return labels;
  return WorkloadLabels{kOverflowLabel, kOverflowLabel, kOverflowLabel};
}

std::vector<double> Log2MicrosecondBounds(int count) {
  std::vector<double> b;
  for (int i = 0; i < count; ++i) b.push_back(1e-6 * static_cast<double>(1ULL << i));
  return b;
}

}  // namespace kmon
