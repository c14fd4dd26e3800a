#include "collectors/watched_cgroups.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <absl/strings/str_cat.h>
#include <bpf/bpf.h>

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

absl::Status WatchedCgroups::Register(int filter_config_fd, int watched_cgroups_fd) {
  std::lock_guard<std::mutex> lock(mu_);
  pairs_.emplace_back(filter_config_fd, watched_cgroups_fd);
  return WritePair(filter_config_fd, watched_cgroups_fd, {});
}

void WatchedCgroups::Unregister(int filter_config_fd) {
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(pairs_, [&](const auto& p) { return p.first == filter_config_fd; });
}

absl::Status WatchedCgroups::Update(const TargetsConfig& targets) {
  std::set<uint64_t> next;
  // Exclusion by namespace only bites with pod metadata; without any, the map is
  // left unused and BPF keeps its fast path of counting everything.
  bool filtering =
      targets.Filters() || (pods_ != nullptr && !targets.exclude_namespaces.empty());
  if (filtering) {
    for (const auto& [cgid, identity] : workloads_->Refresh()) {
      std::optional<PodMeta> meta;
      if (identity.IsPod() && pods_ != nullptr) meta = pods_->PodByUid(identity.pod_uid);
      if (TargetSelects(targets, identity, meta ? &*meta : nullptr)) next.insert(cgid);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::set<uint64_t> old = current_;
  filtering_ = filtering;
  current_ = std::move(next);
  absl::Status result = absl::OkStatus();
  for (const auto& [filter_fd, set_fd] : pairs_) {
    absl::Status st = WritePair(filter_fd, set_fd, old);
    if (!st.ok() && result.ok()) result = st;
  }
  return result;
}

absl::Status WatchedCgroups::WritePair(int filter_fd, int set_fd,
                                       const std::set<uint64_t>& old_set) {
  // Add new members before switching the filter on, and switch it off before
  // removing members, so a reconfiguration never drops events of a kept cgroup.
  uint8_t one = 1;
  for (uint64_t id : current_) {
    if (old_set.count(id)) continue;
    if (bpf_map_update_elem(set_fd, &id, &one, BPF_ANY) != 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("map=watched_cgroups: adding cgroup ", id, ": ", std::strerror(errno)));
    }
  }
  for (uint64_t id : old_set) {
    if (!current_.count(id)) bpf_map_delete_elem(set_fd, &id);
  }
  uint32_t zero = 0;
  kmon_filter_config cfg{};
  cfg.filter_cgroups = filtering_ ? 1 : 0;
  if (bpf_map_update_elem(filter_fd, &zero, &cfg, BPF_ANY) != 0) {
    return absl::InternalError(absl::StrCat("map=filter_config: ", std::strerror(errno)));
  }
  return absl::OkStatus();
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
