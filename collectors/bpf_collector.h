// The shared base of every collector that loads a BPF object. It owns the
// generated skeleton through libbpf's generic skeleton calls
// (bpf_object__{open,load,attach,destroy}_skeleton), so the start sequence is
// written once (libbpf-bootstrap's bootstrap.c shows it):
//   open -> check map layouts against the shared header -> map sizes from
//   limits.bpf_map_entries -> BeforeLoad (feature
//   probes, set_autoload) -> share the watched-cgroups maps -> load -> Configure
//   (control maps) -> attach -> AfterAttach (data sources, threads, routes)
// and Stop reverses it. Every object carries kmon_common.bpf.h's maps: the
// `lost` counters become kmon_events_lost_total{reason="map_full"} here.
#pragma once

#include <atomic>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "collectors/collector.h"

struct bpf_map;
struct bpf_object_skeleton;

namespace kmon {

/// A data or control map's key and value sizes as the shared header says
/// (bpf/X.h); Start refuses an object whose maps differ.
struct MapLayout {
  const char* map;
  size_t key_size;
  size_t value_size;
};

class BpfCollector : public Collector {
 public:
  const bpf_object* BpfObject() const final;

 protected:
  /// `skel` is the collector's typed skeleton pointer (set while loaded, null
  /// otherwise); `create` its generated X_bpf__create_skeleton.
  template <typename Skel>
  BpfCollector(std::string name, const CollectorDeps& deps, Skel** skel, int (*create)(Skel*),
               std::vector<MapLayout> layouts)
      : Collector(std::move(name), deps), layouts_(std::move(layouts)) {
    create_ = [this, skel, create]() -> bpf_object_skeleton* {
      auto* s = static_cast<Skel*>(std::calloc(1, sizeof(Skel)));
      if (s == nullptr) return nullptr;
      if (create(s) != 0) {
        std::free(s);
        return nullptr;
      }
      *skel = s;
      skel_struct_ = s;
      return s->skeleton;
    };
    forget_ = [skel]() { *skel = nullptr; };
  }
  /// Subclasses with threads or readers must call Stop() in their destructor.
  ~BpfCollector() override;

  /// After open, before load: feature probes, bpf_program__set_autoload of twins.
  virtual absl::Status BeforeLoad(const CollectorConfig& config) { return absl::OkStatus(); }
  /// After attach: data sources, threads, HTTP routes. Called with mu_ held.
  virtual absl::Status AfterAttach(const CollectorConfig& config) { return absl::OkStatus(); }
  /// Before the object goes, without mu_: stop threads, withdraw readers and sources.
  virtual void BeforeDestroy() {}
  /// The collector's own loss counters beside map_full.
  virtual void AddOwnEventsLost(std::map<std::string, uint64_t>* lost) const {}

  /// What the attach step hooks, for its error message ("tp_btf/sys_exit").
  std::string AttachPoints() const;
  int MapFd(const char* name) const;

 private:
  absl::Status DoStart(const CollectorConfig& config) final;
  void DoStop() final;
  bool Running() const final { return running_; }
  void AddEventsLost(std::map<std::string, uint64_t>* lost) const final;

  std::vector<MapLayout> layouts_;
  /// Destroys the object and frees the skeleton's struct (calloc'd by create_).
  void DestroySkeleton();

  std::function<bpf_object_skeleton*()> create_;
  std::function<void()> forget_;  // nulls the subclass's typed pointer
  bpf_object_skeleton* skeleton_ = nullptr;
  void* skel_struct_ = nullptr;
  std::atomic<bool> running_{false};
};

}  // namespace kmon
