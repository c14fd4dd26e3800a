/* The workload a socket belongs to, for the programs that are handed sockets by the
 * network stack (drops, tcp).
 *
 * Its own header rather than kmon_common.bpf.h: that one is what every object
 * carries (the control maps, the lost counters), and most objects never see a
 * socket; what a `struct sock *` may really point to is knowledge of the network
 * programs alone. */
#ifndef KMON_BPF_KMON_SOCK_BPF_H_
#define KMON_BPF_KMON_SOCK_BPF_H_

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

/* cgroup v2 id of the workload owning `sk`, or 0 (node level) when there is none.
 *
 * A socket's workload is the cgroup that created it (sk_cgrp_data), which an
 * accepted socket inherits from its listener. But a `struct sock *` from the network
 * stack is not always a full socket: two smaller objects share only its first part,
 * struct sock_common, and are told apart by skc_state (the kernel's sk_fullsock()):
 *   TCP_TIME_WAIT     an inet_timewait_sock, what a closed connection leaves for
 *                     its last segments; it belongs to nobody any more: 0.
 *   TCP_NEW_SYN_RECV  a request_sock, a connection not yet accepted; it stands for
 *                     its listener (skc_listener), whose cgroup its socket will have.
 * Neither has sk_cgrp_data: reading it there reads past the end of the object.
 * They reach, e.g., kfree_skb through skb->sk (early demux charges a packet to the
 * socket it found, whatever its kind) and tcp_send_reset (a timewait socket
 * answering a segment it does not accept). Nor has a kernel without
 * CONFIG_SOCK_CGROUP_DATA sk_cgrp_data at all: 0 there too.
 *
 * A full socket's is plain loads from the BTF pointer given (tp_btf arguments),
 * which the verifier makes fault-safe, and from the BTF pointers they yield
 * (cgroup, kernfs_node): no probe-read helper calls (their cost: kmon_common.bpf.h;
 * a UDP datagram pays this every time). The listener of a
 * request_sock goes through BPF_CORE_READ: skc_listener is in a union, which the
 * verifier reads as a number, not a pointer. */
static __always_inline __u64 kmon_sock_cgroup(const struct sock *sk) {
  if (!sk) return 0;
  if (!bpf_core_field_exists(sk->sk_cgrp_data)) return 0;
  __u8 state = sk->__sk_common.skc_state;
  if (state == TCP_TIME_WAIT) return 0;
  if (state == TCP_NEW_SYN_RECV) {
    const struct sock *listener = BPF_CORE_READ(sk, __sk_common.skc_listener);
    struct cgroup *lcg = listener ? BPF_CORE_READ(listener, sk_cgrp_data.cgroup) : NULL;
    return lcg ? BPF_CORE_READ(lcg, kn, id) : 0;
  }
  struct cgroup *cg = sk->sk_cgrp_data.cgroup;
  if (!cg) return 0;
  return cg->kn->id;
}

/* What the tcp collector reads of a full socket. */

#define KMON_AF_INET6 10

/* The socket's inode number, what sock_i_ino() and so /proc/net/tcp give: cached in
 * struct sock as sk_ino by recent kernels (6.18 has it); before, only in the inode
 * itself, SOCK_INODE(sk->sk_socket), the struct socket_alloc that begins with the
 * socket. */
struct sock___ino {
  unsigned long sk_ino;
} __attribute__((preserve_access_index));

static __always_inline __u64 kmon_sk_ino(const struct sock *sk) {
  if (bpf_core_field_exists(struct sock___ino, sk_ino)) {
    return ((const struct sock___ino *)sk)->sk_ino;
  }
  struct socket *sock = sk->sk_socket;
  if (!sock) return 0;
  return BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
}

/* Addresses as IPv6; an IPv4 socket's as v4-mapped (::ffff:a.b.c.d), which is also
 * what an IPv6 socket talking to an IPv4 peer holds, so both meet in one form. */
static __always_inline void kmon_sk_addrs(const struct sock *sk, __u8 local[16], __u8 peer[16]) {
  __u16 family = sk->__sk_common.skc_family;
  if (family == KMON_AF_INET6) {
    BPF_CORE_READ_INTO(local, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
    BPF_CORE_READ_INTO(peer, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
    return;
  }
  __builtin_memset(local, 0, 16);
  __builtin_memset(peer, 0, 16);
  local[10] = local[11] = peer[10] = peer[11] = 0xff;
  __be32 l = sk->__sk_common.skc_rcv_saddr;
  __be32 p = sk->__sk_common.skc_daddr;
  __builtin_memcpy(local + 12, &l, 4);
  __builtin_memcpy(peer + 12, &p, 4);
}

#endif /* KMON_BPF_KMON_SOCK_BPF_H_ */
