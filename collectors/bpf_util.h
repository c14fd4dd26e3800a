// Small helpers every collector uses to talk to its BPF maps from user space.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/strings/str_cat.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace kmon {

/// Routes libbpf's own messages into kmon's log (warnings as warn, the rest as debug).
void InstallLibbpfLogger();

/// While one lives, libbpf's warnings on this thread go to the debug log: for a
/// probe whose refusal is an answer rather than a problem (the caller logs it in
/// one line of its own).
class LibbpfWarningsAsDebug {
 public:
  LibbpfWarningsAsDebug();
  ~LibbpfWarningsAsDebug();
  LibbpfWarningsAsDebug(const LibbpfWarningsAsDebug&) = delete;
  LibbpfWarningsAsDebug& operator=(const LibbpfWarningsAsDebug&) = delete;
};

/// Number of possible CPUs: the stride of per-CPU map values.
int PossibleCpus();

/// Runs a program that is never attached (a raw_tp one) once on every possible CPU,
/// through BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU: on other CPUs in an IPI, with
/// interrupts off, on the calling one with preemption off. Offline CPUs are skipped.
/// A program that returns non-zero found the CPU busy (the IPI interrupted a hook of
/// its object half-way through an update) and is run on that CPU again, up to
/// 1000 times. On failure, `*failed_cpu` is the CPU that refused and the
/// status says why.
absl::Status RunOnEveryCpu(int prog_fd, int* failed_cpu = nullptr);

/// The user-space half of a per-CPU write-back cache in a BPF object (syscalls'
/// sc_cache, tcp's req_cache): its flush program, run on every CPU (RunOnEveryCpu)
/// before the maps behind the cache are read. The programs count through the cache
/// only once a first flush has worked; when a later one fails, the cache is switched
/// off (the programs count straight into the maps from then on, and what a CPU's
/// cache holds reaches them when its way is next used), warned once.
class CpuCacheFlush {
 public:
  /// `write_switch(on)` writes the cache switch into the object's control map;
  /// `off_means` completes the warning "running <prog> failed; <off_means>".
  CpuCacheFlush(std::string collector, std::string off_means)
      : collector_(std::move(collector)), off_means_(std::move(off_means)) {}

  /// At start, after attach: flushes once and switches the cache on if that worked.
  absl::Status Start(const bpf_program* prog, std::function<absl::Status(bool on)> write_switch);
  /// Before a read: runs the flush while the cache is on. False when it is off.
  bool Flush();
  bool on() const { return on_; }
  /// The object is going: off until the next Start.
  void Stop() { on_ = false; }

 private:
  std::string collector_;
  std::string off_means_;
  int prog_fd_ = -1;
  std::string prog_name_;
  std::function<absl::Status(bool)> write_switch_;
  bool on_ = false;
  bool warned_ = false;
};

/// "collector=syscalls map=counts: <what>: <strerror(err)>"
absl::Status BpfError(std::string_view collector, std::string_view what, int err);

/// Writes `value` (the map's value size) as entry 0 of a one-entry control map:
/// "collector=<collector> map=<name>: update: <strerror>" when the kernel refuses.
absl::Status WriteControlEntry(std::string_view collector, const bpf_map* map, const void* value);

/// Fails unless the map's key and value sizes match the shared header's structs.
absl::Status CheckMapLayout(std::string_view collector, const bpf_map* map, size_t key_size,
                            size_t value_size);

/// Reads a whole per-CPU hash map in batches (falling back to key iteration
/// where the kernel lacks batch ops). Each key comes with one value per CPU.
/// Nothing is deleted: counters stay cumulative so two scrapers see the same data.
template <typename K, typename V>
absl::Status ReadPerCpuHash(int map_fd, std::vector<std::pair<K, std::vector<V>>>* out);

/// Reads a whole per-CPU hash map like ReadPerCpuHash, turning each key and its
/// values (one per CPU) into one `Out` with `fold(const K&, std::span<const V>)`:
/// what the collector keeps of a key (usually the sum over CPUs), with no copy of
/// the per-CPU values in between.
template <typename K, typename V, typename Out, typename Fold>
absl::Status ReadPerCpuHashAs(int map_fd, Fold fold, std::vector<Out>* out);

/// Reads a whole (not per-CPU) hash map, turning each entry into one `Out` with
/// `fold(const K&, const V&)`.
template <typename K, typename V, typename Out, typename Fold>
absl::Status ReadHashAs(int map_fd, Fold fold, std::vector<Out>* out);

/// Reads a whole (not per-CPU) hash map in batches, like ReadPerCpuHash.
template <typename K, typename V>
absl::Status ReadHash(int map_fd, std::vector<std::pair<K, V>>* out);

