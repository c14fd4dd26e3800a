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

#ifdef __cplusplus
static_assert(sizeof(struct syscall_key) == 16, "BPF ABI");
static_assert(sizeof(struct syscall_value) == 16, "BPF ABI");
#endif

#endif /* KMON_BPF_SYSCALLS_H_ */
