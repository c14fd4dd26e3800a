// Response buffers kept from one scrape to the next, and free heap memory given back
// to the kernel after a large one: a steady scrape reuses the pages the last one
// faulted in, and what a burst made resident does not stay resident.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace kmon {

/// Idle string buffers with their capacity. A buffer is kept when it is not more than
/// twice what it last held (or `min_keep`), so a buffer that grew for a burst is freed
/// by the first response that needs less than half of it. Thread-safe.
class BufferPool {
 public:
  explicit BufferPool(size_t max_idle = 2, size_t min_keep = 64 * 1024)
      : max_idle_(max_idle), min_keep_(min_keep) {}

  /// An idle buffer (empty, with its capacity), or a new one.
  std::string Take();
  /// Takes a buffer back; its size is what it was used for this time. Returns the
  /// capacity it freed instead of keeping it (0 when kept).
  size_t Give(std::string buffer);
  /// Capacity of the idle buffers, in bytes.
  size_t IdleBytes() const;

 private:
  const size_t max_idle_, min_keep_;
  mutable std::mutex mu_;
  std::vector<std::string> idle_;  // guarded by mu_
};

/// Sets up the allocator for a process that serves scrapes from a few threads:
///  - one malloc arena. With one per thread (glibc's default) each HTTP worker keeps
///    the top of its own heap, which malloc_trim does not release outside the main
///    arena, so every worker held the peak of the largest scrape it had served (57 MiB
///    for 22k series before);
///  - a fixed mmap threshold (256 KiB). glibc raises it to the size of every large
///    block freed, so after the 5.5 MB vmlinux BTF of the start the next large blocks
///    came from the heap and stayed resident when freed (RSS 18-22 MiB instead of 14
///    at the defaults, depending on the order things were freed in); fixed, a large
///    block is its own mapping and goes back to the kernel when freed.
/// A handful of threads that scrape every few seconds do not contend. Call before any
/// thread starts. A no-op elsewhere than glibc.
void TuneMallocForExporter();

/// Gives free heap memory back to the kernel: glibc's malloc_trim(0), which walks
/// every arena (each HTTP worker thread allocates in its own) and releases free pages
/// inside the heap, not only at its top. Without it every worker keeps the peak of
/// the largest scrape it served. A no-op elsewhere than glibc.
void ReturnFreeMemory();

/// What ReleaseEmbeddedObjectPages found and let go.
struct EmbeddedObjectPages {
  size_t objects = 0;  // ELF objects of that machine in the program's read-only data
  size_t bytes = 0;    // their whole pages dropped from the process's page tables
};

/// Drops the resident pages of the ELF relocatable objects for `machine` (EM_BPF: the
/// BPF objects the skeletons embed) from the running program's read-only segments. They
/// are read once, when libbpf opens them, and were ~0.4 MiB of RSS after that. The
/// objects are found in the program's file (/proc/self/exe, read with pread, so looking
/// does not fault pages in); their pages stay in the page cache, and a later open of an
/// object faults them back in unchanged (MADV_DONTNEED on a read-only private file
/// mapping only unmaps). Only whole pages inside an object are dropped.
EmbeddedObjectPages ReleaseEmbeddedObjectPages(uint16_t machine);

}  // namespace kmon
