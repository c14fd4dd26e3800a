// The cluster-wide pod-IP index: names the peer of a TCP connection that is a pod on
// another node (SPEC: "a client on another node is named through the cluster-wide pod-IP
// index"). It sees every pod of the cluster, so it keeps only the three names a peer gets.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "provider/kubernetes/pod.h"
#include "provider/kubernetes/watch_sink.h"
#include "provider/peer_names.h"

namespace kmon {

/// Who holds a pod IP: namespace, pod and its top owner (KubePod::workload_name).
using PodIpOwner = PeerName;

/// Pod IP (IPv4 v4-mapped, or IPv6) -> owner. Thread-safe: the watcher thread writes,
/// collectors read.
///
/// Not indexed: host-network pods (their IP is their node's, shared by all of them) and pods
/// that have finished (phase Succeeded or Failed: the network plugin has freed their IP,
/// which a new pod may already hold, but their status still lists it).
///
/// Two pods claiming one IP (one gone, its deletion not seen yet): the newer one holds it,
/// by creationTimestamp, the later applied among equals. A pod removed releases only the
/// IPs it holds, never a newer pod's; an IP whose holder goes is unknown until a pod claims
/// it again, even if an older pod still lists it.
class PodIpIndex : public PodWatchSink, public PeerNames {
 public:
  PodIpIndex() = default;
  PodIpIndex(const PodIpIndex&) = delete;
  PodIpIndex& operator=(const PodIpIndex&) = delete;

  void BeginList() override;
  /// Removes every pod the list did not carry; does nothing without a BeginList before it.
  void EndList() override;
  /// kAdded/kModified index the pod (or remove it if it is no longer indexable); kDeleted
  /// removes it at once. A pod DecodePod rejects keeps what is indexed of it, is counted
  /// and logged at debug level.
  void Apply(WatchEventType type, const nlohmann::json& pod) override;

  /// The owner of an address; nullopt when no indexed pod holds it.
  std::optional<PodIpOwner> Find(const IpAddress& addr) const override;
  void ForEachAddress(const std::function<void(const PeerAddress&)>& fn) const override;
  /// Called from the writer's thread, outside the lock, after a change of what Find
  /// answers. Set it before the watch starts.
  /// Indexed pods.
  size_t Pods() const;
  /// Heap bytes the index holds, computed on each call (a walk over the pods): every
  /// allocation counted as the block glibc's malloc takes for it on 64-bit (the request plus
  /// 8 bytes of header, rounded up to 16, at least 32): hash-table nodes (link, value, cached
  /// hash) and bucket arrays, and strings too long for their in-object buffer. The objects
  /// themselves (sizeof(PodIpIndex)) are not counted.
  size_t MemoryBytes() const;
  void SetOnChange(std::function<void()> on_change) { on_change_ = std::move(on_change); }
  /// Bumps on every change of what Find answers.
  uint64_t Generation() const override;
  /// Pod objects DecodePod rejected, since start.
  uint64_t DecodeErrors() const;

 private:
  // A valid pod has at most one IP per family.
  static constexpr size_t kMaxIps = 2;

  struct Record {
    std::string name;
    // Interned in strings_ (namespaces and workloads are shared by many pods).
    const std::string* namespace_ = nullptr;
    const std::string* workload = nullptr;
    int64_t creation_seconds = 0;
    std::array<IpAddress, kMaxIps> ips = {};
    uint32_t list_epoch = 0;
    uint8_t ip_count = 0;
  };

  struct IpHash {
    size_t operator()(const IpAddress& a) const noexcept;
  };

  const std::string* Intern(const std::string& s);
  void Release(const std::string* s);
  // Updates or adds the pod; true when Find's answers changed. Needs mu_ exclusive.
  bool IndexLocked(const KubePod& pod);
  // Removes the pod's record and the IPs it holds; true when it had one.
  bool RemoveLocked(const std::string& uid);
  // Gives `addr` to `record` unless a newer pod holds it; true when the holder changed.
  bool ClaimLocked(const IpAddress& addr, Record* record);
  // Removes `addr` if `record` holds it; true when it did.
  bool UnclaimLocked(const IpAddress& addr, const Record* record);

  mutable std::shared_mutex mu_;
  // uid -> record; node-based, so the Record* in by_ip_ stay valid across rehashes.
  std::unordered_map<std::string, Record> pods_;
  std::unordered_map<IpAddress, Record*, IpHash> by_ip_;
  // Interned string -> number of records using it.
  std::unordered_map<std::string, uint32_t> strings_;
  uint64_t generation_ = 0;
  uint64_t decode_errors_ = 0;
  std::function<void()> on_change_;
  uint32_t list_epoch_ = 0;
  bool listing_ = false;
};

}  // namespace kmon
