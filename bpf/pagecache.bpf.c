// SPDX-License-Identifier: GPL-2.0
/* Page-cache accesses and misses per cgroup, in pages.
 *
 * Tracepoints (the default, and all a locked-down kernel lets BPF use), each in the
 * context of the task that caused it:
 *   filemap:mm_filemap_get_pages   a buffered read got pages [index, last_index] (v6.11+)
 *   filemap:mm_filemap_map_pages   a fault mapped the cached pages of a window (v6.11+)
 *   filemap:mm_filemap_fault       a fault needed one page filemap_map_pages had not mapped
 *   filemap:mm_filemap_add_to_page_cache  a folio was added (a miss; readahead included)
 *   writeback:writeback_dirty_folio       a folio became dirty (a write to it)
 * The range tracepoints report what was asked, not what a batch got, so each task
 * remembers its last range of each kind (task local storage) and only new pages count.
 *
 * The cachestat twin (bcc's cachestat formula) adds kernel functions no tracepoint
 * covers: folio_mark_accessed (every access the kernel's LRU is told of) and
 * mark_buffer_dirty (writes through buffer heads, which cachestat subtracts). They
 * are written twice, as fentry and as kprobe ("?" sections: not loaded unless user
 * space asks), and user space loads the kind the kernel lets it attach.
 *
 * Control maps: the common `filter_config`/`watched_cgroups`; rodata `page_shift`.
 * Data map: `counts` (per-CPU, cumulative). `seen` is the kernel side's own state. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/kmon_common.bpf.h"
#include "bpf/pagecache.h"

char LICENSE[] SEC("license") = "GPL";

/* log2 of the kernel's page size, set by user space before load (arm64 kernels may
 * use 16 or 64 KiB pages; PAGE_SHIFT is a #define, not in BTF). */
const volatile __u32 page_shift = 12;

KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_PC_COUNTS_MAX, struct pc_key, struct pc_value,
               BPF_F_NO_PREALLOC) counts SEC(".maps");

struct pc_task {
  struct pc_range read;
  struct pc_range mapped;
};

/* Freed with the task, so no entry outlives its thread. */
struct {
  __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct pc_task);
} seen SEC(".maps");

/* The current cgroup's counters; NULL when it is not watched or the map is full. */
static __always_inline struct pc_value *current_counts(void) {
  __u64 cgroup_id = kmon_current_cgroup_id();
  if (!kmon_cgroup_watched(cgroup_id)) return NULL;
  struct pc_key key = {.cgroup_id = cgroup_id};
  static const struct pc_value zero;
  return kmon_lookup_or_init(&counts, &key, &zero);
}

/* Counts [first, last] of `mapping` as read (mapped == 0) or mapped pages. */
static __always_inline void count_range(struct address_space *mapping, __u64 first, __u64 last,
                                        int mapped) {
  struct pc_value *v = current_counts();
  if (!v) return;
  /* A trusted tracepoint argument: plain (CO-RE relocated) loads, no helper call. */
  struct inode *host = mapping->host;
  if (!host || !kmon_pc_clamp_to_eof(first, &last, host->i_size, page_shift)) return;
  struct pc_task *t = bpf_task_storage_get(&seen, bpf_get_current_task_btf(), 0,
                                           BPF_LOCAL_STORAGE_GET_F_CREATE);
  __u64 n = last - first + 1; /* no storage (out of memory): count the range whole */
  if (t) n = kmon_pc_new_pages(mapped ? &t->mapped : &t->read, (__u64)mapping, first, last, mapped);
  if (mapped)
    v->mapped_pages += n;
  else
    v->read_pages += n;
}

/* folio_nr_pages() of a folio a tracepoint or fentry hands over (a BTF pointer). The
 * flags word became memdesc_flags_t, a struct of one unsigned long, in v6.18; read
 * as a word it is the same on either side of that change. */
static __always_inline __u64 folio_pages(struct folio *folio) {
  __u64 flags = *(unsigned long *)__builtin_preserve_access_index(&folio->flags);
  return kmon_pc_folio_pages(flags, folio->_flags_1, bpf_core_enum_value(enum pageflags, PG_head));
}

/* The same for a kprobe's untyped argument: through bpf_probe_read_kernel. */
static __always_inline __u64 folio_pages_probed(struct folio *folio) {
  __u64 flags = 0;
  bpf_core_read(&flags, sizeof(flags), &folio->flags);
  return kmon_pc_folio_pages(flags, BPF_CORE_READ(folio, _flags_1),
                             bpf_core_enum_value(enum pageflags, PG_head));
}

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(kmon_pc_read, struct address_space *mapping, unsigned long index, unsigned long last_index) {
  count_range(mapping, index, last_index, 0);
  return 0;
}

SEC("tp_btf/mm_filemap_map_pages")
int BPF_PROG(kmon_pc_map, struct address_space *mapping, unsigned long start, unsigned long end) {
  count_range(mapping, start, end, 1);
  return 0;
}

SEC("tp_btf/mm_filemap_fault")
int BPF_PROG(kmon_pc_fault, struct address_space *mapping, unsigned long index) {
  count_range(mapping, index, index, 1);
  return 0;
}

SEC("tp_btf/mm_filemap_add_to_page_cache")
int BPF_PROG(kmon_pc_add, struct folio *folio) {
  struct pc_value *v = current_counts();
  if (v) v->added_pages += folio_pages(folio);
  return 0;
}

SEC("tp_btf/writeback_dirty_folio")
int BPF_PROG(kmon_pc_dirty, struct folio *folio, struct address_space *mapping) {
  struct pc_value *v = current_counts();
  if (v) v->dirtied_pages += folio_pages(folio);
  return 0;
}

/* ---- the cachestat twin: loaded only when user space asks for it ---- */

SEC("?fentry/folio_mark_accessed")
int BPF_PROG(kmon_pc_mpa_fe, struct folio *folio) {
  struct pc_value *v = current_counts();
  if (v) v->accessed_pages += folio_pages(folio);
  return 0;
}

SEC("?fentry/mark_buffer_dirty")
int BPF_PROG(kmon_pc_mbd_fe) {
  struct pc_value *v = current_counts();
  if (v) v->buffers_dirtied += 1;
  return 0;
}

SEC("?kprobe/folio_mark_accessed")
int BPF_KPROBE(kmon_pc_mpa_kp, struct folio *folio) {
  struct pc_value *v = current_counts();
  if (v) v->accessed_pages += folio_pages_probed(folio);
  return 0;
}

SEC("?kprobe/mark_buffer_dirty")
int BPF_KPROBE(kmon_pc_mbd_kp) {
  struct pc_value *v = current_counts();
  if (v) v->buffers_dirtied += 1;
  return 0;
}