/// Deletes every key of a hash map (used when a reload changes what its values mean).
void ClearHash(int map_fd, size_t key_size);

/// Sum over CPUs of every slot of a per-CPU u64 array.
absl::StatusOr<std::vector<uint64_t>> ReadPerCpuU64Array(int map_fd, uint32_t entries);

/// The memory the kernel says the map holds: fdinfo's "memlock", which is the map's
/// own accounting (bpf_map_memory_usage) since Linux 6.4; 0 when it cannot be read.
uint64_t MapMemoryBytes(int map_fd);

/// Number of keys in a hash-type map (CountHashEntries); max_entries for arrays.
absl::StatusOr<uint64_t> CountMapEntries(const bpf_map* map);
/// The same for a map known by its fd and the kernel's description of it.
absl::StatusOr<uint64_t> CountMapEntries(uint32_t type, int fd, uint32_t max_entries,
                                         uint32_t key_size, uint32_t value_size);
/// Number of keys in a hash map: its entries read in batches and counted, with
/// buffers for one batch. `value_stride`: bytes per key's value (value size x CPUs,
/// each rounded up to 8 bytes, for per-CPU maps).
absl::StatusOr<uint64_t> CountHashEntries(int map_fd, uint32_t max_entries, size_t key_size,
                                          size_t value_stride);

// ---- implementation of the template ----

namespace internal {
/// `value_stride`: bytes per key in the value buffer (value size x CPUs for per-CPU maps).
/// `keep` false: only counted, `keys` and `values` hold one batch at a time.
absl::Status ReadHashRaw(int map_fd, uint32_t max_entries, size_t key_size, size_t value_stride,
                         std::vector<uint8_t>* keys, std::vector<uint8_t>* values, uint32_t* count,
                         bool keep = true);
/// ReadHashRaw of every entry the map can hold, by the max_entries the kernel made
/// it with (which the config may have changed from the object's).
absl::Status ReadWholeHash(int map_fd, size_t key_size, size_t value_stride,
                           std::vector<uint8_t>* keys, std::vector<uint8_t>* values,
                           uint32_t* count);
}  // namespace internal

template <typename K, typename V, typename Out, typename Fold>
absl::Status ReadPerCpuHashAs(int map_fd, Fold fold, std::vector<Out>* out) {
  static_assert(sizeof(V) % 8 == 0, "per-CPU values are 8-byte aligned slots");
  std::vector<uint8_t> keys, values;
  uint32_t count = 0;
  const size_t cpus = static_cast<size_t>(PossibleCpus());
  absl::Status st =
      internal::ReadWholeHash(map_fd, sizeof(K), sizeof(V) * cpus, &keys, &values, &count);
  if (!st.ok()) return st;
  out->clear();
  out->reserve(count);
  std::vector<V> per_cpu(cpus);
  for (uint32_t i = 0; i < count; ++i) {
    K k;
    std::memcpy(&k, keys.data() + i * sizeof(K), sizeof(K));
    std::memcpy(per_cpu.data(), values.data() + i * cpus * sizeof(V), cpus * sizeof(V));
    out->push_back(fold(k, std::span<const V>(per_cpu)));
  }
  return absl::OkStatus();
}

template <typename K, typename V>
absl::Status ReadPerCpuHash(int map_fd, std::vector<std::pair<K, std::vector<V>>>* out) {
  return ReadPerCpuHashAs<K, V>(
      map_fd,
      [](const K& k, std::span<const V> per_cpu) {
        return std::pair<K, std::vector<V>>(k, std::vector<V>(per_cpu.begin(), per_cpu.end()));
      },
      out);
}

template <typename K, typename V, typename Out, typename Fold>
absl::Status ReadHashAs(int map_fd, Fold fold, std::vector<Out>* out) {
  std::vector<uint8_t> keys, values;
  uint32_t count = 0;
  absl::Status st = internal::ReadWholeHash(map_fd, sizeof(K), sizeof(V), &keys, &values, &count);
  if (!st.ok()) return st;
  out->clear();
  out->reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    K k;
    V v;
    std::memcpy(&k, keys.data() + i * sizeof(K), sizeof(K));
    std::memcpy(&v, values.data() + i * sizeof(V), sizeof(V));
    out->push_back(fold(k, v));
  }
  return absl::OkStatus();
}

template <typename K, typename V>
absl::Status ReadHash(int map_fd, std::vector<std::pair<K, V>>* out) {
  return ReadHashAs<K, V>(
      map_fd, [](const K& k, const V& v) { return std::pair<K, V>(k, v); }, out);
}

}  // namespace kmon
