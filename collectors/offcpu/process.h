// A process as off-CPU stacks name it, and what /proc says of it: whether its PID
// is still that process (its start time), and its executable mappings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kmon {

/// A process as the kernel's off-CPU aggregates name it: its PID and its start time,
/// so a process that reuses the PID of an exited one is a different process.
struct ProcessId {
  uint32_t tgid = 0;
  uint64_t start_ns = 0;  // the leader's task->start_boottime: ns since boot
  bool operator==(const ProcessId&) const = default;
};
struct ProcessIdHash {
  size_t operator()(const ProcessId& p) const {
    return std::hash<uint64_t>()(p.start_ns * 0x9e3779b97f4a7c15ULL ^ p.tgid);
  }
};

/// start_boottime in /proc's clock ticks (USER_HZ), as /proc/PID/stat field 22 shows
/// it (the kernel's nsec_to_clock_t, rounding down).
uint64_t BootNsToTicks(uint64_t ns);
/// Field 22 (starttime) of `proc`/`tgid`/stat, or nullopt when there is no such process.
std::optional<uint64_t> ReadProcessStartTicks(const std::string& proc, uint32_t tgid);

/// One executable mapping of a process, as /proc/PID/maps lists it.
struct MapEntry {
  uint64_t start = 0, end = 0, offset = 0, inode = 0;
  std::string dev;   // "fe:00"
  std::string path;  // file path, "[vdso]", or "" for anonymous memory
};

/// The executable mappings ('x' in perms) of /proc/PID/maps text, in file order.
std::vector<MapEntry> ParseProcMaps(std::string_view text);

}  // namespace kmon
