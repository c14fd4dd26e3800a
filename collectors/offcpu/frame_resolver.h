// What the off-CPU profiler asks to name a stack's frames and to tell whether a
// process still runs: a seam, so tests need no /proc.
#pragma once

#include <cstdint>
#include <string>

#include "collectors/offcpu/process.h"

namespace kmon {

/// Shown for a frame nothing is known about.
inline constexpr char kUnknownFrame[] = "[unknown]";

/// Seam for naming frames and for process liveness: /proc and ELF files in production.
/// A process is its PID and start time, so a reused PID is another process.
class FrameResolver {
 public:
  virtual ~FrameResolver() = default;
  /// Called when a process's first stacks are seen: remember its memory maps.
  virtual void Capture(const ProcessId& p) = 0;
  virtual bool Alive(const ProcessId& p) = 0;
  /// The process's stacks are all named and it has exited: its maps can go.
  virtual void Forget(const ProcessId& p) = 0;
  virtual std::string Kernel(uint64_t ip) = 0;
  virtual std::string User(const ProcessId& p, uint64_t ip, bool leaf) = 0;
  /// A round of naming is over: caches may shrink back to their caps.
  virtual void Trim() {}
};

}  // namespace kmon
