#include "collectors/peer_addrs.h"

#include <absl/strings/str_cat.h>
#include <bpf/bpf.h>

#include <cerrno>
#include <cstring>

namespace kmon {

absl::Status PeerAddressMap::Sync(const PeerNames& peers) {
  const uint64_t gen = peers.Generation();
  if (synced_ && gen == generation_) return absl::OkStatus();
  std::set<PeerAddress> want;
  peers.ForEachAddress([&want](const PeerAddress& a) { want.insert(a); });
  for (auto it = written_.begin(); it != written_.end();) {
    if (want.count(*it)) {
      ++it;
      continue;
    }
    // ENOENT: already gone (never the case unless someone else writes the map).
    if (bpf_map_delete_elem(fd_, it->data()) != 0 && errno != ENOENT) {
      return absl::InternalError(absl::StrCat("map=peer_addrs: delete: ", std::strerror(errno)));
    }
    it = written_.erase(it);
  }
  const uint8_t one = 1;
  size_t full = 0;
  for (const PeerAddress& a : want) {
    if (written_.count(a)) continue;
    if (bpf_map_update_elem(fd_, a.data(), &one, BPF_ANY) != 0) {
      if (errno == E2BIG || errno == ENOMEM) {
        ++full;
        continue;
      }
      return absl::InternalError(absl::StrCat("map=peer_addrs: update: ", std::strerror(errno)));
    }
    written_.insert(a);
  }
  synced_ = true;
  generation_ = gen;
  if (full > 0) {
    // Retried at the next change: the generation is taken, but what did not fit is
    // not in written_, so it is tried again then.
    return absl::ResourceExhaustedError(
        absl::StrCat("map=peer_addrs: full; ", full, " pod addresses not watched"));
  }
  return absl::OkStatus();
}

}  // namespace kmon
