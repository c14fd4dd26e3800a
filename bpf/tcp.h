/* Shared between bpf/tcp.bpf.c and collectors/tcp.cc. */
#ifndef KMON_BPF_TCP_H_
#define KMON_BPF_TCP_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Histogram bounds the config may give (collectors.tcp.latency_buckets). */
#define KMON_TCP_MAX_BOUNDS 32
/* Most client sockets on this host remembered for the topology (client_socks). */
#define KMON_TCP_CLIENTS_MAX 65536
/* Request histograms, per server cgroup and port: per-CPU, so each costs its value
 * (280 bytes) times the possible CPUs; allocated as servers come, never preallocated. */
#define KMON_TCP_REQ_MAX 512
#define KMON_TCP_HIST_MAX 8192
#define KMON_TCP_EDGES_MAX 8192
#define KMON_TCP_STATS_MAX 4096
#define KMON_TCP_LISTEN_MAX 4096
#define KMON_TCP_LISTEN_SOCKS_MAX 16384
#define KMON_TCP_PEERS_MAX 131072
/* Words of the server-port bitmap in tcp_config: one bit per port. */
#define KMON_TCP_PORT_WORDS (65536 / 64)

/* One-entry control map, rewritten on reload. */
struct tcp_config {
  __u64 bounds_ns[KMON_TCP_MAX_BOUNDS]; /* upper bounds, ascending */
  __u32 nbounds;
  __u32 filter_ports; /* 1: only server ports set in port_bits */
  __u32 topology;     /* 1: record client -> server edges */
  __u32 peer_address; /* 1: keep every unresolved client address (external_peers: address);
                       * 0: keep only those in peer_addrs (pods of other nodes) */
  /* Bumped by user space at each collection and reload: a connection that sees a
   * new epoch flushes its bytes into `stats` and asks again whether its cgroup is
   * watched (tcp_conn.epoch). */
  __u32 epoch;
  /* 1: requests are counted through this CPU's `req_cache` (user space runs
   * kmon_tcp_flush on every CPU before it reads); 0: straight into the maps. */
  __u32 cache;
  /* Bumped by user space when the bounds change: a cache way's counts taken under
   * other bounds are dropped, not written back into slots that mean something else. */
  __u32 generation;
  __u32 pad;
  /* Server ports measured while filter_ports is set: bit (port % 64) of word
   * port / 64. In the config entry, which every request reads anyway, so the
   * filter costs no map lookup of its own. */
  __u64 port_bits[KMON_TCP_PORT_WORDS];
};

/* Cumulative histogram: slots[i] counts values <= bounds[i] (not cumulative across
 * slots); slots[nbounds] is +Inf. */
struct tcp_hist {
  __u64 count;
  __u64 sum_ns;
  __u64 slots[KMON_TCP_MAX_BOUNDS + 1];
};

/* The twin keys of a program that interrupted another on its CPU
 * (bpf/kmon_nest.bpf.h): `stats` under cgroup | KMON_TCP_NESTED_CGROUP (cgroup ids never use
 * the top bit), req_hist with pad[0] = KMON_TCP_NESTED_HIST. */
#define KMON_TCP_NESTED_CGROUP (1ULL << 63)
#define KMON_TCP_NESTED_HIST 1

/* req_hist: (server cgroup, port); connect_hist: (client cgroup, 0). */
struct tcp_hist_key {
  __u64 cgroup_id;
  __u16 port;
  __u16 pad[3];
};

/* A client -> server edge; client_cgroup 0 means not seen on this host, and then
 * client_addr holds the peer (IPv4 as v4-mapped IPv6) when addresses are kept.
 * Recorded only while the topology is on; the request histograms of
 * kmon_tcp_request_duration_seconds are req_hist's. */
struct tcp_edge_key {
  __u64 client_cgroup;
  __u64 server_cgroup;
  __u8 client_addr[16];
  __u16 server_port;
  __u16 pad[3];
};

/* Counters of a cgroup. active_* go up at an open and down at the close, each on
 * whichever CPU it happens: one CPU's copy may wrap below zero, the sum over CPUs
 * is the number open (as a two's-complement u64 sum). */
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
  __u64 active_inbound;
  __u64 active_outbound;
};

/* CLOSED: the connection reached TCP_CLOSE; the state stays with the socket until
 * the kernel frees both. */
