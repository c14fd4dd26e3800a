// collectors.cpu.stacks and the one profiling window /debug/offcpu opens with
// `stacks: on_demand`: pure state, so tests drive it with their own clock.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace kmon {

/// collectors.cpu.stacks.
enum class OffCpuStacks {
  kOnDemand,  // captured only while a /debug/offcpu request profiles (the default)
  kAlways,    // captured all the time; /debug/offcpu looks back over the last seconds
  kOff,       // never captured; /debug/offcpu answers 503
};

inline const char* OffCpuStacksName(OffCpuStacks s) {
  switch (s) {
    case OffCpuStacks::kAlways:
      return "always";
    case OffCpuStacks::kOff:
      return "off";
    default:
      return "on_demand";
  }
}

inline std::optional<OffCpuStacks> ParseOffCpuStacks(std::string_view s) {
  if (s == "on_demand") return OffCpuStacks::kOnDemand;
  if (s == "always") return OffCpuStacks::kAlways;
  if (s == "off") return OffCpuStacks::kOff;
  return std::nullopt;
}

/// At most one window at a time: idle -> Begin -> open until End. A request that
/// finds a window open is refused (the service answers 429 with the time left)
/// rather than joined: a joined request would either wait for a window it did not
/// ask for or get a shorter one than it asked for.
class OnDemandWindow {
 public:
  using Clock = std::chrono::steady_clock;

  /// Opens a window of `length` from `now`. False while one is open; `*left` is then
  /// what remains of it (zero once its time is up but it is not ended yet).
  bool Begin(Clock::time_point now, Clock::duration length, Clock::duration* left) {
    if (open_) {
      *left = deadline_ > now ? deadline_ - now : Clock::duration::zero();
      return false;
    }
    open_ = true;
    started_ = now;
    deadline_ = now + length;
    ++windows_;
    return true;
  }
  bool open() const { return open_; }
  Clock::time_point started() const { return started_; }
  Clock::time_point deadline() const { return deadline_; }
  /// Whether an open window's time is up.
  bool Due(Clock::time_point now) const { return open_ && now >= deadline_; }
  /// Closes the window: its time is up, or it was cut short.
  void End() { open_ = false; }
  /// Windows opened so far.
  unsigned long windows() const { return windows_; }

 private:
  bool open_ = false;
  Clock::time_point started_{}, deadline_{};
  unsigned long windows_ = 0;
};

}  // namespace kmon
