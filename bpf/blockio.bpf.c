// SPDX-License-Identifier: GPL-2.0
/* Block I/O per device and op (latency from issue to completion, errors) and per
 * submitting cgroup (bytes, requests).
 *
 * A request is followed by its address through three block-layer tracepoints:
 *   block_io_start   (submitter's context) records the submitting cgroup and
 *                    whether it is watched: decided once, carried to completion;
 *   block_rq_issue   (handed to the driver) records the issue time;
 *   block_rq_complete (driver done, any context) counts and forgets the request.
 * block_rq_merge forgets a request merged into another (it never completes).
 * Kernels before v6.5 lack block_io_start (commit "block: introduce
 * block_io_start/block_io_done tracepoints"): user space then loads the
 * block_rq_insert twin. Insertion is skipped by requests issued directly
 * (scheduler "none", the NVMe default; plug flushes): block_rq_issue sees those
 * first, in the submitting task's own context, and charges them the same way.
 *
 * Cost: the state of a request is one slot of the `inflight` array (struct
 * blk_inflight_set): each hook finds it with one inlined array lookup and a scan of
 * eight slots, and no hook takes a lock. Requests of disks not selected leave no
 * slot; those of unwatched workloads are timed (the latency is per disk) but cost
 * no counter lookup. A completion adds to its CPU's write-back cache (`blk_cache`)
 * where the two counter maps would cost a hash lookup each: a disk's requests hit
 * the same few keys over and over.
 *
 * Control maps: `blk_config` (which disks, the cache switch) + `devices`, the common
 * `filter_config`/`watched_cgroups`. Data maps: `io_counts`, `io_latency`
 * (per-CPU, cumulative, allocated per key seen), behind `blk_cache`, which
 * `kmon_blk_flush` empties into them. `inflight` is the kernel side's own state. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/blockio.h"
#include "bpf/kmon_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* include/linux/sched.h; not in vmlinux.h (a #define). */
#define KMON_PF_KTHREAD 0x00200000
/* include/linux/blk_types.h: the op is the low REQ_OP_BITS (8) bits of cmd_flags,
 * and these four numbers have not changed since ops were split from flags (v4.10). */
#define KMON_REQ_OP_MASK 0xff
#define KMON_REQ_OP_READ 0
#define KMON_REQ_OP_WRITE 1
#define KMON_REQ_OP_FLUSH 2
#define KMON_REQ_OP_DISCARD 3

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct blk_config) blk_config SEC(".maps");

/* kernel dev_t of a whole disk -> 1. Consulted only while blk_config.filter_devices. */
KMON_MAP(BPF_MAP_TYPE_HASH, KMON_BLK_DEVICES_MAX, __u32, __u8) devices SEC(".maps");

/* Requests in flight, by a hash of their address (struct blk_inflight_set). A
 * request's struct is preallocated with its queue's tags and reused, so a slot whose
 * completion was never seen is taken again by the next use of the same address. */
KMON_MAP(BPF_MAP_TYPE_ARRAY, KMON_BLK_INFLIGHT_SETS, __u32,
         struct blk_inflight_set) inflight SEC(".maps");

/* Per-CPU: a workload's (device, op) and a disk's (device, op) are hot keys, hit by
 * every request from whichever CPU submits or completes it. No preallocation: a
 * per-CPU hash preallocates max_entries values for every possible CPU (16384 x 16 B
 * x 128 CPUs = 32 MiB for the counters alone); new keys are rare. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, KMON_BLK_COUNTS_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct blk_count_key);
  __type(value, struct blk_count_value);
} io_counts SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, KMON_BLK_LATENCY_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct blk_latency_key);
  __type(value, struct blk_latency_value);
} io_latency SEC(".maps");

/* The whole disk's dev_t, as the block tracepoints report it (disk_devt()). Zero for
 * a request without a disk (some passthrough commands): not counted. */
static __always_inline __u32 rq_dev(struct request *rq) {
  struct gendisk *disk = rq->q->disk;
  if (!disk) return 0;
  return KMON_KDEV(disk->major, disk->first_minor);
}

