/* Shared between bpf/tcp.bpf.c and collectors/tcp.cc. */
#ifndef KMON_BPF_TCP_H_
#define KMON_BPF_TCP_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Histogram bounds the config may give (collectors.tcp.latency_buckets). */
#define KMON_TCP_MAX_BOUNDS 32
#define KMON_TCP_CONNS_MAX 65536
#define KMON_TCP_HIST_MAX 8192
#define KMON_TCP_EDGES_MAX 8192
#define KMON_TCP_STATS_MAX 8192
#define KMON_TCP_LISTEN_MAX 4096
#define KMON_TCP_LISTEN_SOCKS_MAX 16384
#define KMON_TCP_PORTS_MAX 1024
#define KMON_TCP_PEERS_MAX 131072

/* One-entry control map, rewritten on reload. */
struct tcp_config {
  __u64 bounds_ns[KMON_TCP_MAX_BOUNDS]; /* upper bounds, ascending */
  __u32 nbounds;
  __u32 filter_ports; /* 1: only server ports in `ports` */
  __u32 topology;     /* 1: record client -> server edges */
  __u32 peer_address; /* 1: keep every unresolved client address (external_peers: address);
                       * 0: keep only those in peer_addrs (pods of other nodes) */
};

/* Cumulative histogram: slots[i] counts values <= bounds[i] (not cumulative across
 * slots); slots[nbounds] is +Inf. */
struct tcp_hist {
  __u64 count;
  __u64 sum_ns;
  __u64 slots[KMON_TCP_MAX_BOUNDS + 1];
};

struct tcp_hist_key {
  __u64 cgroup_id;
  __u16 port;
  __u16 pad[3];
};

/* A client -> server edge; client_cgroup 0 means not seen on this host, and then
 * client_addr holds the peer (IPv4 as v4-mapped IPv6) when addresses are kept. With
 * topology off both client fields are zero, so there is one key per server and port.
 * Per-server request histograms are sums of edges, made in user space: one map
 * update per request. */
struct tcp_edge_key {
  __u64 client_cgroup;
  __u64 server_cgroup;
  __u8 client_addr[16];
  __u16 server_port;
  __u16 pad[3];
};

struct tcp_stats {
  __u64 opened_inbound;
  __u64 opened_outbound;
  __u64 connect_failures;
  __u64 retransmits;
  __u64 resets_sent;
  __u64 resets_received;
  __u64 tcp_bytes_sent;
  __u64 tcp_bytes_received;
  __u64 udp_bytes_sent;
  __u64 udp_bytes_received;
};

enum tcp_role { TCP_ROLE_UNKNOWN = 0, TCP_ROLE_SERVER = 1, TCP_ROLE_CLIENT = 2 };
enum tcp_phase { TCP_PHASE_IDLE = 0, TCP_PHASE_RECEIVING = 1, TCP_PHASE_SENDING = 2 };

/* Per-connection state, keyed by the socket's address. */
struct tcp_conn {
  __u64 cgroup_id;
  __u64 client_cgroup; /* server role: the peer's cgroup when it is on this host */
  __u64 req_start_ns;  /* first byte of the current request received */
  __u64 last_send_ns;  /* last byte of its reply sent */
  __u64 connect_start_ns;
  __u8 peer_addr[16];
  __u8 local_addr[16]; /* client role: the key of its client_socks entry */
  /* Bytes since the last flush into `stats` (at close): counted here so that a send
   * or receive costs one map lookup, not two. */
  __u64 bytes_sent;
  __u64 bytes_received;
  __u16 lport;
  __u8 role;
  __u8 phase;
  __u32 pad;
};

/* A socket's 4-tuple, addresses as IPv6 (IPv4 v4-mapped). */
struct tcp_tuple {
  __u8 saddr[16];
  __u8 daddr[16];
  __u16 sport;
  __u16 dport;
  __u32 netns;
};

/* listen_ports: a (network namespace, port) with at least one listening socket ->
 * how many (several: a SO_REUSEPORT group, one port on several addresses, IPv4 and
 * IPv6-only sockets on one port). */
struct tcp_listen_key {
  __u32 netns;
  __u16 port;
  __u16 pad;
};

/* listen_socks: the listening sockets counted in listen_ports, by socket inode (as
 * in /proc/net/tcp, so the start-time scan and BPF name a socket alike) and key. */
struct tcp_listen_sock {
  __u64 ino;
  struct tcp_listen_key key;
};

#ifdef __cplusplus
static_assert(sizeof(struct tcp_config) == 272, "BPF ABI");
static_assert(sizeof(struct tcp_hist) == 280, "BPF ABI");
static_assert(sizeof(struct tcp_hist_key) == 16, "BPF ABI");
static_assert(sizeof(struct tcp_edge_key) == 40, "BPF ABI");
static_assert(sizeof(struct tcp_stats) == 80, "BPF ABI");
static_assert(sizeof(struct tcp_conn) == 96, "BPF ABI");
static_assert(sizeof(struct tcp_tuple) == 40, "BPF ABI");
static_assert(sizeof(struct tcp_listen_key) == 8, "BPF ABI");
static_assert(sizeof(struct tcp_listen_sock) == 16, "BPF ABI");
#endif

#endif /* KMON_BPF_TCP_H_ */
