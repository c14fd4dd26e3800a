/* Maps and helpers every kmon BPF object carries: the watched-cgroups control map
 * (Kmon's "what to watch"), its on/off switch, the lost-event counters, and the one
 * way to find or make a data map's entry that counts what it cannot store. */
#ifndef KMON_BPF_KMON_COMMON_BPF_H_
#define KMON_BPF_KMON_COMMON_BPF_H_

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "bpf/kmon_common.h"

/* A BTF-defined map of the common shape, in one line:
 *   KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_X_MAX, struct x_key, struct x_value) counts SEC(".maps");
 * Maps with more attributes (flags, LRU, stack traces) are written out in full. */
#define KMON_MAP(_type, _max_entries, _key, _value) \
  struct {                                          \
    __uint(type, _type);                            \
    __uint(max_entries, _max_entries);              \
    __type(key, _key);                              \
    __type(value, _value);                          \
  }

/* The same with map_flags. Data maps keyed by workload use BPF_F_NO_PREALLOC: the
 * kernel then holds only the keys present (a per-CPU value x possible CPUs each),
 * where a preallocated per-CPU hash holds max_entries x value x CPUs from the start
 * (16384 x 48 B x 128 CPUs = 96 MiB for one map on a big node). Inserts allocate
 * (bpf_mem_alloc, usable from any context); they happen once per new key. */
#define KMON_MAP_FLAGS(_type, _max_entries, _key, _value, _flags) \
  struct {                                                        \
    __uint(type, _type);                                          \
    __uint(max_entries, _max_entries);                            \
    __uint(map_flags, _flags);                                    \
    __type(key, _key);                                            \
    __type(value, _value);                                        \
  }

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct kmon_filter_config) filter_config SEC(".maps");

/* What a helper call costs. On this project's test VM (AMD EPYC guest: retpolines,
 * and every return through the Safe RET thunk against Speculative Return Stack
 * Overflow) a helper's call and return cost 20-40 ns, and bpf_ktime_get_ns(), which
 * reads the clocksource through an indirect call, ~100 ns: more than a whole empty
 * program on a hot hook (72-83 ns on sched_switch). So hot paths read what the
 * kernel already holds (BTF pointer loads, a clock the caller just read) and call a
 * helper only where nothing else gives the answer; each such place says whose
 * clock or field it reads instead. Figures: README "Benchmarks", tests/bench/. */

/* A task's cgroup v2 id, t->cgroups->dfl_cgrp->kn->id: what the kernel's
 * bpf_get_current_cgroup_id() returns for current. Plain loads of BTF pointers,
 * which the verifier makes fault-safe, under the RCU read lock every tracing
 * program runs in; no helper call (above; the helper also takes an RCU read
 * section of its own: 20-40 ns more per event on sys_exit, tests/bench/syscall_overhead). */
static __always_inline __u64 kmon_task_cgroup_id(const struct task_struct *t) {
  return t->cgroups->dfl_cgrp->kn->id;
}

/* The current task's cgroup v2 id (bpf_get_current_task_btf is a helper call too,
 * but one that only returns the per-CPU `current`). */
static __always_inline __u64 kmon_current_cgroup_id(void) {
  return kmon_task_cgroup_id(bpf_get_current_task_btf());
}

/* cgroup v2 id -> 1. Consulted only while filter_config.filter_cgroups is set.
 * The exporter gives every object the same pair (collectors/watched_cgroups.h);
 * not preallocated, as it is written only when targets or cgroups change. */
KMON_MAP_FLAGS(BPF_MAP_TYPE_HASH, KMON_MAX_WATCHED_CGROUPS, __u64, __u8, BPF_F_NO_PREALLOC)
    watched_cgroups SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, KMON_LOST_MAX, __u32, __u64) lost SEC(".maps");

static __always_inline bool kmon_cgroup_watched(__u64 cgroup_id) {
  __u32 zero = 0;
  struct kmon_filter_config *cfg = bpf_map_lookup_elem(&filter_config, &zero);
  if (!cfg || !cfg->filter_cgroups) return true;
  return bpf_map_lookup_elem(&watched_cgroups, &cgroup_id) != NULL;
}

/* One atomic add, though the slot is this CPU's: a program of the same object can
 * interrupt this one (a softirq inside a task's program, bpf/kmon_nest.bpf.h), and
 * a plain load and store around its add would lose it. Losses are rare; the lock
 * costs nothing on the paths that count. */
static __always_inline void kmon_count_lost(__u32 reason) {
  __u64 *n = bpf_map_lookup_elem(&lost, &reason);
  if (n) __sync_fetch_and_add(n, 1);
}

/* A compiler barrier: stores before it are emitted before the code after it, in
 * program order, which is the order an interrupt on this CPU sees them in (a flag
 * set around an update that an interrupting program or IPI checks). */
#define KMON_BARRIER() asm volatile("" ::: "memory")

/* include/uapi/asm-generic/errno-base.h: a #define, so not in vmlinux.h. */
#define KMON_EEXIST 17

/* The value stored at `key` in the hash map `map`, inserted first as a copy of
 * `init` when the key is new; NULL, counted as lost (map_full), when the map has no
 * room for it. Callers insert zero and add the event to what this returns, so the
 * event is added in one place whether the key was new or not:
 *
 * - Two CPUs can miss the same new key at once. The insert is BPF_NOEXIST, so the
 *   later one fails with -EEXIST and leaves the earlier one's value, which its
 *   second lookup then finds: both events land in the map.
 * - Any other failure (-E2BIG: the map is full; -ENOMEM; a bucket lock the map
 *   could not take) left no value for this key: lost, without a second lookup,
 *   which keeps a map that stays full cheap to miss in.
 * - Per-CPU hashes: an insert from a BPF program copies `init` into this CPU's slot
 *   and zeroes the other CPUs' slots (pcpu_init_value(), kernel/bpf/hashtab.c);
 *   lookups return this CPU's slot. Shared hashes hold `init` once, and callers add
 *   to it atomically where CPUs may hit one key at the same time. */
static __always_inline void *kmon_lookup_or_init(void *map, const void *key, const void *init) {
  void *v = bpf_map_lookup_elem(map, key);
  if (v) return v;
  long err = bpf_map_update_elem(map, key, init, BPF_NOEXIST);
  if (err == 0 || err == -KMON_EEXIST) v = bpf_map_lookup_elem(map, key);
  if (!v) kmon_count_lost(KMON_LOST_MAP_FULL);
  return v;
}

#endif /* KMON_BPF_KMON_COMMON_BPF_H_ */
