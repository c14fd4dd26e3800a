/* Shared between bpf/dns.bpf.c and collectors/dns.cc. */
#ifndef KMON_BPF_DNS_H_
#define KMON_BPF_DNS_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "bpf/kmon_common.h"

/* Histogram bounds the config may give (collectors.dns.latency_buckets). */
#define KMON_DNS_MAX_BOUNDS 16
/* Queries sent and not yet answered (or found timed out by user space). */
#define KMON_DNS_PENDING_MAX 16384
/* (cgroup, rcode) histograms and per-cgroup counters. */
#define KMON_DNS_HIST_MAX 4096
#define KMON_DNS_STATS_MAX 4096
/* TCP connections to DNS ports followed at once. */
#define KMON_DNS_TCP_MAX 16384
/* The `dns_ports` array has one slot per port. */
#define KMON_DNS_PORTS 65536
/* DNS messages parsed in one TCP segment (glibc writes its A and AAAA queries
 * in one writev); a segment with more leaves its socket unsynced. */
#define KMON_DNS_TCP_MSGS 4

/* One-entry control map, rewritten on reload. */
struct dns_config {
  __u64 bounds_ns[KMON_DNS_MAX_BOUNDS]; /* upper bounds, ascending */
  __u64 timeout_ns;                     /* an answer later than this is a timeout */
  __u32 nbounds;
  __u32 pad;
};

/* A query in flight: the socket it was sent from and its DNS ID. */
struct dns_pending_key {
  __u64 cookie; /* bpf_get_socket_cookie: unique per socket for the host's uptime */
  __u16 id;
  __u16 pad[3];
};

struct dns_pending {
  __u64 start_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the first send */
  __u64 cgroup_id;
};

struct dns_hist_key {
  __u64 cgroup_id;
  __u32 rcode; /* the header's 4-bit RCODE */
  __u32 pad;
};

/* slots[i] counts latencies <= bounds[i] and > bounds[i-1]; slots[nbounds] is +Inf.
 * Per-CPU, cumulative. */
struct dns_hist {
  __u64 count;
  __u64 sum_ns;
  __u64 slots[KMON_DNS_MAX_BOUNDS + 1];
};

/* Per cgroup, per-CPU, cumulative. */
struct dns_stats {
  __u64 timeouts; /* answered later than the timeout, or its query re-sent after it */
};

/* Keys of the per-CPU `dns_lost` array, the collector's own loss counters
 * (kmon_events_lost_total{collector="dns",reason=...}). */
enum dns_lost_reason {
  /* A packet to or from a DNS port that is not a DNS message kmon can read:
   * shorter than a header, an unassigned opcode, a query without exactly one
   * question, a response with more than one, a TCP length prefix smaller than a
   * header. Ignored, never timed. */
  DNS_LOST_MALFORMED = 0,
  /* A DNS-over-TCP stream kmon lost its place in (a segment with more than
   * KMON_DNS_TCP_MSGS messages, a length split across segments): the rest of that
   * connection is not parsed, rather than read from the middle of a message. */
  DNS_LOST_TCP_UNSYNCED = 1,
  DNS_LOST_MAX = 2,
};

/* Per TCP connection to a DNS port, by socket cookie: where in each direction's
 * byte stream the next DNS message (its 2-byte length) begins, so a segment that
 * continues a message is never read as a header. 0 in `synced`: lost; the
 * direction is not parsed. A connection without an entry (it began before kmon)
 * is not parsed either. The entry goes with the connection's RST or its second
 * FIN. */
struct dns_tcp_state {
  __u32 tx_next; /* TCP sequence number of the next query's length prefix */
  __u32 rx_next; /* of the next response's */
  __u32 tx_hdr;  /* a length prefix came alone: its header begins here (tx_split) */
  __u32 rx_hdr;
  __u8 tx_synced;
  __u8 rx_synced;
  __u8 tx_split;
  __u8 rx_split;
  __u8 tx_fin; /* a FIN was sent */
  __u8 rx_fin; /* a FIN was received */
  __u16 pad;
};

/* The length of a DNS message header (RFC 1035 section 4.1.1). */
#define KMON_DNS_HDR 12

enum dns_msg_kind { DNS_MSG_QUERY, DNS_MSG_RESPONSE, DNS_MSG_OTHER, DNS_MSG_MALFORMED };

/* What a 12-byte header says; only what the header alone tells is trusted.
 * Opcodes 3 and 7..15 are unassigned (RFC 6895); a query has exactly one question
 * (RFC 9619); a response echoes it, or has none (FORMERR, NOTIMP). Assigned
 * opcodes other than QUERY (IQUERY, STATUS, NOTIFY, UPDATE, DSO) are not timed.
 * Used by BPF and the tests. */
KMON_INLINE enum dns_msg_kind dns_classify(const __u8 h[KMON_DNS_HDR]) {
  __u8 opcode = (h[2] >> 3) & 0xf;
  __u16 qdcount = (__u16)(((__u16)h[4] << 8) | h[5]);
  if (opcode == 3 || opcode > 6) return DNS_MSG_MALFORMED;
  if (opcode != 0) return DNS_MSG_OTHER;
  if (!(h[2] & 0x80)) return qdcount == 1 ? DNS_MSG_QUERY : DNS_MSG_MALFORMED;
  return qdcount <= 1 ? DNS_MSG_RESPONSE : DNS_MSG_MALFORMED;
}

#ifdef __cplusplus
static_assert(sizeof(struct dns_config) == 144, "BPF ABI");
static_assert(sizeof(struct dns_pending_key) == 16, "BPF ABI");
static_assert(sizeof(struct dns_pending) == 16, "BPF ABI");
static_assert(sizeof(struct dns_hist_key) == 16, "BPF ABI");
static_assert(sizeof(struct dns_hist) == 152, "BPF ABI");
static_assert(sizeof(struct dns_stats) == 8, "BPF ABI");
static_assert(sizeof(struct dns_tcp_state) == 24, "BPF ABI");
#endif

#endif /* KMON_BPF_DNS_H_ */
