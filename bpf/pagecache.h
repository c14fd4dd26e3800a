/* Shared between bpf/pagecache.bpf.c and collectors/pagecache.cc, with the pure
 * arithmetic both sides use (unit-tested in tests/pagecache_test.cc). */
#ifndef KMON_BPF_PAGECACHE_H_
#define KMON_BPF_PAGECACHE_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "bpf/kmon_common.h"

/* cgroups the data map can hold. */
#define KMON_PC_COUNTS_MAX 4096

struct pc_key {
  __u64 cgroup_id;
};

/* Per-CPU, cumulative, in pages (4 KiB on x86-64) except buffers_dirtied: user space
 * sums CPUs, never resets, and turns the fields into accesses and misses by the
 * hooks in use (collectors/pagecache.h). */
struct pc_value {
  __u64 read_pages;      /* asked for by reads (mm_filemap_get_pages), new to the task */
  __u64 mapped_pages;    /* mapped by faults (mm_filemap_fault, mm_filemap_map_pages) */
  __u64 added_pages;     /* added to the page cache (mm_filemap_add_to_page_cache) */
  __u64 dirtied_pages;   /* became dirty (writeback_dirty_folio) */
  __u64 accessed_pages;  /* cachestat twin: folio_mark_accessed */
  __u64 buffers_dirtied; /* cachestat twin: mark_buffer_dirty calls */
};

/* The last range of page indexes a task was counted for, per kind (reads, faults). */
struct pc_range {
  __u64 mapping; /* struct address_space *, as a number; 0: none yet */
  __u64 first;
  __u64 last;
};

#ifdef __cplusplus
static_assert(sizeof(struct pc_key) == 8, "BPF ABI");
static_assert(sizeof(struct pc_value) == 48, "BPF ABI");
static_assert(sizeof(struct pc_range) == 24, "BPF ABI");
#endif

/* Clamps the page range [first, *last] of a file of `size` bytes to the file's end:
 * a read may ask beyond it (read(fd, buf, 1 MiB) of a 10 KiB file), the kernel then
 * copies only what is there. 0 when nothing of the range is inside the file. */
KMON_INLINE int kmon_pc_clamp_to_eof(__u64 first, __u64 *last, __s64 size, __u32 page_shift) {
  if (size <= 0) return 0;
  __u64 eof_page = ((__u64)size - 1) >> page_shift;
  if (first > eof_page) return 0;
  if (*last > eof_page) *last = eof_page;
  return *last >= first;
}

/* Pages of [first, last] of `mapping` not in the task's previous range of the same
 * kind, which is then replaced by [first, last] (reads) or, when the two overlap,
 * grown to hold both (`merge`: faults). One read(2) larger than a batch of folios
 * makes filemap_get_pages report the rest of the whole request on every batch
 * ([0, 2047], [31, 2047], [62, 2047], ...); a fault-around window is reported again
 * when a page of it that was not yet uptodate faults in. Counting only what is new
 * to the task makes each a page once. A read that starts in the page the previous
 * read ended in does not count that page again: the kernel itself does not mark it
 * accessed again (filemap_read's pos_same_folio check). Reads replace rather than
 * grow, so a second pass over a file read in overlapping pieces counts again. */
KMON_INLINE __u64 kmon_pc_new_pages(struct pc_range *prev, __u64 mapping, __u64 first,
                                    __u64 last, int merge) {
  __u64 n = last - first + 1;
  if (prev->mapping == mapping && first <= prev->last && last >= prev->first) {
    __u64 lo = first > prev->first ? first : prev->first;
    __u64 hi = last < prev->last ? last : prev->last;
    n -= hi - lo + 1;
    if (merge) {
      if (prev->first < first) first = prev->first;
      if (prev->last > last) last = prev->last;
    }
  }
  prev->mapping = mapping;
  prev->first = first;
  prev->last = last;
  return n;
}

/* Pages in a folio from its first two pages' flag words (folio_nr_pages()): a large
 * folio has PG_head set, and the low byte of the first tail page's flags
 * (folio->_flags_1) is its order. */
KMON_INLINE __u64 kmon_pc_folio_pages(__u64 flags, __u64 flags_1, __u32 pg_head) {
  if (!((flags >> pg_head) & 1)) return 1;
  __u32 order = flags_1 & 0xff;
  return order < 32 ? 1ull << order : 1; /* orders stop near 18 (a PUD); no shift past 63 */
}

#endif /* KMON_BPF_PAGECACHE_H_ */
