// Deciding when a key in a BPF map belongs to something that is gone (a cgroup, a
// device): not at the first miss, since a cgroup made after the resolver's last
// rescan is unknown for a moment too, but once it has been missing for a while.
#pragma once

#include <chrono>
#include <unordered_map>

namespace kmon {

/// One pass over a map: Begin(), then Gone(key) for each key found missing, then
/// End(). A key missing in every pass for `after` is gone; a key not reported in
/// a pass is found again and forgotten.
template <typename K>
class MissingSince {
 public:
  using Clock = std::chrono::steady_clock;
  explicit MissingSince(Clock::duration after = std::chrono::seconds(5)) : after_(after) {}

  void Begin(Clock::time_point now = Clock::now()) {
    now_ = now;
    next_.clear();
  }
  /// `key` is missing in this pass: true once it has been missing for `after`.
  bool Gone(const K& key) {
    auto it = since_.find(key);
    auto since = it == since_.end() ? now_ : it->second;
    next_[key] = since;
    return now_ - since >= after_;
  }
  void End() { since_.swap(next_); }
  /// Forgets a key whose data was deleted.
  void Forget(const K& key) { since_.erase(key); }

 private:
  Clock::duration after_;
  Clock::time_point now_{};
  std::unordered_map<K, Clock::time_point> since_, next_;
};

}  // namespace kmon
