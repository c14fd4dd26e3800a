/* Shared between bpf/cpu.bpf.c and collectors/cpu.cc, collectors/offcpu/offcpu_profiler.cc. */
#ifndef KMON_BPF_CPU_H_
#define KMON_BPF_CPU_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "bpf/kmon_common.h"

/* Cgroups with counters (a node with 250 pods of 3 containers has ~1000 cgroups).
 * The per-CPU counters are not preallocated: a cgroup's entry (24 bytes per
 * possible CPU) exists once it has run. Histograms get one entry per (cgroup, kind)
 * seen; a cgroup has two on average (run queue, sleep; io and other are rarer), and
 * they stay preallocated (see bpf/cpu.bpf.c): 8192 x ~300 bytes = 2.4 MiB, whatever
 * the number of CPUs. The per-thread state is task-local storage: no entries to size. */
#define KMON_CPU_CGROUPS_MAX 4096
#define KMON_CPU_HISTS_MAX (2 * KMON_CPU_CGROUPS_MAX)
/* Distinct stacks the stack-trace map holds, and frames kept per stack (the innermost
 * ones: a deeper stack loses its outermost frames).
 *
 * A stack-trace map is always preallocated: 16384 x (64 x 8 + 16) bytes = 8.3 MiB of
 * kernel memory with `stacks: always`; with `on_demand` (and `off`) the collector sizes
 * it to KMON_CPU_STACKS_ON_DEMAND at load (4.2 MiB): it is emptied before each
 * profiling window and holds only that window's stacks. Its hash has one stack per
 * bucket (the stack id is the bucket, and there are as many buckets as entries), so
 * a new stack whose bucket holds another is refused with -EEXIST: with n stacks
 * held, a new one collides with probability n/16384, and n distinct stacks in a row
 * collide about n^2/32768 times. So the entries are many and small rather than few
 * and deep (8192 x 127 frames took the
 * same memory and collided twice as often): 64 frames hold a sched_switch kernel stack
 * whole and the user frames that matter, the innermost. User space keeps n small: ids
 * nothing refers to any more are deleted once the map is a quarter full and whenever
 * recorded episodes lost their stack to a collision (offcpu_profiler.cc), and each such
 * loss is counted as kmon_events_lost_total{reason="stack_collision"}.
 * BPF_F_REUSE_STACKID would avoid collisions by overwriting, which would name an
 * aggregate's time after a stack it never had. */
#define KMON_CPU_STACKS_MAX 16384
#define KMON_CPU_STACKS_ON_DEMAND 8192
#define KMON_CPU_STACK_DEPTH 64
/* (cgroup, process, kernel stack, user stack) aggregates of off-CPU time; not
 * preallocated (an entry exists once an episode was recorded with stacks on). */
#define KMON_CPU_OFFCPU_STACKS_MAX 16384
#define KMON_CPU_COMM_LEN 16

/* Histogram buckets: upper bounds 2^i microseconds for i = 0..26 (1 us .. 67.1 s),
 * then +Inf. Fixed, so a heatmap over the buckets is stable across kmon versions. */
#define KMON_CPU_HIST_BOUNDS 27
#define KMON_CPU_HIST_SLOTS (KMON_CPU_HIST_BOUNDS + 1)

/* Task states as the scheduler passes them in sched_switch's prev_state
 * (include/linux/sched.h; stable since 5.14 renamed state to __state). */
#define KMON_TASK_RUNNING 0x0000
#define KMON_TASK_INTERRUPTIBLE 0x0001
#define KMON_TASK_UNINTERRUPTIBLE 0x0002
#define KMON_TASK_DEAD 0x0080
#define KMON_TASK_NOLOAD 0x0400

/* What a histogram measures; also the kind of a task's current off-CPU episode. */
enum kmon_cpu_kind {
  KMON_CPU_KIND_RUNQ = 0,  /* runnable, waiting for a CPU (preempted or woken) */
  KMON_CPU_KIND_SLEEP = 1, /* blocked in TASK_INTERRUPTIBLE (or TASK_IDLE) */
  KMON_CPU_KIND_IO = 2,    /* blocked in TASK_UNINTERRUPTIBLE */
  KMON_CPU_KIND_OTHER = 3, /* stopped, traced, parked, frozen, ... */
  KMON_CPU_KIND_MAX = 4,
};

/* A stack id slot with no stack (stacks off, kernel thread without user stack). */
#define KMON_CPU_NO_STACK (-1)
/* A stack that was there but could not be stored: its bucket held another stack
 * (a collision), or the map had no free element. Its time is shown under
 * "[stack lost]" rather than as a stack without user frames, and the loss is counted
 * when the episode is recorded (episodes shorter than offcpu_min lose nothing). */
#define KMON_CPU_STACK_COLLIDED (-2)
#define KMON_CPU_STACK_NO_ROOM (-3)

/* Keys of the cpu object's own per-CPU `cpu_lost` array (reasons beyond the common
 * `lost` array's map_full). */
enum kmon_cpu_lost_reason {
  /* A recorded episode's stack was refused: bpf_get_stackid's -EEXIST, its bucket
   * held another stack. */
  KMON_CPU_LOST_STACK_COLLISION = 0,
  KMON_CPU_LOST_MAX = 1,
};

/* Value of the one-entry `cpu_config` control map. Rewritten on reload, and by
 * /debug/offcpu with `stacks: on_demand` (stacks on for the profiling window). */
