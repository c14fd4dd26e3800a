// SPDX-License-Identifier: GPL-2.0
/* Per-cgroup CPU time, context switches, off-CPU episodes and run-queue latency,
 * and off-CPU time by stack, from the scheduler's tracepoints.
 *
 * A thread's wall time splits into three parts this program measures:
 *   on CPU      switch-in -> switch-out                  kmon_cpu_oncpu_seconds_total
 *   off CPU     switch-out (blocked) -> wakeup           kmon_cpu_offcpu_duration_seconds
 *   run queue   wakeup (or preemption) -> switch-in      kmon_cpu_runqueue_latency_seconds
 * Off-CPU episodes are classed by the state the thread blocked in (prev_state at
 * switch-out): sleep (TASK_INTERRUPTIBLE), io (TASK_UNINTERRUPTIBLE), other.
 *
 * sched_switch is the hottest hook on a machine, so its path is one array lookup
 * (config), two task-local storage lookups (the per-task state of prev and next:
 * a pointer in the task, no hashing), one counter update and one histogram update,
 * both into this CPU's write-back cache (`cpu_cache`, bpf/cpu.h: plain adds, no hash
 * lookup, no line shared with other CPUs) while the key is in it; stacks (two
 * bpf_get_stackid) are taken only when a thread blocks while stacks are on
 * (cpu_config.stacks, checked before anything else of stacks: with `stacks:
 * on_demand` it is on only while /debug/offcpu profiles), and aggregated only for
 * episodes >= offcpu_min that started and ended while it was on.
 *
 * On-CPU time is added at switch-out, and also by `kmon_cpu_flush`, which user space
 * runs on every CPU before it reads the counters (BPF_PROG_TEST_RUN with
 * BPF_F_TEST_RUN_ON_CPU: an IPI): it writes the CPU's cache back, adds the running
 * thread's slice so far and moves the slice's start to now, so a thread that never
 * leaves its CPU is counted as it runs, not in one jump when it finally switches out.
 *
 * Control maps: `cpu_config` (offcpu_min, stacks, the stack generation) and the
 * common `filter_config`/`watched_cgroups`. Data maps (cumulative): `cg_counters`
 * (per-CPU), `cg_hists`, `offcpu_stacks`, `stacks` (the stack traces), and `cpu_lost`
 * (per-CPU, reasons of its own beside the common `lost`). The per-thread state is
 * task-local storage (`task_state`), freed with the task; `kmon_cpu_held`, a task
 * iterator, lists the stack ids threads off CPU hold. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/kmon_common.bpf.h"
#include "bpf/cpu.h"

char LICENSE[] SEC("license") = "GPL";

/* include/uapi/asm-generic/errno-base.h (EEXIST is KMON_EEXIST, kmon_common.bpf.h). */
#define KMON_ENOMEM 12

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct cpu_config) cpu_config SEC(".maps");

/* Where a blocked thread's run-queue wait comes from, set by user space before load
 * from the kernel's BTF. 1: the kernel's own accounting (CONFIG_SCHED_INFO, what
 * /proc/PID/schedstat shows): at switch-in, the wait is what task->sched_info.run_delay
 * grew by since it left (waits on run queues it left, as when it migrated) plus its
 * wait on this one, the run queue's clock (rq->clock, updated at the top of
 * __schedule; the rq is the thread's cfs_rq's, which follows its CPU whatever its
 * class) since it was queued (sched_info.last_queued); sched_wakeup is not
 * hooked at all. 0: kmon_cpu_wakeup dates the wakeup. */
const volatile __u32 sched_info = 0;

/* The clock every timestamp of this object is on, set by user space before load from
 * the kernel's BTF. 1: the clock of the task's run queue (rq->clock, sched_clock in
 * ns), three loads. sched_switch runs right after __schedule
 * updated it, sched_wakeup_new right after wake_up_new_task did (on the new task's
 * rq), sched_wakeup with the woken task's rq locked and updated; what it trails the
 * moment of the hook by is the scheduler's own work since (pick_next_task): the
 * same at both ends of an episode, so it cancels. Where the scheduler skipped the
 * update (a wakeup that preempts had just made it, RQCF_ACT_SKIP), the switch is
 * dated at that wakeup: typically a few µs, a tick at most. The flush, in an IPI,
 * reads the clock as the last scheduler event or tick left it: the running thread's
 * time so far is counted up to a tick (4 ms at HZ=250) late, never twice (its slice
 * restarts at the same value). 0: bpf_ktime_get_ns(), ~100 ns per switch more
 * (kmon_common.bpf.h: more than a whole empty program on the hook). */
