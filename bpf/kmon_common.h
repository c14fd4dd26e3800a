/* Structs and constants shared by every BPF program and the C++ side. */
#ifndef KMON_BPF_KMON_COMMON_H_
#define KMON_BPF_KMON_COMMON_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Capacity of the watched-cgroups control map in every object. */
#define KMON_MAX_WATCHED_CGROUPS 16384

/* Keys of the per-CPU `lost` array: why an event could not be recorded. */
enum kmon_lost_reason {
  KMON_LOST_MAP_FULL = 0, /* a data map had no room for a new key */
  KMON_LOST_MAX = 1,
};

/* Value of the one-entry `filter_config` control map. Rewritten on reload. */
struct kmon_filter_config {
  /* 0: count every cgroup; 1: only cgroups present in `watched_cgroups`. */
  __u32 filter_cgroups;
  __u32 pad;
};

#ifdef __cplusplus
static_assert(sizeof(struct kmon_filter_config) == 8, "BPF ABI");
#define KMON_INLINE static inline
#else
#define KMON_INLINE static __always_inline
#endif

/* floor(log2(v)) for v >= 1, in straight code (BPF has no clz; the verifier likes
 * no loops). */
KMON_INLINE __u32 kmon_log2(__u64 v) {
  __u32 r = 0;
  if (v >> 32) { v >>= 32; r += 32; }
  if (v >> 16) { v >>= 16; r += 16; }
  if (v >> 8) { v >>= 8; r += 8; }
  if (v >> 4) { v >>= 4; r += 4; }
  if (v >> 2) { v >>= 2; r += 2; }
  if (v >> 1) r += 1;
  return r;
}

/* Slot of a duration in a histogram with `bounds` bounds le = 2^i microseconds
 * (i = 0 .. bounds-1) and a last +Inf slot `bounds`: the smallest i with
 * ns <= 1000 * 2^i. That holds exactly when ceil(ns / 1000) <= 2^i, so rounding up
 * to whole microseconds first keeps every value in the bucket its exact value
 * belongs to (Prometheus buckets are "less or equal"). Used by BPF and the tests. */
KMON_INLINE __u32 kmon_log2_us_slot(__u64 ns, __u32 bounds) {
  __u64 us = ns / 1000 + (ns % 1000 != 0); /* rounded up, without overflow */
  if (us <= 1) return 0;
  __u32 s = kmon_log2(us - 1) + 1; /* ceil(log2(us)) */
  return s < bounds ? s : bounds;
}

#endif /* KMON_BPF_KMON_COMMON_H_ */
