// SPDX-License-Identifier: GPL-2.0
/* Counts chosen syscalls and their failures per cgroup.
 *
 * Two ways in, chosen by user space at load:
 * - fexit on each chosen syscall's kernel function (`__x64_sys_read`, ...): only
 *   the chosen syscalls pay. kmon_sc_fx0..31 are slots: user space gives each its
 *   target (bpf_program__set_attach_target) and its syscall number (`slot_nr`,
 *   rodata) before load, and loads only the slots it uses.
 * - kmon_sys_exit on tp_btf/sys_exit, where the kernel refuses fexit (lockdown) or
 *   lacks one of the functions: it runs for every syscall on the node, reads the
 *   number from pt_regs and drops the ones not chosen. tp_btf rather than the
 *   classic raw_syscalls tracepoint: it skips the perf buffer setup, most of the
 *   classic tracepoint's cost.
 * Both hand the return value over (fexit reads it after the function's argument).
 *
 * Control maps: `syscall_set` (which numbers count, and by which hook), `sc_config`
 * (the cache switch) and the common `filter_config`/`watched_cgroups`. Data map:
 * `counts` (per-CPU, cumulative), with the tracepoint's write-back cache `sc_cache`
 * in front of it (bpf/syscalls.h). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/kmon_common.bpf.h"
#include "bpf/syscalls.h"

char LICENSE[] SEC("license") = "GPL";

/* syscall number -> KMON_SYSCALL_BY_* of the hook that counts it. An array so the
 * verifier inlines the lookup. */
KMON_MAP(BPF_MAP_TYPE_ARRAY, KMON_MAX_SYSCALL_NR, __u32, __u8) syscall_set SEC(".maps");

/* Not preallocated: a preallocated per-CPU hash costs max_entries x 16 B x possible
 * CPUs (32 MiB at 128 CPUs) whether used or not; this one costs its entries. An
 * entry is made once per (cgroup, syscall), so the allocation is off the hot path. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, KMON_SYSCALL_COUNTS_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct syscall_key);
  __type(value, struct syscall_value);
} counts SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct syscall_config) sc_config SEC(".maps");
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct syscall_cache) sc_cache SEC(".maps");

/* The syscall number each fexit slot counts; set before load. */
const volatile __u32 slot_nr[KMON_SYSCALL_FEXIT_SLOTS] = {};

static __always_inline struct syscall_cache *cache_of(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&sc_cache, &zero);
}

/* Moves a way's counts into `counts`. The key is there: a way is given a key only
 * right after an update of the key's entry, so a write-back (in the flush too)
 * never inserts. A key that is not there was deleted by user space (its cgroup is
 * gone, or the syscall is no longer chosen): its counts go with it. */
static __always_inline void way_writeback(struct syscall_cached *w) {
  if (!w->cgroup_id || !w->count) return;
  struct syscall_key key = {.cgroup_id = w->cgroup_id, .nr = w->nr};
  struct syscall_value *v = bpf_map_lookup_elem(&counts, &key);
  if (v) {
    v->count += w->count;
    v->errors += w->errors;
  }
  w->count = 0;
  w->errors = 0;
}

/* One call straight into its `counts` entry (made if new): plain adds on this CPU's
 * copy where nothing else of the object can run on the CPU meanwhile, atomic ones
 * otherwise. False when the map had no room (counted as lost). */
static __always_inline bool count_direct(__u64 cgroup_id, __u32 nr, __u64 failed,
                                         const bool atomic) {
  struct syscall_key key = {.cgroup_id = cgroup_id, .nr = nr};
  static const struct syscall_value zero_value;
  struct syscall_value *v = kmon_lookup_or_init(&counts, &key, &zero_value);
  if (!v) return false;
  if (atomic) {
    __sync_fetch_and_add(&v->count, 1);
    if (failed) __sync_fetch_and_add(&v->errors, 1);
  } else {
    v->count += 1;
    v->errors += failed;
  }
  return true;
}

/* Counts into this CPU's cache way for the key, or into `counts` (and the way is the
 * key's from then on). The caller holds the cache (`busy`): it runs with preemption
 * off, and the flush's IPI leaves a busy CPU alone. */
static __always_inline void count_cached(struct syscall_cache *cache,
                                         const struct syscall_config *cfg, __u64 cgroup_id,
                                         __u32 nr, __u64 failed) {
  __u32 way = (__u32)(((cgroup_id << 10 | nr) * 0x9E3779B97F4A7C15ull) >> 60) &
              (KMON_SYSCALL_CACHE_WAYS - 1);
  struct syscall_cached *w = &cache->ways[way];
  if (cfg->cache && w->cgroup_id == cgroup_id && w->nr == nr &&
      w->generation == cfg->generation) {
    w->count += 1;
    w->errors += failed;
    return;
  }
  if (!count_direct(cgroup_id, nr, failed, false)) return;
  /* The way is this key's from now on (with the cache off: emptied, so nothing
   * stays in a way that no flush will empty). */
  way_writeback(w);
  w->cgroup_id = cfg->cache ? cgroup_id : 0;
  w->nr = nr;
  w->generation = cfg->generation;
}

