// SPDX-License-Identifier: GPL-2.0
/* Counts every packet the kernel drops, by the socket's cgroup, the kernel's own
 * drop reason, the dropping function and the packet's L4 protocol.
 *
 * One hook sees every drop: since v5.17 every kfree_skb_reason() (and plain
 * kfree_skb(), reason NOT_SPECIFIED) fires the kfree_skb tracepoint with a reason
 * and the return address of the freeing call. Packets freed after normal use go to
 * consume_skb instead and are not counted.
 *
 * The key holds the raw location address and reason number: names are resolved in
 * user space from /proc/kallsyms and the running kernel's BTF, never on this path.
 *
 * Control maps: the common `filter_config`/`watched_cgroups` (applied to drops
 * that belong to a socket; node-level drops are always counted). Data map:
 * `counts` (per-CPU, cumulative). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/drops.h"
#include "bpf/kmon_common.bpf.h"
#include "bpf/kmon_sock.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* Not in vmlinux.h: these are #defines in the UAPI headers. */
#define KMON_ETH_P_IP 0x0800
#define KMON_ETH_P_IPV6 0x86DD
#define KMON_IPPROTO_ICMPV6 58
#define KMON_NEXTHDR_HOP 0
#define KMON_NEXTHDR_ROUTING 43
#define KMON_NEXTHDR_FRAGMENT 44
#define KMON_NEXTHDR_DEST 60
/* IPv6 extension headers walked before giving up and saying "other". */
#define KMON_MAX_IPV6_EXT 4

KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_DROP_COUNTS_MAX, struct drop_key,
               struct drop_value, BPF_F_NO_PREALLOC) counts SEC(".maps");

static __always_inline __u32 proto_of(__u8 l4) {
  switch (l4) {
    case IPPROTO_TCP:
      return KMON_DROP_PROTO_TCP;
    case IPPROTO_UDP:
      return KMON_DROP_PROTO_UDP;
    case IPPROTO_ICMP:
      return KMON_DROP_PROTO_ICMP;
    case KMON_IPPROTO_ICMPV6:
      return KMON_DROP_PROTO_ICMPV6;
    default:
      return KMON_DROP_PROTO_OTHER;
  }
}

/* The L4 protocol from the packet's own network header. The header bytes are read
 * with bpf_probe_read_kernel: skb->head is plain memory, not a BTF object. A
 * packet dropped before its network header was set (early on transmit) has a
 * stale offset; the IP version nibble must then match the L3 protocol, else the
 * packet is "other" rather than a guess. */
static __always_inline __u32 drop_protocol(struct sk_buff *skb) {
  __u16 l3 = bpf_ntohs(skb->protocol);
  unsigned char *nh = skb->head + skb->network_header;
  __u8 hdr[8];
  if (l3 == KMON_ETH_P_IP) {
    __u8 v4[10];
    if (bpf_probe_read_kernel(v4, sizeof v4, nh)) return KMON_DROP_PROTO_OTHER;
    if ((v4[0] >> 4) != 4) return KMON_DROP_PROTO_OTHER;
    return proto_of(v4[9]);
  }
  if (l3 != KMON_ETH_P_IPV6) return KMON_DROP_PROTO_OTHER;
  if (bpf_probe_read_kernel(hdr, sizeof hdr, nh)) return KMON_DROP_PROTO_OTHER;
  if ((hdr[0] >> 4) != 6) return KMON_DROP_PROTO_OTHER;
  __u8 next = hdr[6];
  __u32 off = 40; /* fixed IPv6 header */
  for (int i = 0; i < KMON_MAX_IPV6_EXT; i++) {
    if (next != KMON_NEXTHDR_HOP && next != KMON_NEXTHDR_ROUTING &&
        next != KMON_NEXTHDR_DEST && next != KMON_NEXTHDR_FRAGMENT) {
      break;
    }
    __u8 ext[2];
    if (bpf_probe_read_kernel(ext, sizeof ext, nh + off)) return KMON_DROP_PROTO_OTHER;
    /* Fragment headers are 8 bytes, their second byte reserved; the others say
     * their length in 8-byte units beyond the first 8. */
    off += next == KMON_NEXTHDR_FRAGMENT ? 8 : ((__u32)ext[1] + 1) * 8;
    next = ext[0];
  }
  return proto_of(next);
}

static __always_inline void count_drop(const struct drop_key *key) {
  static const struct drop_value zero;
  struct drop_value *v = kmon_lookup_or_init(&counts, key, &zero);
  if (v) v->count += 1;
}

/* Declared with the three arguments every kernel since v5.17 passes; the fourth,
 * rx_sk (the receiving socket, set when the drop happens on its receive path before
 * the packet is charged to it), came with commit "net: add rx_sk to
 * trace_kfree_skb" (v6.11) and is read from ctx only where the running kernel has
 * it: reading a tp_btf argument the kernel lacks fails verification. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kmon_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason) {
  /* kfree_skb_reason(skb, SKB_CONSUMED) is a normal free, traced as consume_skb on
   * the kernels that have it; skipped here should a kernel route it to kfree_skb. */
  if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
      reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED)) {
    return 0;
  }
  if (!skb) return 0;

  /* The packet's owner if it has one, else the socket it was being received on. */
  __u64 cgroup_id = kmon_sock_cgroup(skb->sk);
  if (cgroup_id == 0 && bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk)) {
    cgroup_id = kmon_sock_cgroup((struct sock *)ctx[3]);
  }
  if (cgroup_id != 0 && !kmon_cgroup_watched(cgroup_id)) return 0;

  struct drop_key key = {
      .cgroup_id = cgroup_id,
      .location = (__u64)location,
      .reason = (__u32)reason,
      .protocol = drop_protocol(skb),
  };
  count_drop(&key);
  return 0;
}
