// Listening TCP ports in every network namespace on the host, for Kmon's rule that
// a connection whose local port is a listening port is the server side. Read once
// at start from /proc/<pid>/net/tcp{,6} of one process per namespace; BPF keeps the
// set current from then on.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kmon {

/// Local ports in LISTEN state (st 0A) in the text of /proc/net/tcp or tcp6.
std::vector<uint16_t> ParseProcNetTcpListeners(std::string_view text);

/// (network namespace inode, port) of every listener on the host.
std::set<std::pair<uint32_t, uint16_t>> ScanListeners(const std::string& proc = "/proc");

}  // namespace kmon