const volatile __u32 rq_clock = 0;

/* Now, on the clock above: `t`'s run queue's, the one each hook's caller just updated. */
static __always_inline __u64 now_on(struct task_struct *t) {
  if (rq_clock) return t->se.cfs_rq->rq->clock;
  return bpf_ktime_get_ns();
}

/* Task-local storage: made at a thread's first switch seen, freed with the task, so
 * nothing is preallocated and nothing outlives its thread. */
struct {
  __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct cpu_task_state);
} task_state SEC(".maps");

/* A map without preallocation allocates new keys from a per-CPU cache that refills
 * only once interrupts are back on: for per-CPU values it holds 1 to 3 elements,
 * for elements above 256 bytes it starts with a single one. One new key per
 * sched_switch run is always served; a second may not be.
 *
 * The counters, touched on every switch, are per-CPU (24 bytes x CPUs per cgroup)
 * and not preallocated: at most one new key per run (the cgroup of prev), and
 * preallocated they would cost 4096 x 24 x CPUs (12 MiB at 128 CPUs) on every node.
 * The histograms, 232 bytes each, are shared and updated with atomic adds, so their
 * memory does not grow with the number of CPUs (a cgroup's threads contend on them
 * only when they end episodes on several CPUs at the same moment); they stay
 * preallocated, as one switch-in can add two of a new cgroup (its first run-queue
 * wait and its first sleep). */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __uint(max_entries, KMON_CPU_CGROUPS_MAX);
  __type(key, __u64);
  __type(value, struct cpu_counters);
} cg_counters SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_HASH, KMON_CPU_HISTS_MAX, struct cpu_hist_key,
         struct cpu_hist) cg_hists SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_STACK_TRACE);
  __uint(max_entries, KMON_CPU_STACKS_MAX);
  __uint(key_size, sizeof(__u32));
  __uint(value_size, KMON_CPU_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

/* Shared, atomic adds: one update per episode of at least offcpu_min is rare. Not
 * preallocated: empty while nobody profiles (`stacks: on_demand`), and at most one
 * new key per switch. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __uint(max_entries, KMON_CPU_OFFCPU_STACKS_MAX);
  __type(key, struct offcpu_stack_key);
  __type(value, struct offcpu_stack_value);
} offcpu_stacks SEC(".maps");

/* The write-back cache in front of cg_counters and cg_hists (bpf/cpu.h). */
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct cpu_cache) cpu_cache SEC(".maps");

/* Reasons beyond the common `lost` array's map_full (enum kmon_cpu_lost_reason). */
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, KMON_CPU_LOST_MAX, __u32, __u64) cpu_lost SEC(".maps");

/* Zero values to insert from: a global, so no 232-byte struct lands on the stack. */
const struct cpu_hist zero_hist = {};

static __always_inline void count_cpu_lost(__u32 reason) {
  __u64 *n = bpf_map_lookup_elem(&cpu_lost, &reason);
  if (n) *n += 1;
}

/* This CPU's counters of a cgroup (a per-CPU value: plain adds). */
static __always_inline struct cpu_counters *counters_of(__u64 cgroup_id) {
  static const struct cpu_counters zero;
  return kmon_lookup_or_init(&cg_counters, &cgroup_id, &zero);
}

/* The cache's way for a key: a multiplicative hash, as cgroup ids (inode numbers)
 * of one pod are often consecutive. */
static __always_inline __u32 cache_way(__u64 cgroup_id, __u32 kind) {
  return (__u32)(((cgroup_id * 4 + kind) * 0x9E3779B97F4A7C15ull) >> 61) &
         (KMON_CPU_CACHE_WAYS - 1);
}

static __always_inline struct cpu_cache *cache_of(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&cpu_cache, &zero);
}

/* Moves a way's counts into cg_counters. The key is there: a way is given a cgroup
 * only right after an update of the cgroup's entry, so a write-back (in the flush
 * too, where a new key might find no memory) never inserts. A key that is not there
 * was deleted by user space as gone: its counts go with it. */
static __always_inline void counters_writeback(struct cpu_cached_counters *w) {
  if (!w->cgroup_id || !(w->oncpu_ns | w->voluntary | w->involuntary)) return;
  struct cpu_counters *c = bpf_map_lookup_elem(&cg_counters, &w->cgroup_id);
  if (c) {
    c->oncpu_ns += w->oncpu_ns;
    c->voluntary += w->voluntary;
    c->involuntary += w->involuntary;
  }
  w->oncpu_ns = 0;
  w->voluntary = 0;
  w->involuntary = 0;
}

