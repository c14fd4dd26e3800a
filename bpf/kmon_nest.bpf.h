/* Programs of one object that may interrupt each other on a CPU.
 *
 * BPF programs run with interrupts on, and a softirq can run on the way out of any
 * interrupt: a program in a task's context (a send or receive) can be interrupted
 * by one of the same object in a softirq (a state change, a reset). Per-CPU values
 * are added to with plain loads and stores, so two such programs adding to one
 * value interleave and one update is lost (for an active gauge: off by one for
 * good). Each program runs its body through KMON_RUN_NESTABLE, which keeps this
 * CPU's depth; kmon_nested() says whether the running one interrupted another, and
 * it then adds under keys of its own that the interrupted one never touches.
 * Programs in softirq are not interrupted by others of the object (none is on a
 * hardirq hook), so two levels are all there are.
 *
 * Its own header rather than kmon_common.bpf.h: only objects whose hooks run in
 * both contexts need it. */
#ifndef KMON_BPF_KMON_NEST_BPF_H_
#define KMON_BPF_KMON_NEST_BPF_H_

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "bpf/kmon_common.bpf.h"

/* This CPU's depth in the object's programs: 1 inside one, 2 inside one that
 * interrupted another. */
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, __u32) nest_depth SEC(".maps");

static __always_inline __u32 *kmon_depth_of(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&nest_depth, &zero);
}

/* Whether the running program interrupted another of this object on this CPU. */
static __always_inline bool kmon_nested(void) {
  __u32 *d = kmon_depth_of();
  return d && *(volatile __u32 *)d > 1;
}

/* Runs a program's body one level deeper; evaluates to 0. A program interrupted
 * between its load and its store of the depth has added nothing yet, so the one
 * interrupting it may count as the outer one. */
#define KMON_RUN_NESTABLE(call)                            \
  ({                                                       \
    __u32 *depth_ = kmon_depth_of();                       \
    __u32 was_ = depth_ ? *(volatile __u32 *)depth_ : 0;   \
    if (depth_) *(volatile __u32 *)depth_ = was_ + 1;      \
    KMON_BARRIER();                                        \
    call;                                                  \
    KMON_BARRIER();                                        \
    if (depth_) *(volatile __u32 *)depth_ = was_;          \
    0;                                                     \
  })

#endif /* KMON_BPF_KMON_NEST_BPF_H_ */
