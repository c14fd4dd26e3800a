#include "collectors/collector_config.h"

#include <absl/strings/str_cat.h>

#include "base/strict_yaml.h"

namespace kmon {

void ParseLatencyBuckets(YamlParser& p, const YamlValue& f, size_t max, std::vector<double>* out) {
  std::vector<double> buckets;
  p.Buckets(f, &buckets);
  if (buckets.empty()) return;  // reported
  if (buckets.size() > max) {
    p.Report(f.key, f.line,
             absl::StrCat("has ", buckets.size(), " bounds; at most ", max,
                          " fit the kernel's histogram"));
    return;
  }
  *out = std::move(buckets);
}

bool TargetsConfig::Filters() const {
  // exclude_namespaces alone does not count: without Kubernetes metadata nothing
  // can be excluded by namespace, and the default config excludes kube-system,
  // so counting it would switch every default install off the BPF fast path of
  // "watch every cgroup" onto per-event control-map lookups.
  return !namespaces.empty() || !pod_selector.empty() || !host_processes;
}

const std::map<std::string, uint32_t>& LimitsConfig::MapEntriesOf(
    std::string_view collector) const {
  static const std::map<std::string, uint32_t> none;
  auto it = bpf_map_entries.find(collector);
  return it == bpf_map_entries.end() ? none : it->second;
}

CollectorSections::CollectorSections(const CollectorSections& other) { *this = other; }

CollectorSections& CollectorSections::operator=(const CollectorSections& other) {
  if (this == &other) return *this;
  sections_.clear();
  for (const auto& [name, s] : other.sections_) sections_.emplace(name, s->Clone());
  return *this;
}

void CollectorSections::Set(std::string name, std::unique_ptr<CollectorSection> section) {
  sections_[std::move(name)] = std::move(section);
}

const CollectorSection* CollectorSections::Find(std::string_view name) const {
  auto it = sections_.find(name);
  return it == sections_.end() ? nullptr : it->second.get();
}

CollectorSection* CollectorSections::Find(std::string_view name) {
  auto it = sections_.find(name);
  return it == sections_.end() ? nullptr : it->second.get();
}

bool* CollectorSections::EnabledFlag(std::string_view name) {
  CollectorSection* s = Find(name);
  return s == nullptr ? nullptr : &s->enabled;
}

const bool* CollectorSections::EnabledFlag(std::string_view name) const {
  const CollectorSection* s = Find(name);
  return s == nullptr ? nullptr : &s->enabled;
}

}  // namespace kmon