struct cpu_config {
  __u64 offcpu_min_ns; /* shorter off-CPU episodes are not recorded */
  __u32 stacks;        /* 1: capture stacks at switch-out, aggregate at switch-in */
  /* The stack generation: a stack taken under another generation (before the stack
   * map was emptied for a new window) is never aggregated. */
  __u32 gen;
  /* 1: counts go through `cpu_cache` (user space runs kmon_cpu_flush on every CPU
   * before it reads); 0: straight into the maps (the flush cannot be run). */
  __u32 cache;
  __u32 pad;
};

/* Per-thread scheduling state, in task-local storage (freed with the task).
 * Kernel-internal; the `kmon_cpu_held` iterator reads the stack ids of threads off
 * CPU. */
struct cpu_task_state {
  __u64 oncpu_ts;  /* when it last went on a CPU; 0 while off */
  __u64 offcpu_ts; /* when it last left a CPU; 0 while on */
  union {
    /* kmon_cpu_wakeup's way: when it was woken after leaving; 0 until then */
    __u64 wakeup_ts;
    /* the kernel's way (cpu.bpf.c: sched_info): its run_delay when it left */
    __u64 run_delay;
  };
  __u64 cgroup_id; /* its cgroup when it last left (or was first seen) */
  __s32 kstack;    /* stack ids captured when it left, or KMON_CPU_NO_STACK */
  __s32 ustack;
  __u32 tgid;
  __u32 kind; /* enum kmon_cpu_kind of the episode since offcpu_ts */
  __u32 gen;  /* cpu_config.gen when the stacks were taken */
  __u32 pad;
};

/* Per-CPU, cumulative: counters of one cgroup. */
struct cpu_counters {
  __u64 oncpu_ns;
  __u64 voluntary;   /* switched out blocking (prev_state != TASK_RUNNING, not preempted) */
  __u64 involuntary; /* switched out while still runnable (preempted) */
};

struct cpu_hist_key {
  __u64 cgroup_id;
  __u32 kind; /* enum kmon_cpu_kind */
  __u32 pad;
};

/* Cumulative, shared by all CPUs: per-slot counts (not cumulative over slots) and
 * the sum. */
struct cpu_hist {
  __u64 slots[KMON_CPU_HIST_SLOTS];
  __u64 sum_ns;
};

/* A per-CPU write-back cache in front of `cg_counters` and `cg_hists` (one entry of
 * the per-CPU array `cpu_cache`), so that the switches of the few cgroups a CPU runs
 * add to this CPU's memory: no hash lookup, no atomic add on a line other CPUs
 * share. A way holds one cgroup's (or one (cgroup, kind)'s) counts not yet in the
 * maps; it is written back when another key takes the way, and by `kmon_cpu_flush`,
 * which user space runs on every CPU before it reads the maps. Kernel-internal:
 * user space never reads it. ~2.3 KiB per CPU. */
#define KMON_CPU_CACHE_WAYS 8
struct cpu_cached_counters {
  __u64 cgroup_id; /* 0: empty */
  __u64 oncpu_ns;
  __u64 voluntary;
  __u64 involuntary;
};
struct cpu_cached_hist {
  __u64 cgroup_id; /* 0: empty */
  __u32 kind;
  __u32 pending; /* episodes added since the last write-back */
  struct cpu_hist h;
};
struct cpu_cache {
  struct cpu_cached_counters counters[KMON_CPU_CACHE_WAYS];
  struct cpu_cached_hist hists[KMON_CPU_CACHE_WAYS];
};

/* `start_ns` is the process's start (its leader's task->start_boottime, ns since
 * boot), so a process that reuses an exited one's PID is a different key: user
 * space matches it with /proc/PID/stat field 22 (the same time in clock ticks). */
struct offcpu_stack_key {
  __u64 cgroup_id;
  __u64 start_ns;
  __u32 tgid;
  __s32 kstack;
  __s32 ustack;
  __u32 pad;
  char comm[KMON_CPU_COMM_LEN]; /* the process's name (its leader's comm) */
};

/* Cumulative, shared by all CPUs: off-CPU time (blocked, switch-out to wakeup) and
 * episodes. */
struct offcpu_stack_value {
  __u64 ns;
  __u64 count;
};

/* The histogram slot of a duration, as the BPF side files it (kmon_common.h). */
KMON_INLINE __u32 kmon_cpu_hist_slot(__u64 ns) {
  return kmon_log2_us_slot(ns, KMON_CPU_HIST_BOUNDS);
}

#ifdef __cplusplus
static_assert(sizeof(struct cpu_config) == 24, "BPF ABI");
static_assert(sizeof(struct cpu_cache) == KMON_CPU_CACHE_WAYS * (32 + 16 + sizeof(struct cpu_hist)),
              "BPF ABI");
static_assert(sizeof(struct cpu_task_state) == 56, "BPF ABI");
static_assert(sizeof(struct cpu_counters) == 24, "BPF ABI");
static_assert(sizeof(struct cpu_hist_key) == 16, "BPF ABI");
static_assert(sizeof(struct cpu_hist) == 8 * (KMON_CPU_HIST_SLOTS + 1), "BPF ABI");
static_assert(sizeof(struct offcpu_stack_key) == 48, "BPF ABI");
static_assert(sizeof(struct offcpu_stack_value) == 16, "BPF ABI");
#endif

#endif /* KMON_BPF_CPU_H_ */
