#include "provider/kubernetes/pod_ip_index.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "base/log.h"

namespace kmon {
namespace {

// The block glibc's malloc takes for an n-byte request on 64-bit: n plus the 8-byte chunk
// header, rounded up to 16, at least 32.
size_t MallocBlock(size_t n) {
  if (n == 0) return 0;
  return std::max<size_t>(32, (n + 8 + 15) & ~size_t{15});
}

// A string's heap block; none while it fits the in-object (small-string) buffer.
size_t StringHeap(const std::string& s) {
  const char* self = reinterpret_cast<const char*>(&s);
  bool inside = s.data() >= self && s.data() < self + sizeof(s);
  return inside ? 0 : MallocBlock(s.capacity() + 1);
}

// Whether the hash table's nodes store the key's hash next to the value. libstdc++ does so
// unless the hash is cheap (its __is_fast_hash) and noexcept; std::hash<std::string> is not
// cheap. Elsewhere, assume it does (the larger figure).
template <typename Key, typename Hash>
constexpr bool kHashCached =
#if defined(__GLIBCXX__)
    std::__cache_default<Key, Hash>::value;
#else
    true;
#endif

// The nodes (link, value, cached hash) and the bucket array of a std::unordered_map; a
// table of one bucket keeps it inside the map object.
template <typename Map>
size_t TableHeap(const Map& map) {
  size_t node = sizeof(void*) + sizeof(typename Map::value_type) +
                (kHashCached<typename Map::key_type, typename Map::hasher> ? sizeof(size_t) : 0);
  node = (node + alignof(std::max_align_t) - 1) & ~(alignof(std::max_align_t) - 1);
  size_t buckets = map.bucket_count() > 1 ? MallocBlock(map.bucket_count() * sizeof(void*)) : 0;
  return map.size() * MallocBlock(node) + buckets;
}

bool Finished(const KubePod& pod) { return pod.phase == "Succeeded" || pod.phase == "Failed"; }

}  // namespace

size_t PodIpIndex::IpHash::operator()(const IpAddress& a) const noexcept {
  uint64_t hi, lo;
  std::memcpy(&hi, a.data(), sizeof hi);
  std::memcpy(&lo, a.data() + sizeof hi, sizeof lo);
  // The low half is all that varies within one cluster's pod CIDR; mix both halves through
  // a 64-bit finalizer (MurmurHash3's) so every bit reaches the bucket index.
  uint64_t h = hi * 0x9e3779b97f4a7c15ULL ^ lo;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return static_cast<size_t>(h);
}

const std::string* PodIpIndex::Intern(const std::string& s) {
  auto it = strings_.try_emplace(s, 0).first;
  ++it->second;
  return &it->first;
}

void PodIpIndex::Release(const std::string* s) {
  auto it = strings_.find(*s);
  if (it != strings_.end() && --it->second == 0) strings_.erase(it);
}

bool PodIpIndex::ClaimLocked(const IpAddress& addr, Record* record) {
  auto [it, inserted] = by_ip_.try_emplace(addr, record);
  if (inserted) return true;
  if (it->second == record) return false;
  if (record->creation_seconds < it->second->creation_seconds) return false;
  it->second = record;
  return true;
}

bool PodIpIndex::UnclaimLocked(const IpAddress& addr, const Record* record) {
  auto it = by_ip_.find(addr);
  if (it == by_ip_.end() || it->second != record) return false;
  by_ip_.erase(it);
  return true;
}

bool PodIpIndex::RemoveLocked(const std::string& uid) {
  auto it = pods_.find(uid);
  if (it == pods_.end()) return false;
  Record& record = it->second;
  bool changed = false;
  for (uint8_t i = 0; i < record.ip_count; ++i) changed |= UnclaimLocked(record.ips[i], &record);
  Release(record.namespace_);
  Release(record.workload);
  pods_.erase(it);
  if (changed) ++generation_;
  return changed;
}

bool PodIpIndex::IndexLocked(const KubePod& pod) {
  if (pod.host_network || Finished(pod) || pod.ips.empty()) return RemoveLocked(pod.uid);
  Record& record = pods_.try_emplace(pod.uid).first->second;
  if (listing_) record.list_epoch = list_epoch_;
  // What the pod's IPs answer changes only through IPs it holds.
  bool renamed = false;
  if (record.name != pod.name) {
    record.name = pod.name;
    record.name.shrink_to_fit();  // assignment may leave room to grow, never used here
    renamed = true;
  }
  if (record.namespace_ == nullptr || *record.namespace_ != pod.namespace_) {
    if (record.namespace_ != nullptr) Release(record.namespace_);
    record.namespace_ = Intern(pod.namespace_);
    renamed = true;
  }
  if (record.workload == nullptr || *record.workload != pod.workload_name) {
    if (record.workload != nullptr) Release(record.workload);
    record.workload = Intern(pod.workload_name);
    renamed = true;
  }
  record.creation_seconds = pod.creation_seconds;

  std::array<IpAddress, kMaxIps> next = {};
  uint8_t next_count = static_cast<uint8_t>(std::min(pod.ips.size(), kMaxIps));
  std::copy_n(pod.ips.begin(), next_count, next.begin());
  auto next_end = next.begin() + next_count;
  bool changed = false;
  for (uint8_t i = 0; i < record.ip_count; ++i) {
    if (std::find(next.begin(), next_end, record.ips[i]) == next_end) {
      changed |= UnclaimLocked(record.ips[i], &record);
    }
  }
  record.ips = next;
  record.ip_count = next_count;
  for (uint8_t i = 0; i < next_count; ++i) {
    if (ClaimLocked(next[i], &record) || (renamed && by_ip_.at(next[i]) == &record)) {
      changed = true;
    }
  }
  if (changed) ++generation_;
  return changed;
}

void PodIpIndex::BeginList() {
  std::unique_lock<std::shared_mutex> lock(mu_);
  ++list_epoch_;
  listing_ = true;
}

void PodIpIndex::EndList() {
  bool changed = false;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (!listing_) return;
    listing_ = false;
    std::vector<std::string> vanished;
    for (const auto& [uid, record] : pods_) {
      if (record.list_epoch != list_epoch_) vanished.push_back(uid);
    }
    for (const std::string& uid : vanished) changed |= RemoveLocked(uid);
  }
  if (changed && on_change_) on_change_();
}

