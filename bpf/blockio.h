/* Shared between bpf/blockio.bpf.c and collectors/blockio.cc. */
#ifndef KMON_BPF_BLOCKIO_H_
#define KMON_BPF_BLOCKIO_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "bpf/kmon_common.h"

/* Requests between submission and completion the kernel side can follow at once
 * (an LRU: a request whose completion was never seen cannot fill it for good). */
#define KMON_BLK_INFLIGHT_MAX 65536
/* (cgroup, device, op) tuples of the byte/request counters. */
#define KMON_BLK_COUNTS_MAX 16384
/* (device, op) pairs of the latency histogram. */
#define KMON_BLK_LATENCY_MAX 1024
/* Devices the `devices` control map can list. */
#define KMON_BLK_DEVICES_MAX 256

/* Latency histogram: slot i (0 <= i < KMON_BLK_LAT_BOUNDS) counts requests that took
 * at most 2^i microseconds (and more than 2^(i-1)): bounds 1us, 2us, 4us, ... 2^25us
 * (33.6 s). The last slot is +Inf. Log2 slots cost a few shifts in the kernel and
 * cover NVMe (tens of us) to a stalled disk (seconds) with 27 numbers. */
#define KMON_BLK_LAT_BOUNDS 26
#define KMON_BLK_LAT_SLOTS (KMON_BLK_LAT_BOUNDS + 1)

/* The kernel's dev_t (MKDEV in include/linux/kdev_t.h: 12 bits major, 20 minor),
 * not glibc's. */
#define KMON_KDEV_MINORBITS 20
#define KMON_KDEV_MAJOR(dev) ((__u32)(dev) >> KMON_KDEV_MINORBITS)
#define KMON_KDEV_MINOR(dev) ((__u32)(dev) & ((1U << KMON_KDEV_MINORBITS) - 1))
#define KMON_KDEV(major, minor) (((__u32)(major) << KMON_KDEV_MINORBITS) | (__u32)(minor))

/* Operation of a request, from cmd_flags & REQ_OP_MASK. */
enum kmon_blk_op {
  KMON_BLK_OP_READ = 0,
  KMON_BLK_OP_WRITE = 1,
  KMON_BLK_OP_FLUSH = 2,
  KMON_BLK_OP_DISCARD = 3,
  KMON_BLK_OP_OTHER = 4, /* write-zeroes, secure erase, zone and driver-private ops */
  KMON_BLK_OP_MAX = 5,
};

/* Value of the in-flight map, keyed by the request's address. */
struct blk_inflight {
  __u64 cgroup_id; /* submitter's cgroup v2 id; 0: unknown (node level) */
  __u64 issue_ns;  /* bpf_ktime_get_ns() at issue to the driver; 0: not issued yet */
};

struct blk_count_key {
  __u64 cgroup_id;
  __u32 dev; /* kernel dev_t of the whole disk */
  __u32 op;  /* enum kmon_blk_op */
};

/* Per-CPU, cumulative. */
struct blk_count_value {
  __u64 bytes;
  __u64 requests;
};

struct blk_latency_key {
  __u32 dev;
  __u32 op;
};

/* Per-CPU, cumulative. */
struct blk_latency_value {
  __u64 slots[KMON_BLK_LAT_SLOTS];
  __u64 sum_ns;
  __u64 errors; /* completions with a non-zero blk_status_t */
};

/* Value of the one-entry `blk_config` control map. Rewritten on reload. */
struct blk_config {
  /* 0: every device; 1: only devices present in the `devices` map. */
  __u32 filter_devices;
  __u32 pad;
};

/* The histogram slot of a latency (kmon_common.h). */
KMON_INLINE __u32 kmon_blk_latency_slot(__u64 ns) {
  return kmon_log2_us_slot(ns, KMON_BLK_LAT_BOUNDS);
}

#ifdef __cplusplus
static_assert(sizeof(struct blk_inflight) == 16, "BPF ABI");
static_assert(sizeof(struct blk_count_key) == 16, "BPF ABI");
static_assert(sizeof(struct blk_count_value) == 16, "BPF ABI");
static_assert(sizeof(struct blk_latency_key) == 8, "BPF ABI");
static_assert(sizeof(struct blk_latency_value) == (KMON_BLK_LAT_SLOTS + 2) * 8, "BPF ABI");
static_assert(sizeof(struct blk_config) == 8, "BPF ABI");
#endif

#endif /* KMON_BPF_BLOCKIO_H_ */
