// SPDX-License-Identifier: GPL-2.0
/* The floor of the benchmarks: an empty program on each hook kmon's collectors
 * use. What a benchmark measures with these attached is the cost of hooking at all
 * (the trampoline or tracepoint call and the program's entry), which no collector
 * can go below; "kmon / floor" then says how close a collector is to that limit.
 * Benchmarks choose which programs to load with bpf_program__set_autoload; nothing
 * in the exporter loads this object. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define KMON_FLOOR(hook, name) \
  SEC("tp_btf/" #hook)         \
  int name(void *ctx) { return 0; }

/* syscalls */
KMON_FLOOR(sys_exit, floor_sys_exit)
/* tcp */
KMON_FLOOR(sock_recv_length, floor_sock_recv_length)
KMON_FLOOR(sock_send_length, floor_sock_send_length)
KMON_FLOOR(inet_sock_set_state, floor_inet_sock_set_state)
KMON_FLOOR(tcp_destroy_sock, floor_tcp_destroy_sock)
KMON_FLOOR(tcp_retransmit_skb, floor_tcp_retransmit_skb)
KMON_FLOOR(tcp_send_reset, floor_tcp_send_reset)
KMON_FLOOR(tcp_receive_reset, floor_tcp_receive_reset)
/* cpu */
KMON_FLOOR(sched_switch, floor_sched_switch)
KMON_FLOOR(sched_wakeup, floor_sched_wakeup)
KMON_FLOOR(sched_wakeup_new, floor_sched_wakeup_new)
/* blockio */
KMON_FLOOR(block_io_start, floor_block_io_start)
KMON_FLOOR(block_rq_insert, floor_block_rq_insert)
KMON_FLOOR(block_rq_issue, floor_block_rq_issue)
KMON_FLOOR(block_rq_merge, floor_block_rq_merge)
KMON_FLOOR(block_rq_complete, floor_block_rq_complete)
/* dns: on the cgroup v2 root, where the collector attaches (tests/bench/floor.h) */
SEC("cgroup_skb/egress")
int floor_cgroup_skb_egress(struct __sk_buff *skb) { return 1; }
SEC("cgroup_skb/ingress")
int floor_cgroup_skb_ingress(struct __sk_buff *skb) { return 1; }
/* drops */
KMON_FLOOR(kfree_skb, floor_kfree_skb)
/* pagecache */
KMON_FLOOR(mm_filemap_get_pages, floor_mm_filemap_get_pages)
KMON_FLOOR(mm_filemap_map_pages, floor_mm_filemap_map_pages)
KMON_FLOOR(mm_filemap_fault, floor_mm_filemap_fault)
KMON_FLOOR(mm_filemap_add_to_page_cache, floor_mm_filemap_add_to_page_cache)
KMON_FLOOR(writeback_dirty_folio, floor_writeback_dirty_folio)
