/* Shared between bpf/blockio.bpf.c and collectors/blockio.cc. */
#ifndef KMON_BPF_BLOCKIO_H_
#define KMON_BPF_BLOCKIO_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "bpf/kmon_common.h"

/* Requests between submission and completion the kernel side can follow at once:
 * slots of the `inflight` table, in sets of KMON_BLK_INFLIGHT_WAYS (struct
 * blk_inflight_set). A request's set is a hash of its address, so how full the
 * fullest set is follows the balls-into-bins law: ~6000 requests in flight (of
 * 65536 slots) before one of the 8192 sets overflows. */
#define KMON_BLK_INFLIGHT_WAYS 8
#define KMON_BLK_INFLIGHT_SET_BITS 13
#define KMON_BLK_INFLIGHT_SETS (1U << KMON_BLK_INFLIGHT_SET_BITS)
#define KMON_BLK_INFLIGHT_MAX (KMON_BLK_INFLIGHT_SETS * KMON_BLK_INFLIGHT_WAYS)
/* (cgroup, device, op) tuples of the byte/request counters (no-prealloc: memory
 * for the tuples seen, not for this many). */
#define KMON_BLK_COUNTS_MAX 16384
/* (device, op) pairs of the latency histogram (no-prealloc too). */
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

/* One request in flight, from its first hook (block_io_start, else block_rq_issue)
 * to its completion or merge: the one piece of state a request costs. */
struct blk_inflight {
  __u64 cgroup_id; /* submitter's cgroup v2 id; 0: unknown (node level) */
  __u64 issue_ns;  /* bpf_ktime_get_ns() at issue to the driver; 0: not issued yet */
  __u32 counted;   /* 1: counted per workload (watched: decided at the first hook) */
  __u32 pad;
};

/* Value of the `inflight` array: a set of slots, found by a hash of the request's
 * address (kmon_blk_inflight_set). Slot i belongs to the request whose address is
 * rq[i] (0: free); the addresses share one cache line, scanned by every hook. A
 * request takes a free slot with a compare-and-swap of rq[i] and frees it the same
 * way: an array lookup, which the verifier inlines, and no lock, where a hash map
 * costs an insert, lookups and a delete with their bucket locks (and an LRU's list
 * locks besides). */
struct blk_inflight_set {
  __u64 rq[KMON_BLK_INFLIGHT_WAYS];
  struct blk_inflight req[KMON_BLK_INFLIGHT_WAYS];
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

/* A per-CPU write-back cache in front of `io_counts` and `io_latency` (the one
 * entry of the per-CPU array `blk_cache`): a completion whose (cgroup, disk, op)
 * this CPU completed recently adds to its way with plain adds, where it would cost
 * two hash lookups. A way is written back when another key takes it, and by
 * `kmon_blk_flush`, which user space runs on every CPU before it reads the maps. */
#define KMON_BLK_CACHE_WAYS 8
struct blk_cached {
  /* cgroup_id is 0 when the way's requests are not counted per workload (`counted`
   * 0: latency only); dev 0: the way is empty. */
  struct blk_count_key key;
  __u32 counted;     /* 1: bytes/requests go to io_counts under `key` */
  __u32 has_latency; /* 1: io_latency has the (dev, op) entry: latency may wait here */
  __u64 generation;  /* blk_config.generation when the way was given its key */
  struct blk_count_value count;
  struct blk_latency_value latency;
};

struct blk_cache {
  /* 1 while this CPU's completion program uses the cache: the flush arrives in an
   * IPI, which can interrupt it between a load and its store; it then leaves the
   * CPU alone and asks to be run again. */
  __u64 busy;
  struct blk_cached ways[KMON_BLK_CACHE_WAYS];
};

/* Value of the one-entry `blk_config` control map. Rewritten on reload. */
struct blk_config {
  /* 0: every device; 1: only devices present in the `devices` map. */
  __u32 filter_devices;
  /* 1: completions count through `blk_cache` (user space flushes it before every
   * read); 0: straight into the maps. */
  __u32 cache;
  /* Goes up when user space has deleted keys of the data maps (a gone cgroup, a
   * gone or no longer selected disk): a way given its key in an earlier generation
   * is written back (what of it still has a key) and given its key again, through
   * the maps, which makes the key's entry anew. */
  __u64 generation;
};

/* The set of the `inflight` table a request's address belongs to: the address
 * without its always-zero cache-line bits, through murmur3's 64-bit finalizer (its
 * top bits). The kernel's request structs lie at even strides in their tag sets,
 * which a lone multiply spreads unevenly for some strides. */
KMON_INLINE __u32 kmon_blk_inflight_set(__u64 rq) {
  __u64 x = rq >> 6;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return (__u32)(x >> (64 - KMON_BLK_INFLIGHT_SET_BITS));
}

/* The histogram slot of a latency: the smallest i with ns <= 1000 * 2^i (the same
 * as kmon_log2_us_slot(ns, KMON_BLK_LAT_BOUNDS), which the tests check), without its
 * 64-bit division, which costs more than the rest of the completion hook's
 * arithmetic. With k = ceil(log2(ns)), 2^(k-1) < ns <= 2^k = 1024 * 2^(k-10), so
 * i is k - 10 or, where 1000 * 2^(k-10) falls short of ns, k - 9. */
KMON_INLINE __u32 kmon_blk_latency_slot(__u64 ns) {
  if (ns <= 1000) return 0;
  __u32 i = kmon_log2(ns - 1) + 1 - 10; /* ns > 1000: k >= 10 */
  if ((1000ULL << i) < ns) i += 1;
  return i < KMON_BLK_LAT_BOUNDS ? i : KMON_BLK_LAT_BOUNDS;
}

#ifdef __cplusplus
static_assert(sizeof(struct blk_inflight) == 24, "BPF ABI");
static_assert(sizeof(struct blk_inflight_set) == 8 * 8 + 8 * 24, "BPF ABI");
static_assert(sizeof(struct blk_count_key) == 16, "BPF ABI");
static_assert(sizeof(struct blk_count_value) == 16, "BPF ABI");
static_assert(sizeof(struct blk_latency_key) == 8, "BPF ABI");
static_assert(sizeof(struct blk_latency_value) == (KMON_BLK_LAT_SLOTS + 2) * 8, "BPF ABI");
static_assert(sizeof(struct blk_config) == 16, "BPF ABI");
static_assert(sizeof(struct blk_cached) == 16 + 16 + 16 + sizeof(struct blk_latency_value),
              "BPF ABI");
static_assert(sizeof(struct blk_cache) == 8 + KMON_BLK_CACHE_WAYS * sizeof(struct blk_cached),
              "BPF ABI");
#endif

#endif /* KMON_BPF_BLOCKIO_H_ */
