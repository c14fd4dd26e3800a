// Least privilege for the running exporter: what it needs at start (load BPF, turn
// on the kernel's per-program stats), and the smaller set it keeps once serving.
#pragma once

#include <absl/status/statusor.h>

#include <string>
#include <vector>

namespace kmon {

/// A capability kept after start, and the reason (listed in the README too).
struct KeptCapability {
  int cap;           // CAP_*
  const char* name;  // "CAP_BPF"
  const char* why;
};
const std::vector<KeptCapability>& KeptCapabilities();

/// Drops every capability that is not in KeptCapabilities from the effective,
/// permitted, inheritable and ambient sets — and the bounding set when the process
/// holds CAP_SETPCAP (plain root; a container's reduced set does not) — and sets
/// no_new_privs: nothing kmon runs or becomes later can regain them. A kept
/// capability the process did not have stays absent. Returns the names held after.
absl::StatusOr<std::vector<std::string>> DropUnneededCapabilities();

/// Whether the kernel keeps per-program run counts and time
/// (/proc/sys/kernel/bpf_stats_enabled, or a BPF_ENABLE_STATS fd someone holds).
bool BpfStatsEnabled();

/// A hint for a BPF load that was refused: what to grant, or "" when `err` is not a
/// permission error.
std::string PermissionHint(int err);

}  // namespace kmon
