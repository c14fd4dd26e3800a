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
#endif

#endif /* KMON_BPF_KMON_COMMON_H_ */