enum tcp_role {
  TCP_ROLE_UNKNOWN = 0,
  TCP_ROLE_SERVER = 1,
  TCP_ROLE_CLIENT = 2,
  TCP_ROLE_CLOSED = 3
};
enum tcp_phase { TCP_PHASE_IDLE = 0, TCP_PHASE_RECEIVING = 1, TCP_PHASE_SENDING = 2 };

/* A connection flushes its bytes into `stats` once it holds this many. */
#define KMON_TCP_FLUSH_BYTES 65536
/* tcp_conn.flags */
#define TCP_CONN_WATCHED 1 /* its cgroup was watched when last decided */
#define TCP_CONN_ACTIVE 2  /* counted in its cgroup's active_* */

/* Per-connection state, in the socket's own local storage (the `conns` map of
 * type BPF_MAP_TYPE_SK_STORAGE): made at the open (or at first sight for a
 * connection open before kmon), freed by the kernel with the socket. The kernel
 * keeps it 8 bytes into a cache line of its own: what every send and receive
 * touches is in the first 56 bytes, the peer's address after them. */
struct tcp_conn {
  __u64 cgroup_id;
  __u64 client_cgroup; /* server role: the peer's cgroup when it is on this host */
  __u64 start_ns;      /* server: first byte of the current request received;
                        * client: connect() called, until established */
  __u64 last_send_ns;  /* server: last byte of its reply sent */
  /* Bytes not yet in `stats`: flushed at the first send or receive of each epoch,
   * every KMON_TCP_FLUSH_BYTES and at the close, so that the others cost no map
   * lookup. Below 2^16 + 2^31 (one send or receive adds less than 2^31). */
  __u32 bytes_sent;
  __u32 bytes_received;
  __u32 epoch; /* tcp_config.epoch when last flushed and decided */
  __u16 lport;
  __u8 role;
  __u8 phase;
  __u8 flags;
  __u8 pad[7];
  __u8 addr[16]; /* server: the peer's address; client: its own, the key of its
                  * client_socks entry (by TCP_CLOSE the kernel has released the port) */
};

/* A per-CPU write-back cache in front of `req_hist` and `edges` (the one entry of the
 * per-CPU array `req_cache`): a request of a (server, port, on-host or folded
 * client) that this CPU counted recently adds to its way's histogram with plain adds,
 * no hash lookup and no atomic. A way is written back into both maps when another
 * key takes it, and by kmon_tcp_flush, which user space runs on every CPU before it
 * reads them. Requests whose edge keeps the client's address (remote clients, many
 * keys) and programs that interrupted another of the object on their CPU go straight
 * into the maps. 16 x 328 bytes per CPU. */
#define KMON_TCP_REQ_CACHE_WAYS 16
struct tcp_req_way {
  struct tcp_edge_key key; /* server_port 0: empty; client_addr always zero */
  __u32 generation;        /* tcp_config.generation its counts were taken under */
  __u32 edge;              /* 1: written back into `edges` too (the topology was on) */
  struct tcp_hist hist;
};
struct tcp_req_cache {
  struct tcp_req_way ways[KMON_TCP_REQ_CACHE_WAYS];
};

/* client_socks: a client socket on this host by its address and port, without the
 * server address so a client that reached the server through DNAT still matches. */
struct tcp_client_key {
  __u8 saddr[16];
  __u16 sport;
  __u16 pad;
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
#include <cstddef>
static_assert(sizeof(struct tcp_config) == 288 + 8 * KMON_TCP_PORT_WORDS, "BPF ABI");
static_assert(sizeof(struct tcp_req_way) == 328, "BPF ABI");
static_assert(sizeof(struct tcp_hist) == 280, "BPF ABI");
static_assert(sizeof(struct tcp_hist_key) == 16, "BPF ABI");
static_assert(sizeof(struct tcp_edge_key) == 40, "BPF ABI");
static_assert(sizeof(struct tcp_stats) == 96, "BPF ABI");
static_assert(sizeof(struct tcp_conn) == 72, "BPF ABI");
static_assert(offsetof(struct tcp_conn, addr) == 56, "the hot part in the storage's first line");
static_assert(sizeof(struct tcp_client_key) == 20, "BPF ABI");
static_assert(sizeof(struct tcp_listen_key) == 8, "BPF ABI");
static_assert(sizeof(struct tcp_listen_sock) == 16, "BPF ABI");
#endif

#endif /* KMON_BPF_TCP_H_ */
