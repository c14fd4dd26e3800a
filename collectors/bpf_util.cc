#include "collectors/bpf_util.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "base/log.h"
#include "bpf/kmon_common.h"

namespace kmon {
namespace {

// libbpf prints on the thread that called it.
thread_local int quiet_depth = 0;

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  char buf[1024];
  int n = std::vsnprintf(buf, sizeof buf, fmt, args);
  std::string msg(buf, n > 0 ? std::min<size_t>(n, sizeof buf - 1) : 0);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  if (level == LIBBPF_WARN && quiet_depth == 0) {
    LogWarn("libbpf", {{"detail", msg}});
  } else {
    LogDebug("libbpf", {{"detail", msg}});
  }
  return n;
}

bool IsHashType(bpf_map_type t) {
  switch (t) {
    case BPF_MAP_TYPE_HASH:
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_LRU_HASH:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
      return true;
    default:
      return false;
  }
}

}  // namespace

void InstallLibbpfLogger() { libbpf_set_print(LibbpfPrint); }

LibbpfWarningsAsDebug::LibbpfWarningsAsDebug() { ++quiet_depth; }
LibbpfWarningsAsDebug::~LibbpfWarningsAsDebug() { --quiet_depth; }

int PossibleCpus() {
  static const int n = [] {
    int c = libbpf_num_possible_cpus();
    return c > 0 ? c : 1;
  }();
  return n;
}

absl::Status RunOnEveryCpu(int prog_fd, int* failed_cpu) {
  // A hook is busy for tens of nanoseconds, and the IPI that found it busy has to
  // return before it can go on: the next try finds it done but for bad luck again.
  constexpr int kBusyRetries = 1000;
  for (int cpu = 0; cpu < PossibleCpus(); ++cpu) {
    for (int attempt = 0;; ++attempt) {
      LIBBPF_OPTS(bpf_test_run_opts, opts, .flags = BPF_F_TEST_RUN_ON_CPU,
                  .cpu = static_cast<__u32>(cpu));
      if (bpf_prog_test_run_opts(prog_fd, &opts) != 0) {
        const int e = errno;
        if (e == ENXIO) break;  // an offline CPU runs nothing
        if (failed_cpu != nullptr) *failed_cpu = cpu;
        return absl::InternalError(absl::StrCat("on CPU ", cpu, ": ", std::strerror(e)));
      }
      if (opts.retval == 0) break;
      if (attempt == kBusyRetries) {
        if (failed_cpu != nullptr) *failed_cpu = cpu;
        return absl::UnavailableError(
            absl::StrCat("on CPU ", cpu, ": still busy after ", kBusyRetries, " tries"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuCacheFlush::Start(const bpf_program* prog,
                                  std::function<absl::Status(bool on)> write_switch) {
  prog_fd_ = bpf_program__fd(prog);
  prog_name_ = bpf_program__name(prog);
  write_switch_ = std::move(write_switch);
  on_ = true;  // for the first Flush
  warned_ = false;
  if (!Flush()) return absl::OkStatus();
  absl::Status st = write_switch_(true);
  if (!st.ok()) on_ = false;
  return st;
}

bool CpuCacheFlush::Flush() {
  if (!on_) return false;
  int cpu = -1;
  absl::Status st = RunOnEveryCpu(prog_fd_, &cpu);
  if (st.ok()) return true;
  if (!warned_) {
    warned_ = true;
    LogWarn(absl::StrCat("running ", prog_name_, " failed; ", off_means_),
            {{"collector", collector_}, {"cpu", std::to_string(cpu)}, {"err", st.ToString()}});
  }
  on_ = false;
  absl::Status w = write_switch_(false);
  if (!w.ok()) {
    LogWarn(absl::StrCat(collector_, ": switching the cache off"), {{"err", w.ToString()}});
  }
  return false;
}

absl::Status BpfError(std::string_view collector, std::string_view what, int err) {
  if (err < 0) err = -err;
  return absl::Status(err == EPERM || err == EACCES ? absl::StatusCode::kPermissionDenied
                                                    : absl::StatusCode::kInternal,
                      absl::StrCat("collector=", std::string(collector), " ", std::string(what),
                                   ": ", std::strerror(err)));
}

absl::Status WriteControlEntry(std::string_view collector, const bpf_map* map, const void* value) {
  uint32_t zero = 0;
  if (bpf_map_update_elem(bpf_map__fd(map), &zero, value, BPF_ANY) != 0) {
    return BpfError(collector, absl::StrCat("map=", bpf_map__name(map), ": update"), errno);
  }
  return absl::OkStatus();
}

absl::Status CheckMapLayout(std::string_view collector, const bpf_map* map, size_t key_size,
                            size_t value_size) {
  if (bpf_map__key_size(map) != key_size || bpf_map__value_size(map) != value_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("collector=", std::string(collector), " map=", bpf_map__name(map),
                     ": key/value sizes ", bpf_map__key_size(map), "/", bpf_map__value_size(map),
                     " differ from the header's ", key_size, "/", value_size));
  }
  return absl::OkStatus();
}

namespace internal {

absl::Status ReadHashRaw(int map_fd, uint32_t max_entries, size_t key_size, size_t stride,
                         std::vector<uint8_t>* keys, std::vector<uint8_t>* values, uint32_t* count,
                         bool keep) {
  // Batch lookup in chunks, so a scrape costs what the map holds rather than its
  // max_entries (16384 histograms of a few hundred bytes would be megabytes).
  keys->clear();
  values->clear();
  *count = 0;
  uint32_t chunk = std::min<uint32_t>(1024, std::max<uint32_t>(max_entries, 1));
  std::vector<uint8_t> in_batch(std::max<size_t>(key_size, 8)), out_batch(in_batch.size());
  bool first = true, batched = false;
  uint32_t total = 0;
  while (total < max_entries) {
    uint32_t n = std::min(chunk, max_entries - total);
    // Not kept (counting): every batch lands at the start of the buffers.
    const size_t at = keep ? total : 0;
    keys->resize((at + n) * key_size);
    values->resize((at + n) * stride);
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int err =
        bpf_map_lookup_batch(map_fd, first ? nullptr : in_batch.data(), out_batch.data(),
                             keys->data() + at * key_size, values->data() + at * stride, &n, &opts);
    int e = err < 0 ? errno : 0;
    if (err < 0 && e == ENOSPC && chunk < (1u << 16)) {  // one bucket holds more than a chunk
      chunk *= 2;
      continue;
    }
    if (err < 0 && e != ENOENT) {
      if (first && (e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP)) break;  // fall back below
      return absl::InternalError(absl::StrCat("bpf_map_lookup_batch: ", std::strerror(e)));
    }
    batched = true;
    total += n;
    if (err < 0) break;  // ENOENT: the end of the map (a map that fits one chunk ends here)
    in_batch = out_batch;
    first = false;
  }
  if (batched || total >= max_entries) {
    const size_t kept = keep ? total : 0;
    keys->resize(kept * key_size);
    values->resize(kept * stride);
    *count = total;
    return absl::OkStatus();
  }

  // Kernels without batch ops for this map type: walk the keys one by one.
  std::vector<uint8_t> prev(key_size), next(key_size), value(stride);
  bool have_prev = false;
  keys->clear();
  values->clear();
  total = 0;
  while (total < max_entries &&
         bpf_map_get_next_key(map_fd, have_prev ? prev.data() : nullptr, next.data()) == 0) {
    if (bpf_map_lookup_elem(map_fd, next.data(), value.data()) == 0) {
      if (keep) {
        keys->insert(keys->end(), next.begin(), next.end());
        values->insert(values->end(), value.begin(), value.end());
      }
      ++total;
    }
    prev.swap(next);
    have_prev = true;
  }
  *count = total;
  return absl::OkStatus();
}

absl::Status ReadWholeHash(int map_fd, size_t key_size, size_t value_stride,
                           std::vector<uint8_t>* keys, std::vector<uint8_t>* values,
                           uint32_t* count) {
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(map_fd, &info, &len) != 0) {  // libbpf 1.1: no typed call
    return absl::InternalError(absl::StrCat("bpf_obj_get_info_by_fd: ", std::strerror(errno)));
  }
  return ReadHashRaw(map_fd, info.max_entries, key_size, value_stride, keys, values, count);
}

}  // namespace internal

void ClearHash(int map_fd, size_t key_size) {
  std::vector<uint8_t> key(key_size);
  // Deleting the first key each time: iteration from a deleted key would restart anyway.
  while (bpf_map_get_next_key(map_fd, nullptr, key.data()) == 0) {
    if (bpf_map_delete_elem(map_fd, key.data()) != 0) break;
  }
}

absl::StatusOr<std::vector<uint64_t>> ReadPerCpuU64Array(int map_fd, uint32_t entries) {
  std::vector<uint64_t> sums(entries, 0);
  std::vector<uint64_t> per_cpu(PossibleCpus());
  for (uint32_t k = 0; k < entries; ++k) {
    if (bpf_map_lookup_elem(map_fd, &k, per_cpu.data()) != 0) {
      return absl::InternalError(absl::StrCat("lookup of slot ", k, ": ", std::strerror(errno)));
    }
    for (uint64_t v : per_cpu) sums[k] += v;
  }
  return sums;
}

uint64_t MapMemoryBytes(int map_fd) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fdinfo/%d", map_fd);
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return 0;
  char line[128];
  unsigned long long bytes = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "memlock: %llu", &bytes) == 1) break;
  }
  std::fclose(f);
  return bytes;
}