static __always_inline __u32 rq_op(struct request *rq) {
  switch (rq->cmd_flags & KMON_REQ_OP_MASK) {
    case KMON_REQ_OP_READ:
      return KMON_BLK_OP_READ;
    case KMON_REQ_OP_WRITE:
      /* A cache flush is submitted as an empty write with REQ_PREFLUSH (fsync of a
       * block device: blkdev_issue_flush); the flush machinery clears that flag
       * before completion, but only such a write carries no data. For the workload
       * it is a flush, not a write. */
      if (rq->__data_len == 0) return KMON_BLK_OP_FLUSH;
      return KMON_BLK_OP_WRITE;
    case KMON_REQ_OP_FLUSH:
      return KMON_BLK_OP_FLUSH;
    case KMON_REQ_OP_DISCARD:
      return KMON_BLK_OP_DISCARD;
    default:
      return KMON_BLK_OP_OTHER;
  }
}

static __always_inline bool device_wanted(__u32 dev) {
  if (dev == 0) return false;
  __u32 zero = 0;
  struct blk_config *cfg = bpf_map_lookup_elem(&blk_config, &zero);
  if (!cfg || !cfg->filter_devices) return true;
  return bpf_map_lookup_elem(&devices, &dev) != NULL;
}

/* device_wanted() for a request at its first hook, reading its disk (three loads
 * from three structs, rq->q->disk) only when there is a device filter: without one,
 * a request without a disk is dropped at completion instead. */
static __always_inline bool rq_wanted(struct request *rq) {
  __u32 zero = 0;
  struct blk_config *cfg = bpf_map_lookup_elem(&blk_config, &zero);
  if (!cfg || !cfg->filter_devices) return true;
  __u32 dev = rq_dev(rq);
  return dev != 0 && bpf_map_lookup_elem(&devices, &dev) != NULL;
}

/* The cgroup the request's first bio is charged to (its blkcg), when that cgroup is
 * on the v2 hierarchy (hierarchy_id 0, the "0::" line of /proc/PID/cgroup): on a
 * hybrid host the io controller lives on a v1 hierarchy whose ids mean nothing to
 * the v2 resolver. Used for I/O a kernel thread submits on someone's behalf:
 * writeback flushers, loop workers (bios carry the dirtying cgroup's blkcg). */
static __always_inline __u64 blkcg_cgroup_id(struct request *rq) {
  if (!bpf_core_field_exists(struct bio, bi_blkg)) return 0;
  struct bio *bio = rq->bio;
  if (!bio) return 0;
  /* BTF loads, not probe-read helper calls: a NULL on the way reads as 0. */
  struct blkcg_gq *blkg = bio->bi_blkg;
  if (!blkg) return 0;
  struct cgroup *cg = blkg->blkcg->css.cgroup;
  if (!cg || cg->root->hierarchy_id != 0) return 0;
  return cg->kn->id;
}

static __always_inline __u64 submitter_cgroup_id(struct request *rq) {
  struct task_struct *task = bpf_get_current_task_btf();
  if (task->flags & KMON_PF_KTHREAD) return blkcg_cgroup_id(rq);
  return kmon_task_cgroup_id(task);
}

/* Whether a request of this cgroup counts per workload (cgroup 0, the unknown
 * submitter, is node level and always counts). */
static __always_inline __u32 workload_counted(__u64 cgroup_id) {
  return cgroup_id == 0 || kmon_cgroup_watched(cgroup_id);
}

/* The verifier allows no arithmetic on a tp_btf argument's pointer, not even a cast
 * to a number, but it lets a privileged program (CAP_PERFMON) store one in a map
 * value, and what it reads back from there is a number. One slot per program, so
 * that a program interrupted by another (a completion in an interrupt) keeps its
 * own; a program never interrupts itself (the kernel counts that as a miss). */
enum { KMON_BLK_SCRATCH_SUBMIT, KMON_BLK_SCRATCH_ISSUE, KMON_BLK_SCRATCH_MERGE,
       KMON_BLK_SCRATCH_DONE, KMON_BLK_SCRATCH_MAX };
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, KMON_BLK_SCRATCH_MAX, __u32, __u64) scratch SEC(".maps");

/* The address of `rq` as a number (*addr) and its set in the `inflight` table;
 * NULL only if a map slot is missing. */
static __always_inline struct blk_inflight_set *inflight_set(struct request *rq, __u32 prog,
                                                             __u64 *addr) {
  __u64 *slot = bpf_map_lookup_elem(&scratch, &prog);
  if (!slot) return NULL;
  /* volatile: the compiler must not hand the pointer itself on to the hash. */
  *(struct request *volatile *)slot = rq;
  *addr = *(volatile __u64 *)slot;
  __u32 set = kmon_blk_inflight_set(*addr);
  return bpf_map_lookup_elem(&inflight, &set);
}

