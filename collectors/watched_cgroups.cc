#include "collectors/watched_cgroups.h"

#include <absl/strings/str_cat.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "bpf/kmon_common.h"

namespace kmon {

bool TargetSelects(const TargetsConfig& targets, const CgroupIdentity& id, const PodMeta* meta) {
  if (!id.IsPod()) return targets.host_processes;
  // A pod's namespace and labels are only known from Kubernetes metadata; a pod
  // without it cannot match an include filter, but is not excluded either.
  auto contains = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  if (meta == nullptr) return targets.namespaces.empty() && targets.pod_selector.empty();
  if (contains(targets.exclude_namespaces, meta->namespace_)) return false;
  if (!targets.namespaces.empty() && !contains(targets.namespaces, meta->namespace_)) return false;
  for (const auto& [k, v] : targets.pod_selector) {
    auto it = meta->labels.find(k);
    if (it == meta->labels.end() || it->second != v) return false;
  }
  return true;
}

WatchedCgroups::~WatchedCgroups() {
  if (filter_fd_ >= 0) close(filter_fd_);
  if (set_fd_ >= 0) close(set_fd_);
}

const std::vector<BpfMapSize>& SharedMapSizes() {
  static const std::vector<BpfMapSize> maps = {{"watched_cgroups", KMON_MAX_WATCHED_CGROUPS}};
  return maps;
}

absl::Status WatchedCgroups::CreateLocked() {
  if (filter_fd_ >= 0) return absl::OkStatus();
  filter_fd_ = bpf_map_create(BPF_MAP_TYPE_ARRAY, "filter_config", sizeof(uint32_t),
                              sizeof(kmon_filter_config), 1, nullptr);
  if (filter_fd_ < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("map=filter_config: creating: ", std::strerror(errno)));
  }
  // Not preallocated: the kernel holds what the set holds, and it is written only
  // when targets or cgroups change.
  LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = BPF_F_NO_PREALLOC);
  set_fd_ = bpf_map_create(BPF_MAP_TYPE_HASH, "watched_cgroups", sizeof(uint64_t), sizeof(uint8_t),
                           capacity_, &opts);
  if (set_fd_ < 0) {
    absl::Status st = absl::ResourceExhaustedError(
        absl::StrCat("map=watched_cgroups: creating: ", std::strerror(errno)));
    close(filter_fd_);
    filter_fd_ = -1;
    return st;
  }
  return WriteLocked({}, false);
}

absl::Status WatchedCgroups::ShareWith(bpf_object* obj) {
  std::lock_guard<std::mutex> lock(mu_);
  bpf_map* filter = bpf_object__find_map_by_name(obj, "filter_config");
  bpf_map* set = bpf_object__find_map_by_name(obj, "watched_cgroups");
  if (filter == nullptr || set == nullptr) return absl::OkStatus();  // filters nothing
  absl::Status st = CreateLocked();
  if (!st.ok()) return st;
  for (auto [map, fd] : {std::pair{filter, filter_fd_}, std::pair{set, set_fd_}}) {
    int err = bpf_map__reuse_fd(map, fd);
    if (err != 0) {
      return absl::InternalError(
          absl::StrCat("map=", bpf_map__name(map), ": sharing: ", std::strerror(-err)));
    }
  }
  return absl::OkStatus();
}

int WatchedCgroups::FilterFd() const {
  std::lock_guard<std::mutex> lock(mu_);
  return filter_fd_;
}

int WatchedCgroups::SetFd() const {
  std::lock_guard<std::mutex> lock(mu_);
  return set_fd_;
}

absl::Status WatchedCgroups::Update(const TargetsConfig& targets) {
  std::set<uint64_t> next;
  // Exclusion by namespace only bites with pod metadata; without any, the map is
  // left unused and BPF keeps its fast path of counting everything.
  bool filtering = targets.Filters() || (pods_ != nullptr && !targets.exclude_namespaces.empty());
  if (filtering) {
    for (const auto& [cgid, identity] : workloads_->Refresh()) {
      std::optional<PodMeta> meta;
      if (identity.IsPod() && pods_ != nullptr) meta = pods_->PodByUid(identity.pod_uid);
      if (TargetSelects(targets, identity, meta ? &*meta : nullptr)) next.insert(cgid);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::set<uint64_t> old = std::move(current_);
  const bool old_filtering = filtering_;
  filtering_ = filtering;
  current_ = std::move(next);
  if (filter_fd_ < 0) return absl::OkStatus();  // no object yet: written at creation
  return WriteLocked(old, old_filtering);
}

absl::Status WatchedCgroups::WriteLocked(const std::set<uint64_t>& old_set, bool old_filtering) {
  // New members go in before the filter switches on, and the filter switches off
  // before members go, so a reconfiguration never drops events of a kept cgroup.
  uint32_t zero = 0;
  kmon_filter_config cfg{};
  cfg.filter_cgroups = filtering_ ? 1 : 0;
  auto write_filter = [&]() -> absl::Status {
    if (bpf_map_update_elem(filter_fd_, &zero, &cfg, BPF_ANY) != 0) {
      return absl::InternalError(absl::StrCat("map=filter_config: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  };
  uint8_t one = 1;
  for (uint64_t id : current_) {
    if (old_set.count(id)) continue;
    if (bpf_map_update_elem(set_fd_, &id, &one, BPF_ANY) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("map=watched_cgroups: adding cgroup ", id, ": ", std::strerror(errno)));
    }
  }
  if (old_filtering && !filtering_) {
    absl::Status st = write_filter();
    if (!st.ok()) return st;
  }
  for (uint64_t id : old_set) {
    if (!current_.count(id)) bpf_map_delete_elem(set_fd_, &id);
  }
  return old_filtering && !filtering_ ? absl::OkStatus() : write_filter();
}

size_t WatchedCgroups::WatchedCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_.size();
}

bool WatchedCgroups::Filtering() const {
  std::lock_guard<std::mutex> lock(mu_);
  return filtering_;
}

}  // namespace kmon
