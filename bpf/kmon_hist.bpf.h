/* Histograms with configured bucket bounds, for the collectors that measure a
 * latency into bounds from their control map (tcp, dns).
 *
 * Its own header rather than kmon_common.bpf.h: most objects keep log2 buckets or
 * no histogram at all. */
#ifndef KMON_BPF_KMON_HIST_BPF_H_
#define KMON_BPF_KMON_HIST_BPF_H_

#include "vmlinux.h"

/* The slot `value` falls in among `n` ascending upper bounds (at most `max`, a
 * constant, the room of `bounds`): the first i with value <= bounds[i], or n (+Inf)
 * when it is above them all. A binary search, 6 steps for 32 bounds: a linear one
 * costs a load and a branch per bound below the value, on every request. */
static __always_inline __u32 kmon_hist_slot(const __u64 *bounds, __u32 n, const __u32 max,
                                            __u64 value) {
  __u32 lo = 0, hi = n < max ? n : max;
  /* log2(max) + 1 steps close any range of max + 1 slots. */
  for (int step = 0; step < 7; step++) {
    if (lo >= hi) break;
    __u32 mid = (lo + hi) >> 1;
    if (mid >= max) break; /* never: mid < hi <= max; for the verifier */
    if (value <= bounds[mid]) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

#endif /* KMON_BPF_KMON_HIST_BPF_H_ */
