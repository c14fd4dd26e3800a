/* Shared between bpf/syscalls.bpf.c and collectors/syscalls.cc. */
#ifndef KMON_BPF_SYSCALLS_H_
#define KMON_BPF_SYSCALLS_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Syscall numbers at or above this are never counted (x86-64 has ~470). */
#define KMON_MAX_SYSCALL_NR 1024
/* (cgroup, syscall) pairs the data map can hold. The map is not preallocated
 * (BPF_F_NO_PREALLOC): it costs what it holds, not 16384 x 16 B x possible CPUs. */
#define KMON_SYSCALL_COUNTS_MAX 16384
/* fexit programs in the object, one per hooked syscall (kmon_sc_fx0..31). */
#define KMON_SYSCALL_FEXIT_SLOTS 32

/* Values of the `syscall_set` control map: which hook counts that number. Each
 * program counts only the numbers marked with its own hook, so a switch from fexit
 * to the tracepoint flips every number at once, atomically per slot. */
#define KMON_SYSCALL_OFF 0
#define KMON_SYSCALL_BY_TRACEPOINT 1
#define KMON_SYSCALL_BY_FEXIT 2

struct syscall_key {
  __u64 cgroup_id;
  __u32 nr;
  __u32 pad;
};

/* Per-CPU, cumulative: user space sums CPUs and never resets. */
struct syscall_value {
  __u64 count;
  __u64 errors;
};

/* A per-CPU write-back cache in front of `counts` (the one entry of the per-CPU
 * array `sc_cache`): a syscall of a (cgroup, number) the CPU counted recently adds
 * to this CPU's way, with no hash lookup. A way is written back to `counts` when
 * another key takes it, and by `kmon_sc_flush`, which user space runs on every CPU
 * before it reads `counts`. Only the sys_exit tracepoint uses it: its programs run
 * with preemption off, so no other program of it runs on the CPU mid-update, and the
 * flush's IPI waits for `busy` to clear; fexit programs can be preempted and count
 * straight into `counts`, atomically. 520 bytes per CPU. */
#define KMON_SYSCALL_CACHE_WAYS 16
struct syscall_cached {
  __u64 cgroup_id; /* 0: empty */
  __u32 nr;
  __u32 generation; /* syscall_config.generation when the way took its key */
  __u64 count;
  __u64 errors;
};
struct syscall_cache {
  /* 1 while this CPU's tracepoint program is counting: the flush arrives in an IPI,
   * which can interrupt it between a load and its store (of a way or of its
   * `counts` entry); it then leaves the CPU alone and asks to be run again. */
  __u64 busy;
  struct syscall_cached ways[KMON_SYSCALL_CACHE_WAYS];
};

/* Value of the one-entry `sc_config` control map. */
struct syscall_config {
  /* 1: the tracepoint counts through `sc_cache` (user space runs kmon_sc_flush on
   * every CPU before it reads); 0: straight into `counts`. */
  __u32 cache;
  /* Moved on by user space when it deleted keys from `counts` (a gone cgroup, a
   * syscall no longer chosen): a way of an earlier generation takes its key anew,
   * through `counts`. Without it, a syscall chosen again found its old key in a way
   * and was counted there, with no entry for the write-back to go to: never again. */
  __u32 generation;
};

#ifdef __cplusplus
static_assert(sizeof(struct syscall_cache) == 8 + 32 * KMON_SYSCALL_CACHE_WAYS, "BPF ABI");
static_assert(sizeof(struct syscall_config) == 8, "BPF ABI");
static_assert(sizeof(struct syscall_key) == 16, "BPF ABI");
static_assert(sizeof(struct syscall_value) == 16, "BPF ABI");
#endif

#endif /* KMON_BPF_SYSCALLS_H_ */
