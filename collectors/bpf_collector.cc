#include "collectors/bpf_collector.h"

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <bpf/libbpf.h>

#include <cerrno>

#include "bpf/kmon_common.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"
#include "collectors/watched_cgroups.h"

namespace kmon {

BpfCollector::~BpfCollector() {
  // The subclass (its hooks, its typed pointer) is gone by now; what is left is
  // the object itself.
  DestroySkeleton();
}

void BpfCollector::DestroySkeleton() {
  if (skeleton_ != nullptr) bpf_object__destroy_skeleton(skeleton_);
  skeleton_ = nullptr;
  std::free(skel_struct_);
  skel_struct_ = nullptr;
}

const bpf_object* BpfCollector::BpfObject() const {
  return skeleton_ != nullptr && running_ ? *skeleton_->obj : nullptr;
}

int BpfCollector::MapFd(const char* name) const {
  if (skeleton_ == nullptr || *skeleton_->obj == nullptr) return -1;
  const bpf_map* m = bpf_object__find_map_by_name(*skeleton_->obj, name);
  return m == nullptr ? -1 : bpf_map__fd(m);
}

std::string BpfCollector::AttachPoints() const {
  std::vector<std::string> points;
  if (skeleton_ == nullptr || *skeleton_->obj == nullptr) return "";
  bpf_program* prog;
  bpf_object__for_each_program(prog, *skeleton_->obj) {
    if (bpf_program__autoload(prog) && bpf_program__autoattach(prog)) {
      points.push_back(bpf_program__section_name(prog));
    }
  }
  return absl::StrJoin(points, ", ");
}

absl::Status BpfCollector::DoStart(const CollectorConfig& config) {
  if (skeleton_ != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("collector=", name(), ": already started"));
  }
  skeleton_ = create_();
  if (skeleton_ == nullptr) return BpfError(name(), "open", ENOMEM);
  int err = bpf_object__open_skeleton(skeleton_, nullptr);
  if (err) return BpfError(name(), "open", err);
  for (const MapLayout& l : layouts_) {
    const bpf_map* m = bpf_object__find_map_by_name(*skeleton_->obj, l.map);
    if (m == nullptr) {
      return absl::InternalError(
          absl::StrCat("collector=", name(), " map=", l.map, ": not in the BPF object"));
    }
    absl::Status st = CheckMapLayout(name(), m, l.key_size, l.value_size);
    if (!st.ok()) return st;
  }
  // limits.bpf_map_entries, checked against the collector table's list when parsed.
  for (const auto& [map_name, entries] : config.limits.MapEntriesOf(name())) {
    bpf_map* m = bpf_object__find_map_by_name(*skeleton_->obj, map_name.c_str());
    if (m == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("collector=", name(), " map=", map_name,
                                                     ": limits.bpf_map_entries names a map "
                                                     "not in the BPF object"));
    }
    err = bpf_map__set_max_entries(m, entries);
    if (err) return BpfError(name(), absl::StrCat("map=", map_name, ": set_max_entries"), err);
  }
  absl::Status st = BeforeLoad(config);
  if (!st.ok()) return st;
  if (deps().watched != nullptr) {
    st = deps().watched->ShareWith(*skeleton_->obj);
    if (!st.ok()) return st;
  }
  // The load parses the vmlinux BTF itself (5.5 MB on 6.18, read and then copied):
  // the probes' parsed copy goes first, so that three never coexist. That was the
  // exporter's peak RSS (29 MiB, twice what it runs at); the next collector that
  // probes parses it again, some 20 ms.
  Features().Release();
  err = Features().LoadSkeleton(skeleton_);
  if (err) return LoadError(name(), err);
  st = Configure(config);
  if (!st.ok()) return st;
  err = bpf_object__attach_skeleton(skeleton_);
  if (err) return BpfError(name(), absl::StrCat("attach ", AttachPoints()), err);
  st = AfterAttach(config);
  if (!st.ok()) return st;
  running_ = true;
  return absl::OkStatus();
}

void BpfCollector::DoStop() {
  BeforeDestroy();
  std::lock_guard<std::mutex> lock(mu_);
  running_ = false;
  if (skeleton_ == nullptr) return;
  DestroySkeleton();
  forget_();
}

void BpfCollector::AddEventsLost(std::map<std::string, uint64_t>* lost) const {
  (*lost)["map_full"] = 0;
  const int fd = MapFd("lost");
  if (running_ && fd >= 0) {
    auto sums = ReadPerCpuU64Array(fd, KMON_LOST_MAX);
    if (sums.ok()) (*lost)["map_full"] = (*sums)[KMON_LOST_MAP_FULL];
  }
  AddOwnEventsLost(lost);
}

}  // namespace kmon