void PodIpIndex::Apply(WatchEventType type, const nlohmann::json& object) {
  absl::StatusOr<KubePod> pod = DecodePod(object);
  std::string bad_uid;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (pod.ok()) {
      const bool changed =
          type == WatchEventType::kDeleted ? RemoveLocked(pod->uid) : IndexLocked(*pod);
      lock.unlock();
      if (changed && on_change_) on_change_();
      return;
    }
    ++decode_errors_;
    bad_uid = PodUidOf(object);
    auto it = pods_.find(bad_uid);
    if (it != pods_.end()) {
      // What is indexed of the pod stays: a list must not drop it, a DELETED still ends it.
      if (listing_) it->second.list_epoch = list_epoch_;
      if (type == WatchEventType::kDeleted) RemoveLocked(bad_uid);
    }
  }
  // Debug only: the pods of this node are warned about by NodePods; the cluster's other
  // nodes' pods could fill the log.
  LogDebug("kubernetes: pod object not understood by the pod-IP index",
           {{"uid", bad_uid}, {"err", std::string(pod.status().message())}});
}

void PodIpIndex::ForEachAddress(const std::function<void(const PeerAddress&)>& fn) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  for (const auto& [addr, record] : by_ip_) fn(addr);
}

std::optional<PodIpOwner> PodIpIndex::Find(const IpAddress& addr) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = by_ip_.find(addr);
  if (it == by_ip_.end()) return std::nullopt;
  const Record& record = *it->second;
  return PodIpOwner{*record.namespace_, record.name, *record.workload};
}

size_t PodIpIndex::Pods() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return pods_.size();
}

size_t PodIpIndex::MemoryBytes() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  size_t bytes = TableHeap(pods_) + TableHeap(by_ip_) + TableHeap(strings_);
  for (const auto& [uid, record] : pods_) bytes += StringHeap(uid) + StringHeap(record.name);
  for (const auto& [s, users] : strings_) bytes += StringHeap(s);
  return bytes;
}

uint64_t PodIpIndex::Generation() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return generation_;
}

uint64_t PodIpIndex::DecodeErrors() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return decode_errors_;
}

}  // namespace kmon