/* Adds to a cgroup's counters on this CPU: into its cache way when the way holds it;
 * else straight into cg_counters (inserting the key if new), and the way, written
 * back, is the cgroup's from then on. With the cache off (cpu_config.cache), counts
 * go straight into the map and each way is written back and left empty at its next
 * use, so nothing stays in a way that no flush will empty. */
static __always_inline void counters_add(const struct cpu_config *cfg, __u64 cgroup_id,
                                         __u64 oncpu_ns, __u64 voluntary, __u64 involuntary) {
  struct cpu_cache *cache = cache_of();
  struct cpu_cached_counters *w = NULL;
  if (cache) {
    w = &cache->counters[cache_way(cgroup_id, 0)];
    if (cfg->cache && w->cgroup_id == cgroup_id) {
      w->oncpu_ns += oncpu_ns;
      w->voluntary += voluntary;
      w->involuntary += involuntary;
      return;
    }
  }
  struct cpu_counters *c = counters_of(cgroup_id);
  if (!c) return;
  c->oncpu_ns += oncpu_ns;
  c->voluntary += voluntary;
  c->involuntary += involuntary;
  if (w) {
    counters_writeback(w);
    w->cgroup_id = cfg->cache ? cgroup_id : 0;
  }
}

/* Moves a way's episodes into cg_hists (shared: atomic adds, of the slots that have
 * any). As for the counters, the key is there unless user space deleted it as gone. */
static __always_inline void hist_writeback(struct cpu_cached_hist *w) {
  if (!w->cgroup_id || !w->pending) return;
  struct cpu_hist_key key = {.cgroup_id = w->cgroup_id, .kind = w->kind};
  struct cpu_hist *h = bpf_map_lookup_elem(&cg_hists, &key);
  for (int i = 0; i < KMON_CPU_HIST_SLOTS; i++) {
    __u64 n = w->h.slots[i];
    if (!n) continue;
    if (h) __sync_fetch_and_add(&h->slots[i], n);
    w->h.slots[i] = 0;
  }
  if (h) __sync_fetch_and_add(&h->sum_ns, w->h.sum_ns);
  w->h.sum_ns = 0;
  w->pending = 0;
}

static __always_inline void hist_add(const struct cpu_config *cfg, __u64 cgroup_id, __u32 kind,
                                     __u64 ns) {
  __u32 slot = kmon_cpu_hist_slot(ns);
  struct cpu_cache *cache = cache_of();
  struct cpu_cached_hist *w = NULL;
  if (cache) {
    w = &cache->hists[cache_way(cgroup_id, kind)];
    if (cfg->cache && w->cgroup_id == cgroup_id && w->kind == kind) {
      if (slot < KMON_CPU_HIST_SLOTS) w->h.slots[slot] += 1;
      w->h.sum_ns += ns;
      w->pending += 1;
      return;
    }
  }
  struct cpu_hist_key key = {.cgroup_id = cgroup_id, .kind = kind};
  struct cpu_hist *h = kmon_lookup_or_init(&cg_hists, &key, &zero_hist);
  if (!h) return;
  if (slot < KMON_CPU_HIST_SLOTS) __sync_fetch_and_add(&h->slots[slot], 1);
  __sync_fetch_and_add(&h->sum_ns, ns);
  if (w) {
    hist_writeback(w);
    w->cgroup_id = cfg->cache ? cgroup_id : 0;
    w->kind = kind;
  }
}

/* Writes every way of this CPU's cache back (kmon_cpu_flush, before user space reads). */
static __always_inline void cache_writeback_all(void) {
  struct cpu_cache *cache = cache_of();
  if (!cache) return;
  for (int i = 0; i < KMON_CPU_CACHE_WAYS; i++) {
    counters_writeback(&cache->counters[i]);
    hist_writeback(&cache->hists[i]);
  }
}

/* The stack id to keep from bpf_get_stackid's result. "No stack there" (EFAULT for
 * a kernel thread's user stack) is no stack; a stack the map could not store is kept
 * as a marker of why. Without BPF_F_REUSE_STACKID (see bpf/cpu.h) the map refuses a
 * stack whose hash bucket holds another with -EEXIST, a collision, and a new stack
 * with no free element with -ENOMEM. Counted only if the episode is recorded
 * (count_lost_stacks), as most episodes are shorter than offcpu_min. */
