// SPDX-License-Identifier: GPL-2.0
/* TCP: Kmon's server-side request latency, connection events, bytes, and the
 * client -> server edges of the service topology.
 *
 * A request, on the server side of a connection, runs from the first byte the
 * server reads to the last byte of its reply; it ends when the next request begins
 * (the server reads again after replying) or when the connection starts to close,
 * so the last request of every connection counts too. No payload is parsed.
 *
 * Which side is the server: a passive open (SYN_RECV -> ESTABLISHED) is; an active
 * open (SYN_SENT) is not; a connection that existed before kmon started is the
 * server side when its local port is a listening port in its network namespace
 * (Kmon's rule). `listen_ports` counts the listening sockets of each (namespace,
 * port), entered by the user-space scan at start (through kmon_tcp_listener_found,
 * the same code) and here from LISTEN transitions; only connections kmon did not see
 * open look it up.
 *
 * All on stable tracepoints through tp_btf: sock_send_length/sock_recv_length
 * (6.3+), inet_sock_set_state, tcp_retransmit_skb, tcp_send_reset, tcp_receive_reset,
 * tcp_destroy_sock. A socket's workload is the cgroup that created it
 * (sk_cgrp_data), which an accepted socket inherits from its listener, so softirq
 * events are attributed right too (kmon_sock_cgroup, bpf/kmon_sock.bpf.h). Of these
 * hooks only tcp_send_reset is handed more than full sockets: a timewait socket
 * (TCP_TW_RST in tcp_v4_rcv/tcp_v6_rcv), or none at all.
 *
 * tp_btf arguments are BTF pointers: fields are read with plain loads (CO-RE
 * relocated through vmlinux.h's preserve_access_index), which the kernel turns into
 * fault-safe loads. That is several times cheaper than bpf_probe_read_kernel on
 * paths that run for every send and receive on the host. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bpf/kmon_common.bpf.h"
#include "bpf/kmon_sock.bpf.h"
#include "bpf/tcp.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define MSG_PEEK 2

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct tcp_config) tcp_config SEC(".maps");

/* Server ports to measure while tcp_config.filter_ports is set. */
KMON_MAP(BPF_MAP_TYPE_HASH, KMON_TCP_PORTS_MAX, __u16, __u8) ports SEC(".maps");

/* (netns, port) -> listening sockets there. This map and the next are allocated as
 * listeners come rather than preallocated: a host has few. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KMON_TCP_LISTEN_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct tcp_listen_key);
  __type(value, __u32);
} listen_ports SEC(".maps");

/* The sockets counted in listen_ports -> 1. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KMON_TCP_LISTEN_SOCKS_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct tcp_listen_sock);
  __type(value, __u8);
} listen_socks SEC(".maps");

/* Addresses of pods on other nodes (the cluster-wide pod-IP index, IPv6 or
 * v4-mapped) -> 1: a request from one keeps the client's address in its edge so
 * user space can name the pod, while other remote clients fold into one edge per
 * server and port. Filled as pods come, so not preallocated. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KMON_TCP_PEERS_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, __u8[16]);
  __type(value, __u8);
} peer_addrs SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_LRU_HASH, KMON_TCP_CONNS_MAX, __u64, struct tcp_conn) conns SEC(".maps");

/* Client-side sockets on this host: (address, port) -> cgroup. Keyed without the
 * server address so a client that reached the server through DNAT still matches. */
KMON_MAP(BPF_MAP_TYPE_LRU_HASH, KMON_TCP_CONNS_MAX, struct tcp_tuple,
         __u64) client_socks SEC(".maps");


KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_TCP_HIST_MAX, struct tcp_hist_key,
         struct tcp_hist) connect_hist SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_TCP_EDGES_MAX, struct tcp_edge_key,
         struct tcp_hist) edges SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_HASH, KMON_TCP_STATS_MAX, __u64, struct tcp_stats) stats SEC(".maps");

static const struct tcp_hist zero_hist;
static const struct tcp_stats zero_stats;
static const __u32 zero_count;

static __always_inline struct tcp_config *tcp_cfg(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&tcp_config, &zero);
}

static __always_inline __u32 sk_netns(const struct sock *sk) {
  return sk->__sk_common.skc_net.net->ns.inum;
}

