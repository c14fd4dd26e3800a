// SPDX-License-Identifier: GPL-2.0
/* Counts the kernel events the user names (tracepoints, kernel functions) per
 * cgroup: Kmon's function counter, with no BPF code for the user to write.
 *
 * Every hook does the same: count one event for the current cgroup. What differs
 * is how a run knows *which* event it is counting:
 *
 * - kmon_ev_rawtp: one program attached to every raw tracepoint, each attachment
 *   with its event number as BPF cookie (raw tracepoint cookies: Linux 6.10).
 *   Cheapest: no perf buffer is filled before the program runs. It reads no
 *   tracepoint argument, so it attaches to tracepoints of any arity.
 * - kmon_ev_tp: the same through perf-event tracepoint links with a cookie (Linux
 *   5.15), for tracefs events that are not raw tracepoints (syscalls:sys_enter_*
 *   are made from raw_syscalls:sys_enter), and for every tracepoint on kernels
 *   without raw tracepoint cookies.
 * - kmon_ev1_*: one copy of this object per event, its number in `event_slot`
 *   (rodata, fixed at load) and its maps those of the first copy: fentry, whose
 *   target is fixed at load, and tracepoints on kernels without any cookie.
 *
 * Control maps: the common `filter_config`/`watched_cgroups`. Data map: `counts`
 * (per-CPU, cumulative). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "bpf/events.h"
#include "bpf/kmon_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_EVENT_COUNTS_MAX, struct event_key,
               struct event_value, BPF_F_NO_PREALLOC) counts SEC(".maps");

/* The event a per-event copy counts; set by user space before that copy loads. */
const volatile __u32 event_slot = 0;

static __always_inline int count_event(__u64 slot) {
  if (slot >= KMON_EVENT_SLOTS) return 0;
  __u64 cgroup_id = kmon_current_cgroup_id();
  if (!kmon_cgroup_watched(cgroup_id)) return 0;
  struct event_key key = {.cgroup_id = cgroup_id, .event = (__u32)slot};
  static const struct event_value zero;
  struct event_value *v = kmon_lookup_or_init(&counts, &key, &zero);
  if (!v) return 0;
  v->count += 1;
  return 0;
}

/* No target in the section names: user space attaches each event itself. */
SEC("raw_tp")
int kmon_ev_rawtp(void *ctx) { return count_event(bpf_get_attach_cookie(ctx)); }

SEC("tracepoint")
int kmon_ev_tp(void *ctx) { return count_event(bpf_get_attach_cookie(ctx)); }

SEC("raw_tp")
int kmon_ev1_rawtp(void *ctx) { return count_event(event_slot); }

SEC("tracepoint")
int kmon_ev1_tp(void *ctx) { return count_event(event_slot); }

/* The target is set with bpf_program__set_attach_target before the copy loads. */
SEC("fentry")
int kmon_ev1_fentry(void *ctx) { return count_event(event_slot); }