/* The slot of the request at `addr` in its set; -1 when it has none. */
static __always_inline int find_slot(struct blk_inflight_set *set, __u64 addr) {
#pragma unroll
  for (int i = 0; i < KMON_BLK_INFLIGHT_WAYS; i++) {
    if (set->rq[i] == addr) return i;
  }
  return -1;
}

/* A slot for the request at `addr`: its own (left by a completion never seen: the
 * address is in use again), else a free one taken with a compare-and-swap, as CPUs
 * may race for it. When every slot is taken by other requests, one of them is given
 * up (its completion finds no slot: counted, untimed, charged to its blkcg) and
 * counted as map_full; -1 only when even that lost a race. */
static __always_inline int take_slot(struct blk_inflight_set *set, __u64 addr) {
  int i = find_slot(set, addr);
  if (i >= 0) return i;
#pragma unroll
  for (i = 0; i < KMON_BLK_INFLIGHT_WAYS; i++) {
    if (set->rq[i] == 0 && __sync_val_compare_and_swap(&set->rq[i], 0, addr) == 0) return i;
  }
  kmon_count_lost(KMON_LOST_MAP_FULL);
  i = (addr >> 6) & (KMON_BLK_INFLIGHT_WAYS - 1);
  __u64 old = set->rq[i];
  return __sync_val_compare_and_swap(&set->rq[i], old, addr) == old ? i : -1;
}

/* Frees slot i if it still belongs to `addr` (a full set may have given it up). */
static __always_inline void free_slot(struct blk_inflight_set *set, int i, __u64 addr) {
  __sync_val_compare_and_swap(&set->rq[i & (KMON_BLK_INFLIGHT_WAYS - 1)], addr, 0);
}

/* Records a request at its first hook: who submitted it and whether that counts. */
static __always_inline void track(struct blk_inflight_set *set, __u64 addr,
                                  struct request *rq, __u64 issue_ns) {
  int i = take_slot(set, addr);
  if (i < 0) return;
  struct blk_inflight *e = &set->req[i & (KMON_BLK_INFLIGHT_WAYS - 1)];
  __u64 cgroup_id = submitter_cgroup_id(rq);
  e->cgroup_id = cgroup_id;
  e->counted = workload_counted(cgroup_id);
  e->issue_ns = issue_ns;
}

static __always_inline void on_submit(struct request *rq) {
  if (!rq_wanted(rq)) return;
  __u64 addr;
  struct blk_inflight_set *set = inflight_set(rq, KMON_BLK_SCRATCH_SUBMIT, &addr);
  if (set) track(set, addr, rq, 0);
}

SEC("tp_btf/block_io_start")
int BPF_PROG(kmon_blk_start, struct request *rq) {
  on_submit(rq);
  return 0;
}

/* The pre-v6.5 twin of kmon_blk_start; autoload is switched by user space. */
SEC("tp_btf/block_rq_insert")
int BPF_PROG(kmon_blk_insert, struct request *rq) {
  on_submit(rq);
  return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(kmon_blk_issue, struct request *rq) {
  __u64 addr;
  struct blk_inflight_set *set = inflight_set(rq, KMON_BLK_SCRATCH_ISSUE, &addr);
  if (!set) return 0;
  int i = find_slot(set, addr);
  if (i >= 0) {
    /* a requeued request is timed from its last issue */
    set->req[i & (KMON_BLK_INFLIGHT_WAYS - 1)].issue_ns = bpf_ktime_get_ns();
    return 0;
  }
  /* Not seen at submission: flush sequences, passthrough, requests in flight
   * before we attached, and with the block_rq_insert twin every request issued
   * directly, which is issued by its submitter (blk_mq_try_issue_directly, or the
   * flush of the submitter's own plug). Time it all the same, charged like a
   * submission: the current task's cgroup, or the blkcg for a kernel thread. */
  if (!rq_wanted(rq)) return 0;
  track(set, addr, rq, bpf_ktime_get_ns());
  return 0;
}

SEC("tp_btf/block_rq_merge")
int BPF_PROG(kmon_blk_merge, struct request *rq) {
  __u64 addr;
  struct blk_inflight_set *set = inflight_set(rq, KMON_BLK_SCRATCH_MERGE, &addr);
  if (!set) return 0;
  int i = find_slot(set, addr);
  if (i >= 0) free_slot(set, i, addr);
  return 0;
}

/* This CPU's write-back cache (struct blk_cache in bpf/blockio.h). Only the
 * completion program uses it, and one program never interrupts itself on a CPU: the
 * flush's IPI is the only thing that can land in the middle of its update. */
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct blk_cache) blk_cache SEC(".maps");