/* The socket's inode number, what sock_i_ino() and so /proc/net/tcp give: cached in
 * struct sock as sk_ino by recent kernels (6.18 has it); before, only in the inode
 * itself, SOCK_INODE(sk->sk_socket), the struct socket_alloc that begins with the
 * socket. */
struct sock___ino {
  unsigned long sk_ino;
} __attribute__((preserve_access_index));

static __always_inline __u64 sk_ino(const struct sock *sk) {
  if (bpf_core_field_exists(struct sock___ino, sk_ino)) {
    return ((const struct sock___ino *)sk)->sk_ino;
  }
  struct socket *sock = sk->sk_socket;
  if (!sock) return 0;
  return BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
}

/* Addresses as IPv6; an IPv4 socket's as v4-mapped (::ffff:a.b.c.d), which is also
 * what an IPv6 socket talking to an IPv4 peer holds, so both meet in one form. */
static __always_inline void sk_addrs(const struct sock *sk, __u8 local[16], __u8 peer[16]) {
  __u16 family = sk->__sk_common.skc_family;
  if (family == AF_INET6) {
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

static __always_inline bool is_inet(const struct sock *sk) {
  __u16 family = sk->__sk_common.skc_family;
  return family == AF_INET || family == AF_INET6;
}

static __always_inline struct tcp_stats *stats_of(__u64 cgroup_id) {
  return kmon_lookup_or_init(&stats, &cgroup_id, &zero_stats);
}

/* Adds one value to a histogram; the bucket is found here from the configured bounds. */
static __always_inline void hist_add(void *map, void *key, __u64 value,
                                     const struct tcp_config *cfg) {
  struct tcp_hist *h = kmon_lookup_or_init(map, key, &zero_hist);
  if (!h) return;
  __u32 n = cfg->nbounds;
  __u32 i;
  for (i = 0; i < KMON_TCP_MAX_BOUNDS; i++) {
    if (i >= n || value <= cfg->bounds_ns[i]) break;
  }
  h->slots[i] += 1;
  h->count += 1;
  h->sum_ns += value;
}

static __always_inline void record_request(struct tcp_conn *c) {
  if (c->req_start_ns == 0 || c->last_send_ns < c->req_start_ns) return;
  struct tcp_config *cfg = tcp_cfg();
  if (!cfg) return;
  __u64 latency = c->last_send_ns - c->req_start_ns;
  c->req_start_ns = 0;
  c->phase = TCP_PHASE_IDLE;
  if (!kmon_cgroup_watched(c->cgroup_id)) return;
  __u16 port = c->lport;
  if (cfg->filter_ports && !bpf_map_lookup_elem(&ports, &port)) return;
  struct tcp_edge_key ek = {};
  ek.server_cgroup = c->cgroup_id;
  ek.server_port = port;
  if (cfg->topology) {
    ek.client_cgroup = c->client_cgroup;
    if (c->client_cgroup == 0 &&
        (cfg->peer_address || bpf_map_lookup_elem(&peer_addrs, c->peer_addr))) {
      __builtin_memcpy(ek.client_addr, c->peer_addr, 16);
    }
  }
  hist_add(&edges, &ek, latency, cfg);
}

/* The cgroup of the client socket at (addr, port) on this host, or 0. */
static __always_inline __u64 client_cgroup_of(const __u8 addr[16], __u16 port) {
  struct tcp_tuple t = {};
  __builtin_memcpy(t.saddr, addr, 16);
  t.sport = port;
  __u64 *cg = bpf_map_lookup_elem(&client_socks, &t);
  return cg ? *cg : 0;
}

/* Records a client socket and keeps its key in `c`: by the time the socket reaches
 * CLOSE the kernel has already released its port (skc_num reads 0). */
static __always_inline void remember_client(const struct sock *sk, struct tcp_conn *c) {
  struct tcp_tuple t = {};
  __u8 peer[16];
  sk_addrs(sk, t.saddr, peer);
  t.sport = sk->__sk_common.skc_num;
  __builtin_memcpy(c->local_addr, t.saddr, 16);
  c->lport = t.sport;
  bpf_map_update_elem(&client_socks, &t, &c->cgroup_id, BPF_ANY);
}

static __always_inline void forget_client(const struct tcp_conn *c) {
  struct tcp_tuple t = {};
  __builtin_memcpy(t.saddr, c->local_addr, 16);
  t.sport = c->lport;
  bpf_map_delete_elem(&client_socks, &t);
}

/* Server-side state for a connection: peer cgroup resolved once, at creation. */
static __always_inline void init_server(struct tcp_conn *c, const struct sock *sk) {
  __u8 local[16];
  sk_addrs(sk, local, c->peer_addr);
  __u16 peer_port = bpf_ntohs(sk->__sk_common.skc_dport);
  c->client_cgroup = client_cgroup_of(c->peer_addr, peer_port);
}

/* Counts a listening socket under its key, once: BPF_NOEXIST on its own entry makes
 * whichever of the tracepoint and the start-time scan comes first the one that
 * counts it. 1 when this call counted it. */
static __always_inline int listener_enter(const struct tcp_listen_sock *ls) {
  __u8 one = 1;
  long err = bpf_map_update_elem(&listen_socks, ls, &one, BPF_NOEXIST);
  if (err) {
    if (err != -KMON_EEXIST) kmon_count_lost(KMON_LOST_MAP_FULL);
    return 0;
  }
  __u32 *n = kmon_lookup_or_init(&listen_ports, &ls->key, &zero_count);
  if (!n) {
    /* No room for the key: uncounted, so its close takes nothing away either. */
    bpf_map_delete_elem(&listen_socks, ls);
    return 0;
  }
  __sync_fetch_and_add(n, 1);
  return 1;
}

/* Takes a counted listening socket away, and its key with the last one; only the
 * caller that deleted the socket's entry does. Not atomic with listener_enter(): when
 * a key's last socket leaves on one CPU while another socket of that key enters on
 * another, at the same instant, the entering one's add can go to the entry being
 * deleted (lost: the port's connections kmon did not see open are taken for clients
 * until a listener enters it again) or to that element reused for another key. */
static __always_inline int listener_leave(const struct tcp_listen_sock *ls) {
  if (bpf_map_delete_elem(&listen_socks, ls) != 0) return 0;
  __u32 *n = bpf_map_lookup_elem(&listen_ports, &ls->key);
  if (!n) return 1;
  __sync_fetch_and_add(n, (__u32)-1);
  if (*n == 0) bpf_map_delete_elem(&listen_ports, &ls->key);
  return 1;
}

/* The state of an established connection, created on first sight for one that was
 * open before kmon started. */
static __always_inline struct tcp_conn *conn_of(const struct sock *sk) {
  __u64 key = (__u64)sk;
  struct tcp_conn *c = bpf_map_lookup_elem(&conns, &key);
  if (c) return c;
  if (sk->__sk_common.skc_state != TCP_ESTABLISHED) return NULL;
  struct tcp_conn init = {};
  init.cgroup_id = kmon_sock_cgroup(sk);
  init.lport = sk->__sk_common.skc_num;
  struct tcp_listen_key lk = {.netns = sk_netns(sk), .port = init.lport};
  if (bpf_map_lookup_elem(&listen_ports, &lk)) {
    init.role = TCP_ROLE_SERVER;
    init_server(&init, sk);
  } else {
    init.role = TCP_ROLE_CLIENT;
    remember_client(sk, &init);
  }
  bpf_map_update_elem(&conns, &key, &init, BPF_NOEXIST);
  return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline void count_bytes(__u64 cgroup_id, bool tcp, int bytes, bool sent) {
  if (!kmon_cgroup_watched(cgroup_id)) return;
  struct tcp_stats *s = stats_of(cgroup_id);
  if (!s) return;
  if (tcp) {
    if (sent) s->tcp_bytes_sent += bytes;
    else s->tcp_bytes_received += bytes;
  } else {
    if (sent) s->udp_bytes_sent += bytes;
    else s->udp_bytes_received += bytes;
  }
}

/* UDP: bytes into `stats`. TCP: bytes into the connection's state (flushed at close). */
static __always_inline struct tcp_conn *on_data(const struct sock *sk, int bytes, bool sent) {
  __u16 proto = sk->sk_protocol;
  if (proto == IPPROTO_UDP) {
    count_bytes(kmon_sock_cgroup(sk), false, bytes, sent);
    return NULL;
  }
  if (proto != IPPROTO_TCP) return NULL;
  struct tcp_conn *c = conn_of(sk);
  if (!c) {
    count_bytes(kmon_sock_cgroup(sk), true, bytes, sent);
  } else if (sent) {
    c->bytes_sent += bytes;
  } else {
    c->bytes_received += bytes;
  }
  return c;
}

/* A connection's state goes: its bytes join the cgroup's totals. */
static __always_inline void conn_delete(__u64 key, struct tcp_conn *c) {
  if ((c->bytes_sent || c->bytes_received) && kmon_cgroup_watched(c->cgroup_id)) {
    struct tcp_stats *s = stats_of(c->cgroup_id);
    if (s) {
      s->tcp_bytes_sent += c->bytes_sent;
      s->tcp_bytes_received += c->bytes_received;
    }
  }
  bpf_map_delete_elem(&conns, &key);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(kmon_tcp_recv, struct sock *sk, int ret, int flags) {
  if (ret <= 0 || (flags & MSG_PEEK) || !is_inet(sk)) return 0;
  struct tcp_conn *c = on_data(sk, ret, false);
  if (!c || c->role != TCP_ROLE_SERVER) return 0;
  /* Reading after replying: the previous request is over, a new one starts. */
  if (c->phase == TCP_PHASE_SENDING) record_request(c);
  if (c->phase == TCP_PHASE_IDLE) {
    c->req_start_ns = bpf_ktime_get_ns();
    c->phase = TCP_PHASE_RECEIVING;
  }
  return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(kmon_tcp_send, struct sock *sk, int ret, int flags) {
  if (ret <= 0 || !is_inet(sk)) return 0;
  struct tcp_conn *c = on_data(sk, ret, true);
  if (!c || c->role != TCP_ROLE_SERVER || c->phase == TCP_PHASE_IDLE) return 0;
  c->last_send_ns = bpf_ktime_get_ns();
  c->phase = TCP_PHASE_SENDING;
  return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(kmon_tcp_state, const struct sock *sk, const int oldstate, const int newstate) {
  if (sk->sk_protocol != IPPROTO_TCP) return 0;
  __u64 key = (__u64)sk;

  /* A listening socket, entered at CLOSE -> LISTEN and taken away at LISTEN -> CLOSE
   * (close(), shutdown() or a listen() whose get_port() failed). A listener's clone
   * for a new connection also leaves LISTEN, for SYN_RECV: not a listener going away.
   * - Its port at LISTEN -> CLOSE is inet_sport, not skc_num: for a socket whose port
   *   the kernel chose (bind() to port 0, so no SOCK_BINDPORT_LOCK), tcp_set_state()
   *   calls inet_put_port(), which zeroes inet_num (skc_num), before
   *   inet_sk_state_store() fires this tracepoint. Read from skc_num, the key was
   *   port 0 and every such listener's entry stayed for good.
   * - listen() on a socket with no port yet binds one itself, after this tracepoint:
   *   inet_csk_listen_start() stores TCP_LISTEN before get_port() picks the port, and
   *   no tracepoint follows. Such a socket is not entered (the start-time scan enters
   *   one it finds); the connections it accepts are passive opens all the same. */
  if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE)) {
    struct tcp_listen_sock ls = {.ino = sk_ino(sk)};
    ls.key.netns = sk_netns(sk);
    if (newstate == TCP_LISTEN) {
      ls.key.port = sk->__sk_common.skc_num;
      if (ls.key.port) listener_enter(&ls);
    } else {
      ls.key.port = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
      listener_leave(&ls);
    }
    return 0;
  }

  if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {  // connect() in the caller
    struct tcp_conn init = {};
    init.cgroup_id = kmon_sock_cgroup(sk);
    init.role = TCP_ROLE_CLIENT;
    init.connect_start_ns = bpf_ktime_get_ns();
    bpf_map_update_elem(&conns, &key, &init, BPF_ANY);
    return 0;
  }

  if (oldstate == TCP_SYN_SENT) {
    struct tcp_conn *c = bpf_map_lookup_elem(&conns, &key);
    __u64 cg = c ? c->cgroup_id : kmon_sock_cgroup(sk);
    bool watched = kmon_cgroup_watched(cg);
    if (newstate == TCP_ESTABLISHED) {
      if (c) remember_client(sk, c);
      if (!watched) return 0;
      struct tcp_stats *s = stats_of(cg);
      if (s) s->opened_outbound += 1;
      struct tcp_config *cfg = tcp_cfg();
      if (c && c->connect_start_ns && cfg) {
        struct tcp_hist_key hk = {.cgroup_id = cg};
        hist_add(&connect_hist, &hk, bpf_ktime_get_ns() - c->connect_start_ns, cfg);
      }
    } else {
      if (watched) {
        struct tcp_stats *s = stats_of(cg);
        if (s) s->connect_failures += 1;
      }
      if (c) conn_delete(key, c);
    }
    return 0;
  }

  if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {  // passive open
    struct tcp_conn init = {};
    init.cgroup_id = kmon_sock_cgroup(sk);
    init.role = TCP_ROLE_SERVER;
    init.lport = sk->__sk_common.skc_num;
    init_server(&init, sk);
    bpf_map_update_elem(&conns, &key, &init, BPF_ANY);
    if (kmon_cgroup_watched(init.cgroup_id)) {
      struct tcp_stats *s = stats_of(init.cgroup_id);
      if (s) s->opened_inbound += 1;
    }
    return 0;
  }

  if (oldstate == TCP_ESTABLISHED || newstate == TCP_CLOSE) {
    struct tcp_conn *c = bpf_map_lookup_elem(&conns, &key);
    if (!c) return 0;
    /* The connection starts closing: its last request is complete. */
    if (c->role == TCP_ROLE_SERVER && c->phase == TCP_PHASE_SENDING) record_request(c);
    if (newstate == TCP_CLOSE) {
      if (c->role == TCP_ROLE_CLIENT) forget_client(c);
      conn_delete(key, c);
    }
  }
  return 0;
}

/* kmon_tcp_listener_found and kmon_tcp_listener_gone are run by user space (never
 * attached) for listening sockets of the start-time scan of /proc/<pid>/net/tcp{,6}
 * (collectors/tcp.cc): args[0] the socket's inode, args[1] its network namespace,
 * args[2] its port. They enter and take away a socket the way the tracepoint does, so
 * a socket both see is counted once, and return 1 when they changed its count. */
static __always_inline struct tcp_listen_sock scanned_listener(
    const struct bpf_raw_tracepoint_args *ctx) {
  struct tcp_listen_sock ls = {.ino = ctx->args[0]};
  ls.key.netns = ctx->args[1];
  ls.key.port = ctx->args[2];
  return ls;
}

SEC("raw_tp")
int kmon_tcp_listener_found(struct bpf_raw_tracepoint_args *ctx) {
  struct tcp_listen_sock ls = scanned_listener(ctx);
  return listener_enter(&ls);
}

/* A socket the scan found that no longer listens when it looks again: one that
 * closed between being read and being entered, which no tracepoint takes away. */
SEC("raw_tp")
int kmon_tcp_listener_gone(struct bpf_raw_tracepoint_args *ctx) {
  struct tcp_listen_sock ls = scanned_listener(ctx);
  return listener_leave(&ls);
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(kmon_tcp_destroy, struct sock *sk) {
  __u64 key = (__u64)sk;
  struct tcp_conn *c = bpf_map_lookup_elem(&conns, &key);
  if (c) conn_delete(key, c);
  return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(kmon_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb) {
  __u64 cg = kmon_sock_cgroup(sk);
  if (!kmon_cgroup_watched(cg)) return 0;
  struct tcp_stats *s = stats_of(cg);
  if (s) s->retransmits += 1;
  return 0;
}

/* Node level (cgroup 0) when sk is NULL, a reset answering a packet no socket
 * wanted, or a timewait socket, one answering a segment it does not accept (e.g.
 * data after the close); a full socket's workload otherwise. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(kmon_tcp_send_reset, const struct sock *sk) {
  __u64 cg = kmon_sock_cgroup(sk);
  if (cg && !kmon_cgroup_watched(cg)) return 0;
  struct tcp_stats *s = stats_of(cg);
  if (s) s->resets_sent += 1;
  return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(kmon_tcp_recv_reset, struct sock *sk) {
  __u64 cg = kmon_sock_cgroup(sk);
  if (!kmon_cgroup_watched(cg)) return 0;
  struct tcp_stats *s = stats_of(cg);
  if (s) s->resets_received += 1;
  return 0;
}