static __always_inline __s32 stack_id_or_lost(long id) {
  if (id >= 0) return (__s32)id;
  if (id == -KMON_EEXIST) return KMON_CPU_STACK_COLLIDED;
  if (id == -KMON_ENOMEM) return KMON_CPU_STACK_NO_ROOM;
  return KMON_CPU_NO_STACK;
}

static __always_inline void count_lost_stacks(const struct cpu_task_state *st) {
  if (st->kstack == KMON_CPU_STACK_COLLIDED || st->ustack == KMON_CPU_STACK_COLLIDED)
    count_cpu_lost(KMON_CPU_LOST_STACK_COLLISION);
  if (st->kstack == KMON_CPU_STACK_NO_ROOM || st->ustack == KMON_CPU_STACK_NO_ROOM)
    kmon_count_lost(KMON_LOST_MAP_FULL);
}

static __always_inline void stack_add(struct task_struct *t, const struct cpu_task_state *st,
                                      __u64 ns) {
  /* The process's start time tells a reused PID from the process that had it. */
  struct task_struct *leader = t->group_leader;
  struct offcpu_stack_key key = {.cgroup_id = st->cgroup_id,
                                 .start_ns = leader->start_boottime,
                                 .tgid = st->tgid,
                                 .kstack = st->kstack,
                                 .ustack = st->ustack};
  bpf_probe_read_kernel(key.comm, sizeof(key.comm), leader->comm);
  static const struct offcpu_stack_value zero;
  struct offcpu_stack_value *v = kmon_lookup_or_init(&offcpu_stacks, &key, &zero);
  if (!v) return;
  __sync_fetch_and_add(&v->ns, ns);
  __sync_fetch_and_add(&v->count, 1);
  count_lost_stacks(st);
}

static __always_inline __u32 blocked_kind(unsigned int state) {
  if (state & KMON_TASK_INTERRUPTIBLE) return KMON_CPU_KIND_SLEEP;
  /* TASK_IDLE (UNINTERRUPTIBLE|NOLOAD) is an idle kernel worker waiting for work:
   * the kernel keeps it out of the load average, and so is it kept out of io. */
  if (state & KMON_TASK_UNINTERRUPTIBLE)
    return (state & KMON_TASK_NOLOAD) ? KMON_CPU_KIND_SLEEP : KMON_CPU_KIND_IO;
  return KMON_CPU_KIND_OTHER;
}

static __always_inline struct cpu_task_state *state_of(struct task_struct *t) {
  return bpf_task_storage_get(&task_state, t, 0, 0);
}

static __always_inline void switch_out(void *ctx, struct task_struct *prev, bool preempt,
                                       unsigned int prev_state, __u64 now,
                                       const struct cpu_config *cfg) {
  __u64 cgroup_id = kmon_task_cgroup_id(prev);
  if (!kmon_cgroup_watched(cgroup_id)) {
    /* Not (or no longer) watched: a stale state must never yield an episode, so it
     * is marked as seen for the first time (cheaper than deleting it here). */
    struct cpu_task_state *old = state_of(prev);
    if (old) {
      old->oncpu_ts = 0;
      old->offcpu_ts = 0;
    }
    return;
  }
  bool voluntary = !preempt && prev_state != KMON_TASK_RUNNING;
  /* The thread's last switch (TASK_DEAD): it never comes back, and its storage goes
   * with it; no state is made for it. */
  bool dead = prev_state & KMON_TASK_DEAD;
  struct cpu_task_state *st =
      bpf_task_storage_get(&task_state, prev, 0, dead ? 0 : BPF_LOCAL_STORAGE_GET_F_CREATE);

  __u64 ran = st && st->oncpu_ts && now > st->oncpu_ts ? now - st->oncpu_ts : 0;
  counters_add(cfg, cgroup_id, ran, voluntary ? 1 : 0, voluntary ? 0 : 1);
  if (dead) return;
  if (!st) {
    /* No memory for the storage (or the storage is busy on this CPU). */
    kmon_count_lost(KMON_LOST_MAP_FULL);
    return;
  }
  st->cgroup_id = cgroup_id;
  st->oncpu_ts = 0;
  st->offcpu_ts = now;
  st->wakeup_ts = 0;
  st->kstack = KMON_CPU_NO_STACK;
  st->ustack = KMON_CPU_NO_STACK;
  if (!voluntary) {
    /* Preempted (or asked to stay runnable): it waits on the run queue from now. */
    st->kind = KMON_CPU_KIND_RUNQ;
    return;
  }
  st->kind = blocked_kind(prev_state);
  if (sched_info) st->run_delay = prev->sched_info.run_delay;
  if (!cfg->stacks) return;
  st->tgid = prev->tgid;
  st->gen = cfg->gen;
  st->kstack = stack_id_or_lost(bpf_get_stackid(ctx, &stacks, 0));
  st->ustack = stack_id_or_lost(bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK));
}

