/* Shared between bpf/syscalls.bpf.c and collectors/syscalls.cc. */
#ifndef KMON_BPF_SYSCALLS_H_
#define KMON_BPF_SYSCALLS_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Syscall numbers at or above this are never counted (x86-64 has ~470). */
#define KMON_MAX_SYSCALL_NR 1024
/* (cgroup, syscall) pairs the data map can hold. */
#define KMON_SYSCALL_COUNTS_MAX 16384

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
