// SPDX-License-Identifier: GPL-2.0
/* DNS: the latency of every query a workload sends to a DNS port, by the rcode of
 * its answer, and the queries left unanswered.
 *
 * Hooks: cgroup_skb/egress and cgroup_skb/ingress on the cgroup v2 root, so every
 * socket on the host passes through them. Why these and not the syscalls:
 *  - They see packets, not calls: one place for UDP and TCP, connected and
 *    unconnected sockets, send/sendto/sendmsg/sendmmsg/write/writev/io_uring,
 *    IPv4 and IPv6, whatever the resolver library (glibc, musl, dig, Go's). The
 *    syscall tracepoints would need a user-buffer walk per call shape (iovecs,
 *    mmsghdr arrays) and miss io_uring.
 *  - Egress runs before IP fragmentation (ip_finish_output) and ingress after
 *    reassembly and socket lookup (sk_filter), so a datagram is seen whole, once,
 *    on the socket that sent or receives it: skb->sk gives the socket cookie and
 *    its cgroup (the socket's creator, right even in softirq).
 *  - kprobes and fentry do not load on every kernel (lockdown); these do.
 * Cost for other traffic: one read of the IP and L4 headers in the packet's
 * linear data (direct packet access, no helper call) and one lookup in an array
 * of 65536 ports, which the verifier inlines into a load. Only packets to (egress)
 * or from (ingress) a configured port go further.
 *
 * A query is a message with QR=0, opcode QUERY and one question, sent to a DNS
 * port; its answer a message with QR=1 from one, received on the same socket
 * with the same ID. Both are matched by (socket cookie, ID) in `pending`; user
 * space finds the queries nobody answered within the timeout (sweeping `pending`
 * at each collection), this side the answers that came too late and the queries
 * re-sent after it. Over TCP each message has a 2-byte length first; `tcp_state`
 * follows where the next message starts in each direction from the SYN on, so a
 * segment that continues a message is never read as a header.
 *
 * `pending` is a plain hash, not an LRU: an LRU makes room by evicting silently,
 * and an evicted query is an answer never timed and a timeout never counted. A
 * full hash refuses the insert, which is counted (map_full).
 *
 * Control maps: `dns_config` (bounds, timeout), `dns_ports`, the common
 * `filter_config`/`watched_cgroups`. Data maps: `hists`, `stats` (per-CPU,
 * cumulative), `dns_lost`. Both programs always let the packet pass. */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "bpf/dns.h"
#include "bpf/kmon_common.bpf.h"
#include "bpf/kmon_hist.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define KMON_ETH_P_IP 0x0800
#define KMON_ETH_P_IPV6 0x86DD
#define KMON_TCP_FIN 0x01
#define KMON_TCP_SYN 0x02
#define KMON_TCP_RST 0x04

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct dns_config) dns_config SEC(".maps");
/* port -> 1 when it is a DNS server port (collectors.dns.ports). */
KMON_MAP(BPF_MAP_TYPE_ARRAY, KMON_DNS_PORTS, __u32, __u8) dns_ports SEC(".maps");
KMON_MAP(BPF_MAP_TYPE_HASH, KMON_DNS_PENDING_MAX, struct dns_pending_key,
         struct dns_pending) pending SEC(".maps");
KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_DNS_HIST_MAX, struct dns_hist_key,
               struct dns_hist, BPF_F_NO_PREALLOC) hists SEC(".maps");
KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_DNS_STATS_MAX, __u64, struct dns_stats,
               BPF_F_NO_PREALLOC) stats SEC(".maps");
KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, DNS_LOST_MAX, __u32, __u64) dns_lost SEC(".maps");

/* Socket cookie -> its DNS stream positions. An LRU rather than socket storage,
 * which would free an entry with its socket but has no capacity for
 * kmon_bpf_map_max_entries to show; entries go with the connection's end, and
 * the LRU only ever evicts those of connections that ended without a packet
 * (their netns gone), far below this many live TCP DNS connections. */
KMON_MAP(BPF_MAP_TYPE_LRU_HASH, KMON_DNS_TCP_MAX, __u64, struct dns_tcp_state) tcp_state SEC(".maps");