/* First sight of a running thread (or its first since it was unwatched): its state
 * starts with its on-CPU clock at `now`. */
static __always_inline void start_oncpu(struct task_struct *t, struct cpu_task_state *st,
                                        __u64 cgroup_id, __u64 now) {
  if (!st) st = bpf_task_storage_get(&task_state, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
  if (!st) {
    kmon_count_lost(KMON_LOST_MAP_FULL);
    return;
  }
  st->oncpu_ts = now;
  st->offcpu_ts = 0;
  st->wakeup_ts = 0;
  st->cgroup_id = cgroup_id;
  st->kstack = KMON_CPU_NO_STACK;
  st->ustack = KMON_CPU_NO_STACK;
}

/* A state with neither clock running: made but never switched out watched, or
 * marked when its thread left unwatched. */
static __always_inline bool fresh(const struct cpu_task_state *st) {
  return !st || (!st->oncpu_ts && !st->offcpu_ts);
}

/* How long `t`, blocked since `st` was written, has been runnable and waiting, from the
 * kernel's accounting (see `sched_info`). */
static __always_inline __u64 sched_info_wait(struct task_struct *t,
                                             const struct cpu_task_state *st, __u64 now) {
  __u64 delay = t->sched_info.run_delay;
  __u64 wait = delay > st->run_delay ? delay - st->run_delay : 0;
  __u64 queued = t->sched_info.last_queued;
  /* sched_info is set only where rq_clock is (collectors/cpu.cc), so `now` is the
   * run queue's clock, the one last_queued was read from. */
  if (queued && now > queued) wait += now - queued;
  return wait;
}

static __always_inline void switch_in(struct task_struct *next, __u64 now,
                                      const struct cpu_config *cfg) {
  struct cpu_task_state *st = state_of(next);
  if (fresh(st)) {
    /* First sight of this thread (or it is not watched): start its on-CPU clock. */
    __u64 cgroup_id = kmon_task_cgroup_id(next);
    if (!kmon_cgroup_watched(cgroup_id)) return;
    start_oncpu(next, st, cgroup_id, now);
    return;
  }
  __u64 off_ts = st->offcpu_ts;
  if (off_ts && now >= off_ts) {
    __u64 cgroup_id = st->cgroup_id;
    if (st->kind == KMON_CPU_KIND_RUNQ) {
      hist_add(cfg, cgroup_id, KMON_CPU_KIND_RUNQ, now - off_ts);
    } else {
      __u64 blocked = now - off_ts;
      if (sched_info) {
        /* The two clocks tick alike; a wait longer than the episode is the rest. */
        __u64 wait = sched_info_wait(next, st, now);
        if (wait > blocked) wait = blocked;
        hist_add(cfg, cgroup_id, KMON_CPU_KIND_RUNQ, wait);
        blocked -= wait;
      } else {
        __u64 woke = st->wakeup_ts;
        if (woke >= off_ts && woke <= now) {
          hist_add(cfg, cgroup_id, KMON_CPU_KIND_RUNQ, now - woke);
          blocked = woke - off_ts;
        }
      }
      if (blocked >= cfg->offcpu_min_ns) {
        __u32 kind = st->kind;
        if (kind >= KMON_CPU_KIND_MAX) kind = KMON_CPU_KIND_OTHER;
        hist_add(cfg, cgroup_id, kind, blocked);
        /* Only stacks of this generation: the map may have been emptied since. */
        if (cfg->stacks && st->gen == cfg->gen &&
            (st->kstack != KMON_CPU_NO_STACK || st->ustack != KMON_CPU_NO_STACK)) {
          stack_add(next, st, blocked);
        }
      }
    }
  }
  st->oncpu_ts = now;
  st->offcpu_ts = 0;
  st->wakeup_ts = 0;
}

/* prev_state is an argument of the tracepoint since Linux 5.18 (commit fa2c3254d7cf,
 * "sched/tracing: Don't re-read p->state when emitting sched_switch event"); reading
 * prev->__state instead would race with a wakeup. User space checks the argument
 * count in the kernel's BTF before loading (collectors/cpu.cc) and says so. */
SEC("tp_btf/sched_switch")
int BPF_PROG(kmon_cpu_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
             unsigned int prev_state) {
  __u32 zero = 0;
  const struct cpu_config *cfg = bpf_map_lookup_elem(&cpu_config, &zero);
  if (!cfg) return 0;
  /* prev is the task this CPU runs until now (the idle task included): its run
   * queue is this CPU's. */
  __u64 now = now_on(prev);
  /* pid 0 is the idle task of each CPU: neither its "running" nor its leaving counts. */
  if (prev->pid != 0) switch_out(ctx, prev, preempt, prev_state, now, cfg);
  if (next->pid != 0) switch_in(next, now, cfg);
  return 0;
}

/* A blocked thread became runnable: its off-CPU episode ends, its run-queue wait begins. */
static __always_inline void woken(struct task_struct *p) {
  struct cpu_task_state *st = state_of(p);
  if (!st || !st->offcpu_ts || st->wakeup_ts || st->kind == KMON_CPU_KIND_RUNQ) return;
  st->wakeup_ts = now_on(p);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(kmon_cpu_wakeup, struct task_struct *p) {
  woken(p);
  return 0;
}

/* A new thread is runnable for the first time: its run-queue wait starts now. */
SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(kmon_cpu_forked, struct task_struct *p) {
  __u64 cgroup_id = kmon_task_cgroup_id(p);
  if (!kmon_cgroup_watched(cgroup_id)) return 0;
  struct cpu_task_state *st =
      bpf_task_storage_get(&task_state, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
  if (!st) {
    kmon_count_lost(KMON_LOST_MAP_FULL);
    return 0;
  }
  st->oncpu_ts = 0;
  st->offcpu_ts = now_on(p);
  st->wakeup_ts = 0;
  st->cgroup_id = cgroup_id;
  st->kstack = KMON_CPU_NO_STACK;
  st->ustack = KMON_CPU_NO_STACK;
  st->tgid = p->tgid;
  st->kind = KMON_CPU_KIND_RUNQ;
  return 0;
}

/* Run by user space on each CPU in turn (never attached; see the top of the file):
 * the thread on this CPU has run since st->oncpu_ts; that much is added now and its
 * slice restarts, so switch-out adds only the rest. It runs in the IPI with
 * interrupts off (or, on the calling CPU, with preemption off), so sched_switch
 * cannot run on this CPU meanwhile, and the per-CPU counters and this thread's
 * state are this CPU's alone. A thread already running when the collector attached
 * has no state yet: its time counts from its first flush. */
SEC("raw_tp")
int kmon_cpu_flush(void *ctx) {
  cache_writeback_all();
  struct task_struct *cur = bpf_get_current_task_btf();
  if (cur->pid == 0) return 0; /* idle */
  __u64 cgroup_id = kmon_task_cgroup_id(cur);
  if (!kmon_cgroup_watched(cgroup_id)) return 0;
  __u64 now = now_on(cur);
  struct cpu_task_state *st = state_of(cur);
  if (fresh(st)) {
    start_oncpu(cur, st, cgroup_id, now);
    return 0;
  }
  if (!st->oncpu_ts) {
    /* Running, yet its state says off CPU: its switch-in came before the attach. */
    st->oncpu_ts = now;
    st->offcpu_ts = 0;
    st->wakeup_ts = 0;
    return 0;
  }
  if (now <= st->oncpu_ts) return 0;
  struct cpu_counters *c = counters_of(cgroup_id);
  if (!c) return 0;
  c->oncpu_ns += now - st->oncpu_ts;
  st->oncpu_ts = now;
  return 0;
}

/* Run by user space through an iterator fd before it sweeps the stack map: the stack
 * ids of every thread off CPU now (two __s32 each), which the sweep must keep. */
SEC("iter/task")
int kmon_cpu_held(struct bpf_iter__task *ctx) {
  struct task_struct *task = ctx->task;
  if (!task) return 0;
  struct cpu_task_state *st = bpf_task_storage_get(&task_state, task, 0, 0);
  if (!st || !st->offcpu_ts) return 0;
  __s32 ids[2] = {st->kstack, st->ustack};
  bpf_seq_write(ctx->meta->seq, ids, sizeof(ids));
  return 0;
}
