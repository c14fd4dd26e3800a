/* Shared between bpf/drops.bpf.c and collectors/drops.cc. */
#ifndef KMON_BPF_DROPS_H_
#define KMON_BPF_DROPS_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* (cgroup, location, reason, protocol) tuples the data map can hold. Drop sites
 * are a few hundred kernel functions, reasons ~130: real tuples stay far below. */
#define KMON_DROP_COUNTS_MAX 16384

/* L4 protocol of a dropped packet, decided in the kernel so the key stays small. */
enum kmon_drop_proto {
  KMON_DROP_PROTO_OTHER = 0, /* not IPv4/IPv6, or an L4 protocol not named below */
  KMON_DROP_PROTO_TCP = 1,
  KMON_DROP_PROTO_UDP = 2,
  KMON_DROP_PROTO_ICMP = 3,
  KMON_DROP_PROTO_ICMPV6 = 4,
  KMON_DROP_PROTO_MAX = 5,
};

struct drop_key {
  __u64 cgroup_id; /* cgroup v2 id of the packet's socket; 0: no socket (node level) */
  __u64 location;  /* kernel address that freed the packet; user space symbolizes it */
  __u32 reason;    /* enum skb_drop_reason value, names read from the running kernel's BTF */
  __u32 protocol;  /* enum kmon_drop_proto */
};

/* Per-CPU, cumulative: user space sums CPUs and never resets. */
struct drop_value {
  __u64 count;
};

#ifdef __cplusplus
static_assert(sizeof(struct drop_key) == 24, "BPF ABI");
static_assert(sizeof(struct drop_value) == 8, "BPF ABI");
#endif

#endif /* KMON_BPF_DROPS_H_ */