static __always_inline struct blk_cache *cache_of(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&blk_cache, &zero);
}

static __always_inline void count_add(struct blk_count_value *v, __u64 bytes, __u64 requests) {
  v->bytes += bytes;
  v->requests += requests;
}

static __always_inline void latency_add(struct blk_latency_value *v, __u64 ns, bool timed,
                                        bool failed) {
  if (timed) {
    __u32 slot = kmon_blk_latency_slot(ns);
    if (slot < KMON_BLK_LAT_SLOTS) v->slots[slot] += 1;
    v->sum_ns += ns;
  }
  v->errors += failed;
}

/* Into io_counts (the key's entry made if new); false when the map had no room. */
static __always_inline bool add_count(const struct blk_count_key *key, __u64 bytes,
                                      __u64 requests) {
  static const struct blk_count_value zero;
  struct blk_count_value *v = kmon_lookup_or_init(&io_counts, key, &zero);
  if (!v) return false;
  count_add(v, bytes, requests);
  return true;
}

static __always_inline bool add_latency(__u32 dev, __u32 op, __u64 ns, bool timed, bool failed) {
  struct blk_latency_key key = {.dev = dev, .op = op};
  /* A global: too big for the 512-byte stack next to everything else. */
  static const struct blk_latency_value zero;
  struct blk_latency_value *v = kmon_lookup_or_init(&io_latency, &key, &zero);
  if (!v) return false;
  latency_add(v, ns, timed, failed);
  return true;
}

/* The way of a key: a multiplicative hash (cgroup ids of one pod are often
 * consecutive inode numbers). */
static __always_inline __u32 way_of(const struct blk_count_key *k) {
  __u64 x = k->cgroup_id ^ ((__u64)k->dev << 32) ^ k->op;
  x *= 0x9E3779B97F4A7C15ULL;
  return (__u32)(x >> 61) & (KMON_BLK_CACHE_WAYS - 1);
}

/* Moves a way's counts into io_counts and io_latency where its keys still are: a
 * way is given a key only right after its request went into the key's entries, so
 * a write-back never inserts, and a key user space deleted (a gone cgroup or disk)
 * takes the way's counts with it. */
static __always_inline void way_writeback(struct blk_cached *w) {
  if (w->key.dev == 0) return;
  if (w->counted && (w->count.requests | w->count.bytes)) {
    struct blk_count_value *v = bpf_map_lookup_elem(&io_counts, &w->key);
    if (v) count_add(v, w->count.bytes, w->count.requests);
    w->count.bytes = 0;
    w->count.requests = 0;
  }
  if (!w->has_latency) return;
  struct blk_latency_key lk = {.dev = w->key.dev, .op = w->key.op};
  struct blk_latency_value *l = bpf_map_lookup_elem(&io_latency, &lk);
  for (int i = 0; i < KMON_BLK_LAT_SLOTS; i++) {
    __u64 n = w->latency.slots[i];
    if (!n) continue;
    if (l) l->slots[i] += n;
    w->latency.slots[i] = 0;
  }
  if (l) {
    l->sum_ns += w->latency.sum_ns;
    l->errors += w->latency.errors;
  }
  w->latency.sum_ns = 0;
  w->latency.errors = 0;
}

/* One completion through this CPU's way for its key (cgroup 0 when not `counted`:
 * latency only), or straight into the maps, after which the way is the key's (its
 * earlier key's counts written back). With the cache off, each way is written back
 * and left empty at its next use, so nothing stays in a way no flush will empty.
 * The caller holds the cache (`busy`). */
static __always_inline void record_cached(const struct blk_config *cfg, struct blk_cache *cache,
                                          const struct blk_count_key *key, bool counted,
                                          __u64 bytes, __u64 requests, __u64 ns, bool timed,
                                          bool failed) {
  const bool latency = timed || failed;
  struct blk_cached *w = &cache->ways[way_of(key)];
  const bool same = w->key.dev == key->dev && w->key.cgroup_id == key->cgroup_id &&
                    w->key.op == key->op && w->counted == counted &&
                    w->generation == cfg->generation;
  if (cfg->cache && same && (w->has_latency || !latency)) {
    if (counted) count_add(&w->count, bytes, requests);
    if (latency) latency_add(&w->latency, ns, timed, failed);
    return;
  }
  const bool stored = !counted || add_count(key, bytes, requests);
  const bool has_latency = (latency && add_latency(key->dev, key->op, ns, timed, failed)) ||
                           (same && w->has_latency);
  way_writeback(w);
  w->key = *key;
  w->counted = counted;
  w->has_latency = has_latency;
  w->generation = cfg->generation;
  if (!cfg->cache || !stored) w->key.dev = 0; /* empty */
}