static const struct dns_hist zero_hist;
static const struct dns_stats zero_stats;
static const struct dns_tcp_state zero_tcp;

/* The headers of one packet, as far as this program needs them. */
struct pkt {
  __u32 off; /* of the L4 payload, from the network header */
  __u32 len; /* of the L4 payload */
  __u32 seq; /* TCP */
  __u16 sport;
  __u16 dport;
  __u8 proto;
  __u8 flags; /* TCP */
};

static __always_inline void count_dns_lost(__u32 reason) {
  __u64 *n = bpf_map_lookup_elem(&dns_lost, &reason);
  if (n) *n += 1;
}

static __always_inline bool dns_port(__u16 port) {
  __u32 k = port;
  __u8 *on = bpf_map_lookup_elem(&dns_ports, &k);
  return on && *on;
}

/* IP and UDP/TCP headers from the linear data: the stack keeps them there for
 * packets it builds and pulls them there before socket delivery. Anything else
 * (an IPv6 extension header, a later IPv4 fragment) is not DNS to this program. */
static __always_inline bool parse_pkt(struct __sk_buff *skb, struct pkt *p) {
  __u8 *data = (__u8 *)(long)skb->data;
  __u8 *end = (__u8 *)(long)skb->data_end;
  __u32 l3;
  if (skb->protocol == bpf_htons(KMON_ETH_P_IP)) {
    if (data + 20 > end) return false;
    if ((data[0] >> 4) != 4) return false;
    l3 = (data[0] & 0xf) * 4;
    if ((data[6] & 0x3f) || data[7]) return false; /* MF or an offset: a fragment */
    p->proto = data[9];
  } else if (skb->protocol == bpf_htons(KMON_ETH_P_IPV6)) {
    if (data + 40 > end) return false;
    l3 = 40;
    p->proto = data[6];
  } else {
    return false;
  }
  if (l3 < 20 || l3 > 60) return false;
  __u8 *l4 = data + l3;
  if (p->proto == IPPROTO_UDP) {
    if (l4 + 8 > end) return false;
    p->off = l3 + 8;
  } else if (p->proto == IPPROTO_TCP) {
    if (l4 + 20 > end) return false;
    __u32 doff = (l4[12] >> 4) * 4;
    if (doff < 20) return false;
    p->off = l3 + doff;
    p->seq = ((__u32)l4[4] << 24) | ((__u32)l4[5] << 16) | ((__u32)l4[6] << 8) | l4[7];
    p->flags = l4[13];
  } else {
    return false;
  }
  p->sport = ((__u16)l4[0] << 8) | l4[1];
  p->dport = ((__u16)l4[2] << 8) | l4[3];
  if (skb->len < p->off) return false;
  p->len = skb->len - p->off;
  return true;
}

static __always_inline struct dns_config *dns_cfg(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&dns_config, &zero);
}

static __always_inline void count_timeout(__u64 cgroup_id) {
  struct dns_stats *s = kmon_lookup_or_init(&stats, &cgroup_id, &zero_stats);
  if (s) s->timeouts += 1;
}

static __always_inline void hist_add(__u64 cgroup_id, __u32 rcode, __u64 ns,
                                     const struct dns_config *cfg) {
  struct dns_hist_key k = {.cgroup_id = cgroup_id, .rcode = rcode};
  struct dns_hist *h = kmon_lookup_or_init(&hists, &k, &zero_hist);
  if (!h) return;
  __u32 i = kmon_hist_slot(cfg->bounds_ns, cfg->nbounds, KMON_DNS_MAX_BOUNDS, ns);
  h->slots[i] += 1;
  h->count += 1;
  h->sum_ns += ns;
}

