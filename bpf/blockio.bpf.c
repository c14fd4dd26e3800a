// SPDX-License-Identifier: GPL-2.0
/* Block I/O per device and op (latency from issue to completion, errors) and per
 * submitting cgroup (bytes, requests).
 *
 * A request is followed by its address through three block-layer tracepoints:
 *   block_io_start   (submitter's context) records the submitting cgroup;
 *   block_rq_issue   (handed to the driver) records the issue time;
 *   block_rq_complete (driver done, any context) counts and forgets the request.
 * block_rq_merge forgets a request merged into another (it never completes).
 * Kernels before v6.5 lack block_io_start (commit "block: introduce
 * block_io_start/block_io_done tracepoints"): user space then loads the
 * block_rq_insert twin. Insertion is skipped by requests issued directly
 * (scheduler "none", the NVMe default; plug flushes): block_rq_issue sees those
 * first, in the submitting task's own context, and charges them the same way.
 *
 * Control maps: `blk_config` + `devices` (which disks), the common
 * `filter_config`/`watched_cgroups`. Data maps: `io_counts`, `io_latency`
 * (per-CPU, cumulative). `inflight` is the kernel side's own state. */
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

KMON_MAP(BPF_MAP_TYPE_LRU_HASH, KMON_BLK_INFLIGHT_MAX, __u64,
         struct blk_inflight) inflight SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_BLK_COUNTS_MAX, struct blk_count_key,
         struct blk_count_value) io_counts SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_BLK_LATENCY_MAX, struct blk_latency_key,
         struct blk_latency_value) io_latency SEC(".maps");

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

/* The cgroup the request's first bio is charged to (its blkcg), when that cgroup is
 * on the v2 hierarchy (hierarchy_id 0, the "0::" line of /proc/PID/cgroup): on a
 * hybrid host the io controller lives on a v1 hierarchy whose ids mean nothing to
 * the v2 resolver. Used for I/O a kernel thread submits on someone's behalf:
 * writeback flushers, loop workers (bios carry the dirtying cgroup's blkcg). */
static __always_inline __u64 blkcg_cgroup_id(struct request *rq) {
  if (!bpf_core_field_exists(struct bio, bi_blkg)) return 0;
  struct bio *bio = rq->bio;
  if (!bio) return 0;
  struct blkcg_gq *blkg = BPF_CORE_READ(bio, bi_blkg);
  if (!blkg) return 0;
  struct cgroup *cg = BPF_CORE_READ(blkg, blkcg, css.cgroup);
  if (!cg || BPF_CORE_READ(cg, root, hierarchy_id) != 0) return 0;
  return BPF_CORE_READ(cg, kn, id);
}

static __always_inline __u64 submitter_cgroup_id(struct request *rq) {
  struct task_struct *task = bpf_get_current_task_btf();
  if (task->flags & KMON_PF_KTHREAD) return blkcg_cgroup_id(rq);
  return bpf_get_current_cgroup_id();
}

static __always_inline void on_submit(struct request *rq) {
  if (!device_wanted(rq_dev(rq))) return;
  __u64 key = (__u64)rq;
  struct blk_inflight v = {.cgroup_id = submitter_cgroup_id(rq), .issue_ns = 0};
  /* An LRU map makes room by evicting its oldest entry; it fails only when it cannot. */
  if (bpf_map_update_elem(&inflight, &key, &v, BPF_ANY)) kmon_count_lost(KMON_LOST_MAP_FULL);
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
  __u64 key = (__u64)rq;
  __u64 now = bpf_ktime_get_ns();
  struct blk_inflight *v = bpf_map_lookup_elem(&inflight, &key);
  if (v) {
    v->issue_ns = now; /* a requeued request is timed from its last issue */
    return 0;
  }
  /* Not seen at submission: flush sequences, passthrough, requests in flight
   * before we attached, and with the block_rq_insert twin every request issued
   * directly, which is issued by its submitter (blk_mq_try_issue_directly, or the
   * flush of the submitter's own plug). Time it all the same, charged like a
   * submission: the current task's cgroup, or the blkcg for a kernel thread. */
  if (!device_wanted(rq_dev(rq))) return 0;
  struct blk_inflight init = {.cgroup_id = submitter_cgroup_id(rq), .issue_ns = now};
  if (bpf_map_update_elem(&inflight, &key, &init, BPF_ANY)) kmon_count_lost(KMON_LOST_MAP_FULL);
  return 0;
}

SEC("tp_btf/block_rq_merge")
int BPF_PROG(kmon_blk_merge, struct request *rq) {
  __u64 key = (__u64)rq;
  bpf_map_delete_elem(&inflight, &key);
  return 0;
}

static __always_inline void add_count(__u64 cgroup_id, __u32 dev, __u32 op, __u64 bytes,
                                      __u64 requests) {
  struct blk_count_key key = {.cgroup_id = cgroup_id, .dev = dev, .op = op};
  static const struct blk_count_value zero;
  struct blk_count_value *v = kmon_lookup_or_init(&io_counts, &key, &zero);
  if (!v) return;
  v->bytes += bytes;
  v->requests += requests;
}

static __always_inline void add_latency(__u32 dev, __u32 op, __u64 ns, bool timed, bool failed) {
  struct blk_latency_key key = {.dev = dev, .op = op};
  /* A global: too big for the 512-byte stack next to everything else. */
  static const struct blk_latency_value zero;
  struct blk_latency_value *v = kmon_lookup_or_init(&io_latency, &key, &zero);
  if (!v) return;
  if (timed) {
    __u32 slot = kmon_blk_latency_slot(ns);
    if (slot < KMON_BLK_LAT_SLOTS) v->slots[slot] += 1;
    v->sum_ns += ns;
  }
  v->errors += failed;
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
  __u64 key = (__u64)rq;
  __u64 now = bpf_ktime_get_ns();
  __u32 dev = rq_dev(rq);
  __u32 op = rq_op(rq);
  bool last = nr_bytes >= rq->__data_len;

  __u64 cgroup_id;
  __u64 issue_ns = 0;
  struct blk_inflight *v = bpf_map_lookup_elem(&inflight, &key);
  if (v) {
    cgroup_id = v->cgroup_id;
    issue_ns = v->issue_ns;
    if (last) bpf_map_delete_elem(&inflight, &key);
  } else {
    if (!device_wanted(dev)) return 0;
    cgroup_id = blkcg_cgroup_id(rq);
  }

  bool internal_flush = (rq->cmd_flags & KMON_REQ_OP_MASK) == KMON_REQ_OP_FLUSH;
  if (!internal_flush && (cgroup_id == 0 || kmon_cgroup_watched(cgroup_id))) {
    add_count(cgroup_id, dev, op, error ? 0 : nr_bytes, last ? 1 : 0);
  }
  /* Requests never issued (an empty flush request whose flush another request
   * did) have no device time. */
  bool timed = last && issue_ns != 0 && now >= issue_ns;
  if (timed || error) add_latency(dev, op, timed ? now - issue_ns : 0, timed, error != 0);
  return 0;
}
