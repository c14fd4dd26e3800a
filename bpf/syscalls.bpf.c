// SPDX-License-Identifier: GPL-2.0
/* Counts chosen syscalls and their failures per cgroup.
 *
 * One hook sees everything: sys_exit carries the syscall number (in pt_regs) and
 * the return value, so one program run per syscall gives both count and error.
 * tp_btf is used rather than the classic raw_syscalls tracepoint: it skips the
 * perf buffer setup of classic tracepoints, which is most of their cost.
 *
 * Control maps: `syscall_set` (which numbers to count) and the common
 * `filter_config`/`watched_cgroups`. Data map: `counts` (per-CPU, cumulative). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/kmon_common.bpf.h"
#include "bpf/syscalls.h"

char LICENSE[] SEC("license") = "GPL";

/* syscall number -> 1 when counted. An array so the verifier inlines the lookup. */
KMON_MAP(BPF_MAP_TYPE_ARRAY, KMON_MAX_SYSCALL_NR, __u32, __u8) syscall_set SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_SYSCALL_COUNTS_MAX, struct syscall_key,
         struct syscall_value) counts SEC(".maps");

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
  __u32 idx = (__u32)nr;
  __u8 *on = bpf_map_lookup_elem(&syscall_set, &idx);
  if (!on || !*on) return 0;

  __u64 cgroup_id = bpf_get_current_cgroup_id();
  if (!kmon_cgroup_watched(cgroup_id)) return 0;

  /* Errors are returned as -4095..-1; larger "negative" values (mmap addresses) are not. */
  __u64 failed = ret < 0 && ret >= -4095;
  struct syscall_key key = {.cgroup_id = cgroup_id, .nr = idx};
  static const struct syscall_value zero;
  struct syscall_value *v = kmon_lookup_or_init(&counts, &key, &zero);
  if (!v) return 0;
  v->count += 1;
  v->errors += failed;
  return 0;
}