static __always_inline void on_query(struct __sk_buff *skb, __u16 id) {
  __u64 cgroup_id = bpf_skb_cgroup_id(skb);
  if (!kmon_cgroup_watched(cgroup_id)) return;
  struct dns_pending_key k = {.cookie = bpf_get_socket_cookie(skb), .id = id};
  struct dns_pending v = {.start_ns = bpf_ktime_get_ns(), .cgroup_id = cgroup_id};
  long err = bpf_map_update_elem(&pending, &k, &v, BPF_NOEXIST);
  if (err == 0) return;
  if (err != -KMON_EEXIST) {
    kmon_count_lost(KMON_LOST_MAP_FULL);
    return;
  }
  /* Sent again (a retry, or musl asking every server with one ID): timed from the
   * first send while that is within the timeout; past it, the first timed out. */
  struct dns_pending *old = bpf_map_lookup_elem(&pending, &k);
  struct dns_config *cfg = dns_cfg();
  if (!cfg) return;
  if (old) {
    if (v.start_ns - old->start_ns <= cfg->timeout_ns) return;
    __u64 old_cgroup = old->cgroup_id;
    /* BPF_EXIST fails when user space took the entry meanwhile: it counted it. */
    if (bpf_map_update_elem(&pending, &k, &v, BPF_EXIST) == 0) {
      count_timeout(old_cgroup);
      return;
    }
  }
  if (bpf_map_update_elem(&pending, &k, &v, BPF_NOEXIST) != 0) {
    kmon_count_lost(KMON_LOST_MAP_FULL);
  }
}

static __always_inline void on_response(struct __sk_buff *skb, __u16 id, __u32 rcode) {
  struct dns_pending_key k = {.cookie = bpf_get_socket_cookie(skb), .id = id};
  struct dns_pending *q = bpf_map_lookup_elem(&pending, &k);
  /* No query: sent before kmon started, a second answer (musl asks every server),
   * or one user space found timed out already. */
  if (!q) return;
  __u64 start = q->start_ns, cgroup_id = q->cgroup_id;
  /* Whoever deletes the entry owns it: user space's sweep may race this. */
  if (bpf_map_delete_elem(&pending, &k) != 0) return;
  struct dns_config *cfg = dns_cfg();
  if (!cfg) return;
  __u64 ns = bpf_ktime_get_ns() - start;
  if (ns > cfg->timeout_ns) {
    count_timeout(cgroup_id);
    return;
  }
  hist_add(cgroup_id, rcode, ns, cfg);
}

/* One DNS message whose header starts `off` bytes after the network header. */
static __always_inline void on_message(struct __sk_buff *skb, __u32 off, bool egress) {
  __u8 h[KMON_DNS_HDR];
  if (bpf_skb_load_bytes(skb, off, h, sizeof h) != 0) {
    count_dns_lost(DNS_LOST_MALFORMED);
    return;
  }
  enum dns_msg_kind kind = dns_classify(h);
  __u16 id = ((__u16)h[0] << 8) | h[1];
  if (kind == DNS_MSG_MALFORMED) {
    count_dns_lost(DNS_LOST_MALFORMED);
  } else if (kind == DNS_MSG_QUERY && egress) {
    on_query(skb, id);
  } else if (kind == DNS_MSG_RESPONSE && !egress) {
    on_response(skb, id, h[3] & 0xf);
  }
  /* A query received or an answer sent here is a server's side: not timed. */
}

static __always_inline __u32 read_be16(struct __sk_buff *skb, __u32 off, bool *ok) {
  __u8 b[2];
  *ok = bpf_skb_load_bytes(skb, off, b, sizeof b) == 0;
  return ((__u32)b[0] << 8) | b[1];
}

/* One direction of a TCP connection's DNS stream. */
struct tcp_dir {
  __u32 next;
  __u32 hdr;
  __u8 synced;
  __u8 split;
};

/* The messages in one segment that begins at sequence number `seq`. */
static __always_inline void tcp_messages(struct __sk_buff *skb, const struct pkt *p, __u32 seq,
                                         __u32 len, struct tcp_dir *d, bool egress) {
  __u32 pos = 0; /* in the segment's payload */
  if (d->split) {
    if (seq != d->hdr) return;
    if (len < KMON_DNS_HDR) goto unsynced;
    on_message(skb, p->off + (p->len - len), egress);
    d->split = 0;
    pos = d->next - seq;
  } else if (seq != d->next) {
    return; /* a continuation, a retransmission, or out of order */
  }
  for (int i = 0; i < KMON_DNS_TCP_MSGS; i++) {
    if (pos >= len) return; /* the stream continues in later segments */
    __u32 at = p->off + (p->len - len) + pos;
    if (len - pos < 2) goto unsynced;
    bool ok;
    __u32 msg_len = read_be16(skb, at, &ok);
    if (!ok) goto unsynced;
    if (msg_len < KMON_DNS_HDR) {
      count_dns_lost(DNS_LOST_MALFORMED);
      d->synced = 0;
      return;
    }
    d->next = seq + pos + 2 + msg_len;
    if (len - pos < 2 + KMON_DNS_HDR) {
      d->split = 1;
      d->hdr = seq + pos + 2;
      if (len - pos != 2) goto unsynced; /* the header itself split */
      return;
    }
    on_message(skb, at + 2, egress);
    pos += 2 + msg_len;
  }
  if (pos >= len) return;
unsynced:
  count_dns_lost(DNS_LOST_TCP_UNSYNCED);
  d->synced = 0;
}

