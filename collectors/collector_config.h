// What collectors are configured with: the parts of the config every collector
// shares (targets, limits, interval) and one section per collector, each defined
// and parsed next to its collector (collectors/X.h). The exporter's Config adds
// what only it needs (Kubernetes access) on top.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kmon {

class YamlParser;
struct YamlValue;

/// A collector's `latency_buckets` (the upper bounds of a histogram its BPF side
/// fills) into `out` when they are valid and at most `max`, the room of the kernel's
/// histogram; else the problem is reported at the key and `out` stays as it was. The
/// bound is checked here, not at the collector, so that a reload never says
/// "reloaded" and keeps the old buckets.
void ParseLatencyBuckets(YamlParser& p, const YamlValue& f, size_t max, std::vector<double>* out);

struct TargetsConfig {
  std::vector<std::string> namespaces;  // empty: all
  std::vector<std::string> exclude_namespaces{"kube-system"};
  std::map<std::string, std::string> pod_selector;  // matchLabels
  bool host_processes = true;
  /// True when the config narrows what is watched, so BPF must consult the
  /// watched-cgroups control map instead of counting every cgroup.
  bool Filters() const;
};

/// A BPF map whose size the config may set (limits.bpf_map_entries), with the size
/// the object gives it: hash-type maps, whose max_entries caps the keys they hold.
struct BpfMapSize {
  const char* map;
  uint32_t entries;
};
/// The most entries limits.bpf_map_entries may give a map.
inline constexpr int64_t kMaxBpfMapEntries = int64_t{1} << 24;
/// The pseudo-collector of limits.bpf_map_entries that names the maps every BPF
/// collector shares (the watched-cgroups set), as kmon_bpf_map_* name them.
inline constexpr char kSharedMapsCollector[] = "shared";

struct LimitsConfig {
  int64_t max_series_per_collector = 20000;
  /// collector (or "shared") -> map -> max_entries, for the maps the config sizes;
  /// the others keep their object's size.
  std::map<std::string, std::map<std::string, uint32_t>, std::less<>> bpf_map_entries;
  /// The sizes the config gives `collector`'s maps (empty when none).
  const std::map<std::string, uint32_t>& MapEntriesOf(std::string_view collector) const;
};

/// One collector's section of `collectors:`. Each collector derives its own with
/// CollectorSectionOf<T> and names itself in `static constexpr char kName[]`.
struct CollectorSection {
  virtual ~CollectorSection() = default;
  virtual std::unique_ptr<CollectorSection> Clone() const = 0;
  bool enabled = true;
};

template <typename T>
struct CollectorSectionOf : CollectorSection {
  std::unique_ptr<CollectorSection> Clone() const override {
    return std::make_unique<T>(static_cast<const T&>(*this));
  }
};

/// The `collectors:` map: name -> section, deep-copied with the config.
class CollectorSections {
 public:
  CollectorSections() = default;
  CollectorSections(const CollectorSections& other);
  CollectorSections& operator=(const CollectorSections& other);
  CollectorSections(CollectorSections&&) = default;
  CollectorSections& operator=(CollectorSections&&) = default;

  void Set(std::string name, std::unique_ptr<CollectorSection> section);
  /// The section of `name`, or null when the config has none.
  const CollectorSection* Find(std::string_view name) const;
  CollectorSection* Find(std::string_view name);

  /// T's section (by T::kName); T's defaults when the config has none.
  template <typename T>
  const T& Get() const {
    if (const auto* s = dynamic_cast<const T*>(Find(T::kName))) return *s;
    static const T defaults{};
    return defaults;
  }
  /// T's section for editing; created with T's defaults when missing.
  template <typename T>
  T& Mutable() {
    if (auto* s = dynamic_cast<T*>(Find(T::kName))) return *s;
    auto fresh = std::make_unique<T>();
    T* raw = fresh.get();
    Set(T::kName, std::move(fresh));
    return *raw;
  }

  /// The `enabled` flag of collector `name`, or nullptr for a name without a section.
  bool* EnabledFlag(std::string_view name);
  const bool* EnabledFlag(std::string_view name) const;

 private:
  std::map<std::string, std::unique_ptr<CollectorSection>, std::less<>> sections_;
};

/// What Start() and Reconfigure() hand a collector.
struct CollectorConfig {
  std::chrono::nanoseconds interval = std::chrono::seconds(15);
  TargetsConfig targets;
  LimitsConfig limits;
  CollectorSections collectors;
};

}  // namespace kmon
