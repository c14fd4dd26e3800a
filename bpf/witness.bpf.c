// SPDX-License-Identifier: GPL-2.0
/* A witness for the root tests: counts the block_rq_complete events of one disk
 * with atomic adds into globals, with none of the collector's logic (no in-flight
 * table, no cache, no maps to look up), so that a test can hold what kmon counted
 * against what the kernel delivered to BPF on the same tracepoint. Nothing in the
 * exporter loads this object. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/blockio.h"

char LICENSE[] SEC("license") = "GPL";

/* The kernel dev_t of the disk to count; set before load. */
const volatile __u32 witness_dev = 0;

/* Requests whose last part completed, and the bytes of parts completed without error. */
__u64 witness_requests = 0;
__u64 witness_bytes = 0;

SEC("tp_btf/block_rq_complete")
int BPF_PROG(witness_blk_done, struct request *rq, blk_status_t error, unsigned int nr_bytes) {
  struct gendisk *disk = rq->q->disk;
  if (!disk || KMON_KDEV(disk->major, disk->first_minor) != witness_dev) return 0;
  if (nr_bytes >= rq->__data_len) __sync_fetch_and_add(&witness_requests, 1);
  if (!error) __sync_fetch_and_add(&witness_bytes, nr_bytes);
  return 0;
}
