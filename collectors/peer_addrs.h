// Keeps a BPF hash of peer addresses (16-byte key -> 1) equal to the addresses a
// PeerNames index holds, writing only the difference: a cluster's pods churn all
// the time, and rewriting 100k entries for each one that comes would be a storm of
// syscalls.
#pragma once

#include <absl/status/status.h>

#include <cstdint>
#include <set>

#include "provider/peer_names.h"

namespace kmon {

class PeerAddressMap {
 public:
  /// `map_fd` is the BPF map; it starts empty.
  explicit PeerAddressMap(int map_fd) : fd_(map_fd) {}

  /// Writes what changed since the last sync when `peers` moved on; a full map is
  /// an error naming how many did not fit (the rest are written).
  absl::Status Sync(const PeerNames& peers);
  size_t Size() const { return written_.size(); }

 private:
  int fd_;
  bool synced_ = false;
  uint64_t generation_ = 0;
  std::set<PeerAddress> written_;
};

}  // namespace kmon