static __always_inline void tcp_stream(struct __sk_buff *skb, const struct pkt *p, __u32 seq,
                                       struct dns_tcp_state *st, bool egress) {
  struct tcp_dir d;
  if (egress) {
    d = (struct tcp_dir){st->tx_next, st->tx_hdr, st->tx_synced, st->tx_split};
  } else {
    d = (struct tcp_dir){st->rx_next, st->rx_hdr, st->rx_synced, st->rx_split};
  }
  if (!d.synced) return;
  tcp_messages(skb, p, seq, p->len, &d, egress);
  if (egress) {
    st->tx_next = d.next;
    st->tx_hdr = d.hdr;
    st->tx_synced = d.synced;
    st->tx_split = d.split;
  } else {
    st->rx_next = d.next;
    st->rx_hdr = d.hdr;
    st->rx_synced = d.synced;
    st->rx_split = d.split;
  }
}

static __always_inline void on_tcp(struct __sk_buff *skb, struct pkt *p, bool egress) {
  __u64 cookie = bpf_get_socket_cookie(skb);
  __u32 seq = p->seq;
  struct dns_tcp_state *st;
  if (p->flags & KMON_TCP_SYN) {
    /* The client's SYN (egress) or the server's SYN-ACK (ingress): the stream
     * starts after it. Data on a SYN (fast open) follows at seq + 1. */
    st = kmon_lookup_or_init(&tcp_state, &cookie, &zero_tcp);
    if (!st) return;
    seq += 1;
    if (egress) {
      st->tx_next = seq;
      st->tx_synced = 1;
      st->tx_split = 0;
    } else {
      st->rx_next = seq;
      st->rx_synced = 1;
      st->rx_split = 0;
    }
  } else {
    if (p->len == 0 && !(p->flags & (KMON_TCP_FIN | KMON_TCP_RST))) return; /* an ACK */
    st = bpf_map_lookup_elem(&tcp_state, &cookie);
    if (!st) return; /* opened before kmon started: where messages begin is unknown */
  }
  if (p->len > 0) tcp_stream(skb, p, seq, st, egress);
  /* A half-closed connection may still carry answers: the entry goes when both
   * sides are done, or at once with a reset. */
  if (p->flags & KMON_TCP_FIN) {
    if (egress) {
      st->tx_fin = 1;
    } else {
      st->rx_fin = 1;
    }
  }
  if ((p->flags & KMON_TCP_RST) || (st->tx_fin && st->rx_fin)) {
    bpf_map_delete_elem(&tcp_state, &cookie);
  }
}

static __always_inline void on_packet(struct __sk_buff *skb, bool egress) {
  struct pkt p = {};
  if (!parse_pkt(skb, &p)) return;
  /* A client's queries go to a DNS port, its answers come from one. */
  if (!dns_port(egress ? p.dport : p.sport)) return;
  if (p.proto == IPPROTO_TCP) {
    on_tcp(skb, &p, egress);
    return;
  }
  if (p.len < KMON_DNS_HDR) {
    count_dns_lost(DNS_LOST_MALFORMED);
    return;
  }
  on_message(skb, p.off, egress);
}

SEC("cgroup_skb/egress")
int kmon_dns_egress(struct __sk_buff *skb) {
  on_packet(skb, true);
  return 1;
}

SEC("cgroup_skb/ingress")
int kmon_dns_ingress(struct __sk_buff *skb) {
  on_packet(skb, false);
  return 1;
}