/* What one completion adds: to io_counts under `key` when `counted`, to its disk's
 * io_latency when timed or failed. */
static __always_inline void record_done(const struct blk_count_key *key, bool counted,
                                        __u64 bytes, __u64 requests, __u64 ns, bool timed,
                                        bool failed) {
  if (!counted && !timed && !failed) return;
  __u32 zero = 0;
  struct blk_config *cfg = bpf_map_lookup_elem(&blk_config, &zero);
  struct blk_cache *cache = cache_of();
  if (cfg && cache) {
    *(volatile __u64 *)&cache->busy = 1;
    KMON_BARRIER();
    record_cached(cfg, cache, key, counted, bytes, requests, ns, timed, failed);
    KMON_BARRIER();
    *(volatile __u64 *)&cache->busy = 0;
    return;
  }
  if (counted) add_count(key, bytes, requests);
  if (timed || failed) add_latency(key->dev, key->op, ns, timed, failed);
}

/* Called once per driver completion, possibly several times for one request when a
 * driver completes it in parts: bytes count every part, the request and its
 * latency only the last one (nr_bytes covers what is left, __data_len).
 *
 * Bytes are what was transferred: only parts completed without error. A failed
 * part counts as one error of its device and op (kmon_block_io_errors_total);
 * the request it ends is still a completed request (requests_total, latency).
 * E.g. loop over a file shorter than the disk: a read across the file's end
 * completes the part inside the file (bytes), is requeued, and ends in EIO.
 *
 * REQ_OP_FLUSH requests exist only inside the block layer's flush machinery
 * (blk-flush.c): one such request may serve the flushes of several submitters,
 * each of which completes its own (empty or data) request too. So they are timed
 * per device but not counted per workload, where the submitters' own requests
 * already stand for them. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(kmon_blk_done, struct request *rq, blk_status_t error, unsigned int nr_bytes) {
  bool last = nr_bytes >= rq->__data_len;
  __u32 dev = rq_dev(rq);

  __u64 cgroup_id;
  __u64 issue_ns = 0;
  __u32 counted;
  __u64 addr = 0;
  struct blk_inflight_set *set = inflight_set(rq, KMON_BLK_SCRATCH_DONE, &addr);
  int i = set ? find_slot(set, addr) : -1;
  if (set && i >= 0) {
    struct blk_inflight *e = &set->req[i & (KMON_BLK_INFLIGHT_WAYS - 1)];
    cgroup_id = e->cgroup_id;
    issue_ns = e->issue_ns;
    counted = e->counted;
    if (last) free_slot(set, i, addr);
    if (dev == 0) return 0; /* no disk: not counted (rq_wanted) */
  } else {
    if (!device_wanted(dev)) return 0;
    cgroup_id = blkcg_cgroup_id(rq);
    counted = workload_counted(cgroup_id);
  }

  __u32 op = rq_op(rq);
  bool internal_flush = (rq->cmd_flags & KMON_REQ_OP_MASK) == KMON_REQ_OP_FLUSH;
  counted = counted && !internal_flush;
  /* Requests never issued (an empty flush request whose flush another request
   * did) have no device time. */
  bool timed = false;
  __u64 ns = 0;
  if (last && issue_ns != 0) {
    __u64 now = bpf_ktime_get_ns();
    timed = now >= issue_ns;
    ns = timed ? now - issue_ns : 0;
  }
  struct blk_count_key key = {.cgroup_id = counted ? cgroup_id : 0, .dev = dev, .op = op};
  record_done(&key, counted, error ? 0 : nr_bytes, last ? 1 : 0, ns, timed, error != 0);
  return 0;
}

/* Run by user space on each CPU in turn (never attached) before it reads io_counts
 * or io_latency: every way of this CPU's cache into the maps. It runs in an IPI (or,
 * on the calling CPU, with preemption off), which can land in the middle of this
 * CPU's completion program, between a load and its store: a busy CPU is left
 * alone, and 1 asks user space to run this again (RunOnEveryCpu). */
SEC("raw_tp")
int kmon_blk_flush(void *ctx) {
  struct blk_cache *cache = cache_of();
  if (!cache) return 0;
  if (*(volatile __u64 *)&cache->busy) return 1;
  for (int i = 0; i < KMON_BLK_CACHE_WAYS; i++) way_writeback(&cache->ways[i]);
  return 0;
}
