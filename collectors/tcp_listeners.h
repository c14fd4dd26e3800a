// Listening TCP sockets in every network namespace on the host, for Kmon's rule that
// a connection whose local port is a listening port is the server side. Read at
// start from /proc/<pid>/net/tcp{,6} of one process per namespace; BPF keeps the
// count current from then on.
#pragma once

#include <compare>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace kmon {

/// One listening socket: its network namespace (the inode of /proc/<pid>/ns/net), its
/// port and its socket inode (what BPF reads as sk_ino).
struct Listener {
  uint32_t netns = 0;
  uint16_t port = 0;
  uint64_t ino = 0;
  auto operator<=>(const Listener&) const = default;
};

/// The sockets in LISTEN state (st 0A) in the text of /proc/net/tcp or tcp6, netns 0.
std::vector<Listener> ParseProcNetTcpListeners(std::string_view text);

/// Every listening socket on the host.
std::set<Listener> ScanListeners(const std::string& proc = "/proc");

}  // namespace kmon