absl::StatusOr<uint64_t> CountMapEntries(uint32_t type, int fd, uint32_t max_entries,
                                         uint32_t key_size, uint32_t value_size) {
  const auto t = static_cast<bpf_map_type>(type);
  if (!IsHashType(t)) return max_entries;
  const bool per_cpu = t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_LRU_PERCPU_HASH;
  // A per-CPU value is one 8-byte aligned slot per possible CPU.
  const size_t stride = per_cpu ? (value_size + 7) / 8 * 8 * PossibleCpus() : value_size;
  return CountHashEntries(fd, max_entries, key_size, stride);
}

absl::StatusOr<uint64_t> CountMapEntries(const bpf_map* map) {
  return CountMapEntries(bpf_map__type(map), bpf_map__fd(map), bpf_map__max_entries(map),
                         bpf_map__key_size(map), bpf_map__value_size(map));
}

absl::StatusOr<uint64_t> CountHashEntries(int map_fd, uint32_t max_entries, size_t key_size,
                                          size_t value_stride) {
  // In batches, into buffers of one batch: a syscall per key (get_next_key) cost three
  // times the collector's own read of the map.
  std::vector<uint8_t> keys, values;
  uint32_t count = 0;
  absl::Status st = internal::ReadHashRaw(map_fd, max_entries, key_size, value_stride, &keys,
                                          &values, &count, /*keep=*/false);
  if (!st.ok()) return st;
  return count;
}

}  // namespace kmon