/* `cached`: the caller runs with preemption off (the tracepoint) and may use this
 * CPU's cache. Otherwise (fexit, preemptible) straight into `counts`, with atomic
 * adds: another task's program may run on this CPU in the middle of this one. */
static __always_inline int count_syscall(__u32 nr, long ret, __u8 hook, bool cached) {
  __u8 *by = bpf_map_lookup_elem(&syscall_set, &nr);
  if (!by || *by != hook) return 0;

  __u64 cgroup_id = kmon_current_cgroup_id();
  if (!kmon_cgroup_watched(cgroup_id)) return 0;

  /* Errors are returned as -4095..-1; larger "negative" values (mmap addresses) are not. */
  __u64 failed = ret < 0 && ret >= -4095;
  __u32 zero = 0;
  const struct syscall_config *cfg = cached ? bpf_map_lookup_elem(&sc_config, &zero) : NULL;
  struct syscall_cache *cache = cached ? cache_of() : NULL;
  if (cache && cfg) {
    *(volatile __u64 *)&cache->busy = 1;
    KMON_BARRIER();
    count_cached(cache, cfg, cgroup_id, nr, failed);
    KMON_BARRIER();
    *(volatile __u64 *)&cache->busy = 0;
    return 0;
  }
  count_direct(cgroup_id, nr, failed, true);
  return 0;
}

/* tp_btf arguments are trusted BTF pointers: a direct (CO-RE relocated) load, no
 * bpf_probe_read_kernel helper call on this hottest of paths. */
static __always_inline long syscall_nr(struct pt_regs *regs) {
#if defined(__TARGET_ARCH_x86)
  return __builtin_preserve_access_index(regs->orig_ax);
#elif defined(__TARGET_ARCH_arm64)
  return __builtin_preserve_access_index(regs->syscallno);
#else
#error "kmon: syscall number register unknown for this architecture"
#endif
}

SEC("tp_btf/sys_exit")
int BPF_PROG(kmon_sys_exit, struct pt_regs *regs, long ret) {
  long nr = syscall_nr(regs);
  if (nr < 0 || nr >= KMON_MAX_SYSCALL_NR) return 0;
  return count_syscall((__u32)nr, ret, KMON_SYSCALL_BY_TRACEPOINT, true);
}

/* Run by user space on each CPU in turn (never attached) before it reads `counts`:
 * every way of this CPU's cache into the map. It runs in an IPI (or, on the calling
 * CPU, with preemption off, where no sys_exit program can be half-way). An IPI can
 * land in the middle of this CPU's sys_exit program, between the load and the store
 * of a count: writing back then would count the way twice, or lose the write-back
 * into the entry being updated. So a busy CPU is left alone: 1 asks user space to
 * run this again (RunOnEveryCpu), by which time the interrupted program is done. */
SEC("raw_tp")
int kmon_sc_flush(void *ctx) {
  struct syscall_cache *cache = cache_of();
  if (!cache) return 0;
  if (*(volatile __u64 *)&cache->busy) return 1;
  for (int i = 0; i < KMON_SYSCALL_CACHE_WAYS; i++) way_writeback(&cache->ways[i]);
  return 0;
}

/* Every __<arch>_sys_<name> takes one argument (the pt_regs): the return value is
 * ctx[1]. No target in the section: user space sets it. */
#define KMON_FEXIT_SLOT(i)                                                      \
  SEC("fexit")                                                                  \
  int kmon_sc_fx##i(unsigned long long *ctx) {                                  \
    return count_syscall(slot_nr[i], (long)ctx[1], KMON_SYSCALL_BY_FEXIT, false); \
  }

KMON_FEXIT_SLOT(0) KMON_FEXIT_SLOT(1) KMON_FEXIT_SLOT(2) KMON_FEXIT_SLOT(3)
KMON_FEXIT_SLOT(4) KMON_FEXIT_SLOT(5) KMON_FEXIT_SLOT(6) KMON_FEXIT_SLOT(7)
KMON_FEXIT_SLOT(8) KMON_FEXIT_SLOT(9) KMON_FEXIT_SLOT(10) KMON_FEXIT_SLOT(11)
KMON_FEXIT_SLOT(12) KMON_FEXIT_SLOT(13) KMON_FEXIT_SLOT(14) KMON_FEXIT_SLOT(15)
KMON_FEXIT_SLOT(16) KMON_FEXIT_SLOT(17) KMON_FEXIT_SLOT(18) KMON_FEXIT_SLOT(19)
KMON_FEXIT_SLOT(20) KMON_FEXIT_SLOT(21) KMON_FEXIT_SLOT(22) KMON_FEXIT_SLOT(23)
KMON_FEXIT_SLOT(24) KMON_FEXIT_SLOT(25) KMON_FEXIT_SLOT(26) KMON_FEXIT_SLOT(27)
KMON_FEXIT_SLOT(28) KMON_FEXIT_SLOT(29) KMON_FEXIT_SLOT(30) KMON_FEXIT_SLOT(31)
