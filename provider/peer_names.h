// The seam by which the topology names a TCP client that is not on this node: its
// address looked up in the cluster-wide pod-IP index (the Kubernetes provider's),
// or in nothing at all when kmon runs without Kubernetes.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace kmon {

/// A 16-byte address: IPv6, or IPv4 as v4-mapped (::ffff:a.b.c.d).
using PeerAddress = std::array<uint8_t, 16>;

/// What the index knows of the pod that has an address.
struct PeerName {
  std::string namespace_;
  std::string pod;
  std::string workload;  // the pod's top owner (SPEC), else the pod's name
  bool operator==(const PeerName&) const = default;
};

class PeerNames {
 public:
  virtual ~PeerNames() = default;
  /// The pod that has `addr`, if one does (host-network pods are never indexed).
  virtual std::optional<PeerName> Find(const PeerAddress& addr) const = 0;
  /// Calls `fn` for every indexed address (under the index's lock: keep it short).
  virtual void ForEachAddress(const std::function<void(const PeerAddress&)>& fn) const = 0;
  /// Changes whenever the set of addresses or their names may have changed.
  virtual uint64_t Generation() const = 0;
};

}  // namespace kmon
