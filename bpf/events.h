/* Shared between bpf/events.bpf.c and collectors/events.cc. */
#ifndef KMON_BPF_EVENTS_H_
#define KMON_BPF_EVENTS_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Tracepoints and functions one config may name, together. */
#define KMON_EVENTS_MAX 64
/* Event numbers (the BPF cookie, or a per-event copy's rodata): every configured
 * event has one, and a removed event keeps its number (and its counters) while
 * there is room, so that adding it again continues its counters. */
#define KMON_EVENT_SLOTS 128
/* (cgroup, event) pairs the data map can hold. */
#define KMON_EVENT_COUNTS_MAX 16384

struct event_key {
  __u64 cgroup_id;
  __u32 event; /* event number, < KMON_EVENT_SLOTS */
  __u32 pad;
};

/* Per-CPU, cumulative: user space sums CPUs and never resets. */
struct event_value {
  __u64 count;
};

#ifdef __cplusplus
static_assert(sizeof(struct event_key) == 16, "BPF ABI");
static_assert(sizeof(struct event_value) == 8, "BPF ABI");
#endif

#endif /* KMON_BPF_EVENTS_H_ */
