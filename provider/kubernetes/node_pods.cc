#include "provider/kubernetes/node_pods.h"

#include <utility>
#include <vector>

#include "base/log.h"
#include "provider/kubernetes/pod.h"

namespace kmon {
namespace {

using nlohmann::json;

bool SameMeta(const PodMeta& a, const PodMeta& b) {
  return a.namespace_ == b.namespace_ && a.name == b.name && a.workload == b.workload &&
         a.labels == b.labels && a.containers == b.containers;
}

// metadata.<key> of an object DecodePod rejected, to say which pod it was.
std::string RawMetadata(const json& pod, const char* key) {
  if (!pod.is_object()) return "";
  auto metadata = pod.find("metadata");
  if (metadata == pod.end() || !metadata->is_object()) return "";
  auto value = metadata->find(key);
  if (value == metadata->end() || !value->is_string()) return "";
  return value->get<std::string>();
}

}  // namespace

NodePods::NodePods(std::chrono::steady_clock::duration keep_deleted, Clock clock)
    : keep_deleted_(keep_deleted),
      clock_(clock ? std::move(clock) : [] { return std::chrono::steady_clock::now(); }) {}

template <typename F>
auto NodePods::Read(F read) const {
  std::chrono::steady_clock::time_point now = clock_();
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    if (!DueLocked(now)) return read();
  }
  std::unique_lock<std::shared_mutex> lock(mu_);
  SweepLocked(now);
  return read();
}

bool NodePods::DueLocked(std::chrono::steady_clock::time_point now) const {
  return next_deadline_ && *next_deadline_ <= now;
}

bool NodePods::SweepLocked(std::chrono::steady_clock::time_point now) const {
  if (!DueLocked(now)) return false;
  next_deadline_.reset();
  bool forgot = false;
  for (auto it = pods_.begin(); it != pods_.end();) {
    if (!it->second.gone_at) {
      ++it;
      continue;
    }
    std::chrono::steady_clock::time_point deadline = *it->second.gone_at + keep_deleted_;
    if (deadline <= now) {
      it = pods_.erase(it);
      forgot = true;
      continue;
    }
    if (!next_deadline_ || deadline < *next_deadline_) next_deadline_ = deadline;
    ++it;
  }
  if (forgot) ++generation_;
  return forgot;
}

bool NodePods::UpsertLocked(const std::string& uid, PodMeta meta) {
  auto [it, inserted] = pods_.try_emplace(uid);
  Entry& entry = it->second;
  if (listing_) entry.list_epoch = list_epoch_;
  // A gone pod seen again is live again (a static pod's mirror re-created keeps its UID).
  bool changed = inserted || entry.gone_at.has_value() || !SameMeta(entry.meta, meta);
  if (inserted || entry.gone_at) ++live_;
  entry.gone_at.reset();
  entry.meta = std::move(meta);
  if (changed) ++generation_;
  return changed;
}

bool NodePods::MarkGoneLocked(const std::string& uid, std::optional<PodMeta> meta,
                              std::chrono::steady_clock::time_point now) {
  auto it = pods_.find(uid);
  if (it == pods_.end()) {
    // Deleted before we saw it live (it came and went between two lists): its cgroups may
    // still be reported, so its names are kept as for any gone pod.
    if (!meta) return false;
    it = pods_.try_emplace(uid).first;
    it->second.meta = std::move(*meta);
  } else {
    if (it->second.gone_at) return false;
    --live_;
    if (meta) it->second.meta = std::move(*meta);
  }
  it->second.gone_at = now;
  std::chrono::steady_clock::time_point deadline = now + keep_deleted_;
  if (!next_deadline_ || deadline < *next_deadline_) next_deadline_ = deadline;
  ++generation_;
  // With keep_deleted 0 the pod is forgotten at once.
  SweepLocked(now);
  return true;
}

std::optional<PodMeta> NodePods::PodByUid(const std::string& uid) const {
  return Read([&]() -> std::optional<PodMeta> {
    auto it = pods_.find(uid);
    if (it == pods_.end()) return std::nullopt;
    return it->second.meta;
  });
}

void NodePods::BeginList() {
  std::chrono::steady_clock::time_point now = clock_();
  std::function<void()> notify;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    // A list broken off is followed by a new BeginList: restarting the epoch forgets what
    // the broken one saw, and it dropped nothing.
    ++list_epoch_;
    listing_ = true;
    if (SweepLocked(now)) notify = on_change_;
  }
  if (notify) notify();
}

void NodePods::EndList() {
  std::chrono::steady_clock::time_point now = clock_();
  std::function<void()> notify;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    bool changed = SweepLocked(now);
    if (listing_) {
      listing_ = false;
      std::vector<std::string> vanished;
      for (const auto& [uid, entry] : pods_) {
        if (!entry.gone_at && entry.list_epoch != list_epoch_) vanished.push_back(uid);
      }
      for (const std::string& uid : vanished) changed |= MarkGoneLocked(uid, std::nullopt, now);
    }
    if (changed) notify = on_change_;
  }
  if (notify) notify();
}

void NodePods::Apply(WatchEventType type, const nlohmann::json& object) {
  std::chrono::steady_clock::time_point now = clock_();
  absl::StatusOr<KubePod> pod = DecodePod(object);
  std::string uid = pod.ok() ? pod->uid : PodUidOf(object);
  bool log_error = false;
  std::function<void()> notify;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    bool changed = SweepLocked(now);
    if (!pod.ok()) {
      ++decode_errors_;
      log_error = logged_errors_.insert(uid).second;
      auto it = pods_.find(uid);
      if (it != pods_.end()) {
        // What is known of the pod stays: a list must not drop it, a DELETED still ends it.
        if (listing_) it->second.list_epoch = list_epoch_;
        if (type == WatchEventType::kDeleted) changed |= MarkGoneLocked(uid, std::nullopt, now);
      }
      if (type == WatchEventType::kDeleted) logged_errors_.erase(uid);
    } else {
      logged_errors_.erase(uid);
      if (type == WatchEventType::kDeleted) {
        changed |= MarkGoneLocked(uid, ToPodMeta(*pod), now);
      } else {
        changed |= UpsertLocked(uid, ToPodMeta(*pod));
      }
    }
    if (changed) notify = on_change_;
  }
  if (log_error) {
    LogWarn("kubernetes: pod object not understood; its cgroups keep the names they had",
            {{"uid", uid},
             {"namespace", RawMetadata(object, "namespace")},
             {"pod", RawMetadata(object, "name")},
             {"err", std::string(pod.status().message())}});
  }
  if (notify) notify();
}

uint64_t NodePods::Generation() const {
  return Read([&] { return generation_; });
}

size_t NodePods::Size() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return live_;
}

uint64_t NodePods::DecodeErrors() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return decode_errors_;
}

void NodePods::SetOnChange(std::function<void()> on_change) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  on_change_ = std::move(on_change);
}

void NodePods::Sweep() {
  std::chrono::steady_clock::time_point now = clock_();
  std::function<void()> notify;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (SweepLocked(now)) notify = on_change_;
  }
  if (notify) notify();
}

std::map<std::string, PodMeta> NodePods::LivePods() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::map<std::string, PodMeta> live;
  for (const auto& [uid, entry] : pods_) {
    if (!entry.gone_at) live.emplace(uid, entry.meta);
  }
  return live;
}

}  // namespace kmon
