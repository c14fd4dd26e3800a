// The running kernel's function names by address, from /proc/kallsyms: one table
// every collector shares (KernelSymbols::Shared), bounded, and re-read after misses.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kmon {

/// The kernel's text symbols, sorted by address, for binary search.
///
/// kallsyms gives no sizes, so a symbol's extent is taken to end where the next
/// symbol of its region starts (the core kernel's text up to _etext, its init text up
/// to _einittext, each module); the last symbol of a region ends at the region's end
/// where that is known (the markers above, a module's size in /proc/modules), and at
/// most kMaxLastSymbolSize past its start. An address beyond every extent (a module
/// or BPF program loaded after the table was read) is nullopt, not the name of
/// whatever symbol happens to come before it, and is counted in misses().
class KernelSymbols {
 public:
  static constexpr uint64_t kMaxLastSymbolSize = 16 * 1024;

  KernelSymbols() = default;
  KernelSymbols(KernelSymbols&& o) noexcept;
  KernelSymbols& operator=(KernelSymbols&&) = delete;

  /// Parses /proc/kallsyms text ("ffffffff81000000 T _stext [module]"); keeps text
  /// symbols. `modules` is /proc/modules text ("xfs 2445504 1 - Live 0xffffffffc0a00000"),
  /// which bounds each module's last symbol; it may be empty.
  static KernelSymbols Parse(std::string_view kallsyms, std::string_view modules = {});
  /// Reads and parses `path` (and `modules_path` when readable). An error when
  /// unreadable or when every address is zero (kernel.kptr_restrict hides them from
  /// this process).
  static absl::StatusOr<std::shared_ptr<const KernelSymbols>> Load(
      const std::string& path = "/proc/kallsyms",
      const std::string& modules_path = "/proc/modules");

  /// The one table of the running kernel that every collector shares (the table is
  /// about 4 MiB; loading it per collector doubled kmon's memory). Read on first use
  /// and again when lookups in it have missed, at most every kSharedReloadAfter (so
  /// modules loaded later get named); held weakly, so it is freed when no collector
  /// holds it. Callers should call Shared() again now and then rather than keep one
  /// pointer for ever, or they keep an old table alive beside the new one. Null when
  /// /proc/kallsyms is unusable; `why` then says why.
  static std::shared_ptr<const KernelSymbols> Shared(absl::Status* why = nullptr);
  static constexpr std::chrono::seconds kSharedReloadAfter{30};

  /// The function containing `addr`, or nullopt (then misses() grows).
  std::optional<std::string> Lookup(uint64_t addr) const;
  size_t size() const { return addrs_.size(); }
  /// Lookups that found no symbol: a hint that the table is out of date.
  uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }

 private:
  friend class KernelSymbolsBuilder;

  std::vector<uint64_t> addrs_;
  std::vector<uint32_t> name_offsets_;  // into names_, NUL-terminated
  std::string names_;
  // Where a symbol does not extend to the next one (the last of its region): its
  // index and end address, sorted by index. Few: one per region.
  std::vector<std::pair<uint32_t, uint64_t>> early_ends_;
  mutable std::atomic<uint64_t> misses_{0};
};

/// What KernelSymbols::Shared() is made of, with the loader and the clock passed in
/// so tests can drive it: keeps a table weakly and replaces it after misses.
class KernelSymbolsCache {
 public:
  using Loader = std::function<absl::StatusOr<std::shared_ptr<const KernelSymbols>>()>;
  KernelSymbolsCache(Loader loader, std::chrono::steady_clock::duration min_reload);
  /// The current table: loaded when none is held, reloaded when the held one has
  /// missed and the last load is at least `min_reload` old. A failed load is retried
  /// no more often than that either.
  std::shared_ptr<const KernelSymbols> Get(std::chrono::steady_clock::time_point now,
                                           absl::Status* why = nullptr);
  uint64_t loads() const { return loads_; }

 private:
  std::mutex mu_;
  Loader loader_;
  std::chrono::steady_clock::duration min_reload_;
  std::weak_ptr<const KernelSymbols> table_;
  std::chrono::steady_clock::time_point last_load_{};
  bool loaded_once_ = false;
  absl::Status last_error_;
  uint64_t loads_ = 0;
};

}  // namespace kmon
