// SPDX-License-Identifier: GPL-2.0
/* TCP: Kmon's server-side request latency, connection events, bytes, and the
 * client -> server edges of the service topology.
 *
 * A request, on the server side of a connection, runs from the server's first read
 * of it (tcp_received_ns) to the sending of the last byte of its reply
 * (tcp_sent_ns); it ends when the next request begins
 * (the server reads again after replying) or when the connection starts to close,
 * so the last request of every connection counts too. No payload is parsed. It is
 * recorded through this CPU's write-back cache (bpf/tcp_request.bpf.h).
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
 * A connection's state lives in its socket's local storage (`conns`, an
 * SK_STORAGE map): made at the open, or at first sight for a connection open before
 * kmon started, and freed by the kernel with the socket, so nothing is
 * preallocated, nothing is evicted and closing costs no map update. Only
 * tcp_send_reset can be handed a socket without room for it (a timewait socket):
 * it never looks there. The state remembers the socket's cgroup, whether it is
 * watched and the bytes passed, so a send or receive costs one storage lookup: the
 * bytes go into `stats` at the first event of each epoch (user space starts one at
 * each collection), every 64 KiB and at the close. The active gauges are counters in `stats`
 * that an open raises and its close lowers.
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
#include "bpf/kmon_hist.bpf.h"
#include "bpf/kmon_nest.bpf.h"
#include "bpf/kmon_sock.bpf.h"
#include "bpf/tcp.h"
#include "bpf/tcp_request.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define MSG_PEEK 2

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

struct {
  __uint(type, BPF_MAP_TYPE_SK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct tcp_conn);
} conns SEC(".maps");

/* Client sockets on this host -> their cgroup, for the server side to name its
 * client: entered at the active open while the topology is on, deleted at the
 * close. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KMON_TCP_CLIENTS_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct tcp_client_key);
  __type(value, __u64);
} client_socks SEC(".maps");

/* Maps of values allocated as keys come (BPF_F_NO_PREALLOC), as req_hist and edges
 * (bpf/tcp_request.bpf.h): memory for the keys in use, not for max_entries (times
 * the CPUs for the per-CPU one).
 * - connect_hist: shared, with atomic adds; a client's connects are spread over
 *   many keys, and a per-CPU copy of each would be memory times the CPUs for little
 *   contention saved.
 * - stats: per-CPU, every UDP send and receive of a cgroup adds to one key. */
KMON_MAP_FLAGS(BPF_MAP_TYPE_HASH, KMON_TCP_HIST_MAX, struct tcp_hist_key, struct tcp_hist,
               BPF_F_NO_PREALLOC) connect_hist SEC(".maps");
KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_TCP_STATS_MAX, __u64, struct tcp_stats,
               BPF_F_NO_PREALLOC) stats SEC(".maps");

/* A program that interrupted another of this object on its CPU (a softirq's state
 * change, reset or retransmit in the middle of a task's send or receive) adds under
 * its cgroup's twin keys (KMON_TCP_NESTED_CGROUP, KMON_TCP_NESTED_HIST), which user
 * space folds in: the two never interleave their plain adds (bpf/kmon_nest.bpf.h). */

static const struct tcp_stats zero_stats;
static const __u32 zero_count;

static __always_inline __u32 sk_netns(const struct sock *sk) {
  return sk->__sk_common.skc_net.net->ns.inum;
}

static __always_inline bool is_inet(const struct sock *sk) {
  __u16 family = sk->__sk_common.skc_family;
  return family == AF_INET || family == AF_INET6;
}

static __always_inline struct tcp_stats *stats_of(__u64 cgroup_id) {
  if (kmon_nested()) cgroup_id |= KMON_TCP_NESTED_CGROUP;
  return kmon_lookup_or_init(&stats, &cgroup_id, &zero_stats);
}

/* The connection's bytes so far into its cgroup's counters, when watched. */
static __always_inline void conn_flush(struct tcp_conn *c) {
  if (!(c->bytes_sent | c->bytes_received)) return;
  if (c->flags & TCP_CONN_WATCHED) {
    struct tcp_stats *s = stats_of(c->cgroup_id);
    if (s) {
      s->tcp_bytes_sent += c->bytes_sent;
      s->tcp_bytes_received += c->bytes_received;
    }
  }
  c->bytes_sent = c->bytes_received = 0;
}

/* Whether the connection's cgroup is watched is decided at the open and remembered;
 * at the first event of each new epoch (a collection, a reload) its bytes are
 * flushed and the question is asked again (targets changed, a pod became known),
 * so that the other sends and receives cost no map lookup but the storage's. */
static __always_inline void conn_sync(struct tcp_conn *c, const struct tcp_config *cfg) {
  if (c->epoch == cfg->epoch) return;
  c->epoch = cfg->epoch;
  conn_flush(c);
  if (kmon_cgroup_watched(c->cgroup_id)) c->flags |= TCP_CONN_WATCHED;
  else c->flags &= ~TCP_CONN_WATCHED;
}

/* The cgroup of the client socket at (addr, port) on this host, or 0. */
static __always_inline __u64 client_cgroup_of(const __u8 addr[16], __u16 port) {
  struct tcp_client_key k = {};
  __builtin_memcpy(k.saddr, addr, 16);
  k.sport = port;
  __u64 *cg = bpf_map_lookup_elem(&client_socks, &k);
  return cg ? *cg : 0;
}

/* A client socket's own address and port, kept in `c`: by the time the socket
 * reaches CLOSE the kernel has already released its port (skc_num reads 0). Entered
 * in client_socks while the topology is on, which alone asks for it. */
static __always_inline void remember_client(const struct sock *sk, struct tcp_conn *c) {
  __u8 peer[16];
  kmon_sk_addrs(sk, c->addr, peer);
  c->lport = sk->__sk_common.skc_num;
  struct tcp_config *cfg = tcp_cfg();
  if (!cfg || !cfg->topology) return;
  struct tcp_client_key k = {};
  __builtin_memcpy(k.saddr, c->addr, 16);
  k.sport = c->lport;
  if (bpf_map_update_elem(&client_socks, &k, &c->cgroup_id, BPF_ANY) != 0) {
    kmon_count_lost(KMON_LOST_MAP_FULL);
  }
}

static __always_inline void forget_client(const struct tcp_conn *c) {
  if (c->lport == 0) return;  // never established
  struct tcp_client_key k = {};
  __builtin_memcpy(k.saddr, c->addr, 16);
  k.sport = c->lport;
  bpf_map_delete_elem(&client_socks, &k);
}

/* Server-side state for a connection: peer cgroup resolved once, at creation. */
static __always_inline void init_server(struct tcp_conn *c, const struct sock *sk) {
  __u8 local[16];
  kmon_sk_addrs(sk, local, c->addr);
  __u16 peer_port = bpf_ntohs(sk->__sk_common.skc_dport);
  c->client_cgroup = client_cgroup_of(c->addr, peer_port);
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

/* One more open connection of its cgroup, when watched: counted in active_* and
 * remembered, so the close takes back exactly what the open added. */
static __always_inline void conn_opened(struct tcp_conn *c, bool inbound) {
  if (!(c->flags & TCP_CONN_WATCHED)) return;
  struct tcp_stats *s = stats_of(c->cgroup_id);
  if (!s) return;
  if (inbound) {
    s->opened_inbound += 1;
    s->active_inbound += 1;
  } else {
    s->opened_outbound += 1;
    s->active_outbound += 1;
  }
  c->flags |= TCP_CONN_ACTIVE;
}

/* A connection open before kmon started, met now: active, not opened. */
static __always_inline void conn_met(struct tcp_conn *c) {
  if (!(c->flags & TCP_CONN_WATCHED)) return;
  struct tcp_stats *s = stats_of(c->cgroup_id);
  if (!s) return;
  if (c->role == TCP_ROLE_SERVER) s->active_inbound += 1;
  else s->active_outbound += 1;
  c->flags |= TCP_CONN_ACTIVE;
}

/* The connection is closed: its bytes into its cgroup's counters, itself out of its
 * active gauge; its state stays with the socket as CLOSED until the kernel frees
 * both. */
static __always_inline void conn_close(struct tcp_conn *c) {
  if (c->role == TCP_ROLE_CLIENT) forget_client(c);
  bool bytes = (c->flags & TCP_CONN_WATCHED) && (c->bytes_sent | c->bytes_received);
  if (bytes || (c->flags & TCP_CONN_ACTIVE)) {  // one lookup for both
    struct tcp_stats *s = stats_of(c->cgroup_id);
    if (s && bytes) {
      s->tcp_bytes_sent += c->bytes_sent;
      s->tcp_bytes_received += c->bytes_received;
    }
    if (s && (c->flags & TCP_CONN_ACTIVE)) {
      if (c->role == TCP_ROLE_SERVER) s->active_inbound -= 1;
      else s->active_outbound -= 1;
    }
  }
  c->bytes_sent = c->bytes_received = 0;
  c->flags &= ~TCP_CONN_ACTIVE;
  c->role = TCP_ROLE_CLOSED;
}

/* The socket's connection state, made as a copy of `init` with its watched answer
 * decided now (kept with the socket until the kernel frees it); NULL, counted as
 * lost, when the kernel had no memory for it. */
static __always_inline struct tcp_conn *conn_new(const struct sock *sk,
                                                 const struct tcp_conn *init) {
  struct sock *s = (struct sock *)sk;
  struct tcp_conn *c = bpf_sk_storage_get(&conns, s, 0, BPF_SK_STORAGE_GET_F_CREATE);
  /* Another CPU made it first (-EEXIST comes back as NULL): that one. */
  if (!c) c = bpf_sk_storage_get(&conns, s, 0, 0);
  if (!c) {
    kmon_count_lost(KMON_LOST_MAP_FULL);
    return NULL;
  }
  *c = *init;
  struct tcp_config *cfg = tcp_cfg();
  if (cfg) c->epoch = cfg->epoch;
  if (kmon_cgroup_watched(c->cgroup_id)) c->flags |= TCP_CONN_WATCHED;
  return c;
}

/* The state of an established connection, made on first sight for one that was
 * open before kmon started. */
static __always_inline struct tcp_conn *conn_of(const struct sock *sk) {
  struct tcp_conn *c = bpf_sk_storage_get(&conns, (struct sock *)sk, 0, 0);
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
  c = conn_new(sk, &init);
  if (c) conn_met(c);
  return c;
}

static __always_inline void add_bytes(struct tcp_stats *s, bool tcp, int bytes, bool sent) {
  if (tcp) {
    if (sent) s->tcp_bytes_sent += bytes;
    else s->tcp_bytes_received += bytes;
  } else {
    if (sent) s->udp_bytes_sent += bytes;
    else s->udp_bytes_received += bytes;
  }
}

/* UDP: bytes into `stats`. TCP: bytes into the connection's state (flushed into
 * `stats` each epoch, every KMON_TCP_FLUSH_BYTES and at the close); into `stats`
 * for a connection without
 * state (kmon met it after its establishment was over). Returns the TCP
 * connection's state. */
static __always_inline struct tcp_conn *on_data(const struct sock *sk, int bytes, bool sent) {
  __u16 proto = sk->sk_protocol;
  if (proto == IPPROTO_TCP) {
    struct tcp_conn *c = conn_of(sk);
    struct tcp_config *cfg = tcp_cfg();
    if (c && cfg) {
      conn_sync(c, cfg);
      if (sent) c->bytes_sent += bytes;
      else c->bytes_received += bytes;
      /* An idle connection keeps what it holds until its next event: at most this. */
      if (c->bytes_sent + c->bytes_received >= KMON_TCP_FLUSH_BYTES) conn_flush(c);
      return c;
    }
  } else if (proto != IPPROTO_UDP) {
    return NULL;
  }
  __u64 cg = kmon_sock_cgroup(sk);
  if (!kmon_cgroup_watched(cg)) return NULL;
  struct tcp_stats *s = stats_of(cg);
  if (s) add_bytes(s, proto == IPPROTO_TCP, bytes, sent);
  return NULL;
}

/* libbpf 1.1 has no bpf_core_cast: the kfunc it wraps. The verifier replaces the
 * call with a move; loads through the result are fault-safe, like tp_btf's. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

static __always_inline const struct tcp_sock *tcp_sk_of(const struct sock *sk) {
  return bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
}

/* When a receive on a TCP socket read its bytes: the clock the socket read last
 * (tcp_clock_cache: tcp_mstamp_refresh, ktime_get_ns(), the clock of
 * bpf_ktime_get_ns). tcp_recvmsg reads it itself after each copy to the reader
 * (tcp_rcv_space_adjust), so it is the read's moment, a µs before the helper would
 * read it: a request that waited in the socket counts from its read, as it did
 * with the helper. Three loads for a ~100 ns helper call (kmon_common.bpf.h). A
 * receive path that does not read the clock (kTLS takes records from its parser)
 * leaves an older one: the arrival of the last segment taken in, or a transmit
 * after it; one older than the previous reply (`after`) did not see this request
 * come, and the helper dates the read instead. */
static __always_inline __u64 tcp_received_ns(const struct sock *sk, __u64 after) {
  __u64 at = tcp_sk_of(sk)->tcp_clock_cache;
  if (at && at >= after) return at;
  return bpf_ktime_get_ns();
}

static __always_inline int kmon_tcp_recv_body(struct sock *sk, int ret, int flags) {
  if (ret <= 0 || (flags & MSG_PEEK) || !is_inet(sk)) return 0;
  struct tcp_conn *c = on_data(sk, ret, false);
  if (!c || c->role != TCP_ROLE_SERVER) return 0;
  /* Reading after replying: the previous request is over, a new one starts. */
  if (c->phase == TCP_PHASE_SENDING) record_request(c);
  if (c->phase == TCP_PHASE_IDLE) {
    c->start_ns = tcp_received_ns(sk, c->last_send_ns);
    c->phase = TCP_PHASE_RECEIVING;
  }
  return 0;
}
SEC("tp_btf/sock_recv_length")
int BPF_PROG(kmon_tcp_recv, struct sock *sk, int ret, int flags) {
  return KMON_RUN_NESTABLE(kmon_tcp_recv_body(sk, ret, flags));
}

/* When a send on a TCP socket has just ended. Where all that was written has gone
 * out (snd_nxt reached write_seq), it went out in tcp_write_xmit, which read the
 * clock (tcp_mstamp_refresh: tcp_clock_cache = ktime_get_ns(), the clock of
 * bpf_ktime_get_ns) after this send's bytes were queued: the reply's last byte left
 * then, a few µs before the send returned (or an ACK's processing read the clock
 * again in between, later still). Three loads for a ~100 ns helper call
 * (kmon_common.bpf.h). Bytes still queued (a full window, TCP small queues, cork,
 * Nagle) are dated by the helper, when the send returned: the socket's clock may
 * then be older than the send (autocorking skips the transmit that reads it). */
static __always_inline __u64 tcp_sent_ns(const struct sock *sk) {
  const struct tcp_sock *tp = tcp_sk_of(sk);
  __u64 at = tp->tcp_clock_cache;
  if (at && tp->snd_nxt == tp->write_seq) return at;
  return bpf_ktime_get_ns();
}

static __always_inline int kmon_tcp_send_body(struct sock *sk, int ret, int flags) {
  if (ret <= 0 || !is_inet(sk)) return 0;
  struct tcp_conn *c = on_data(sk, ret, true);
  if (!c || c->role != TCP_ROLE_SERVER || c->phase == TCP_PHASE_IDLE) return 0;
  c->last_send_ns = tcp_sent_ns(sk);
  c->phase = TCP_PHASE_SENDING;
  return 0;
}
SEC("tp_btf/sock_send_length")
int BPF_PROG(kmon_tcp_send, struct sock *sk, int ret, int flags) {
  return KMON_RUN_NESTABLE(kmon_tcp_send_body(sk, ret, flags));
}

static __always_inline int kmon_tcp_state_body(const struct sock *sk, const int oldstate,
                                               const int newstate) {
  if (sk->sk_protocol != IPPROTO_TCP) return 0;
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
    struct tcp_listen_sock ls = {.ino = kmon_sk_ino(sk)};
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
    init.start_ns = bpf_ktime_get_ns();
    conn_new(sk, &init);
    return 0;
  }

  if (oldstate == TCP_SYN_SENT) {
    struct tcp_conn *c = bpf_sk_storage_get(&conns, (struct sock *)sk, 0, 0);
    if (c && c->role != TCP_ROLE_CLIENT) c = NULL;
    if (newstate == TCP_ESTABLISHED) {
      if (!c) {  // connect() called before kmon started: counted, not timed
        __u64 cg = kmon_sock_cgroup(sk);
        struct tcp_stats *s = kmon_cgroup_watched(cg) ? stats_of(cg) : NULL;
        if (s) s->opened_outbound += 1;
        return 0;
      }
      remember_client(sk, c);
      __u64 start = c->start_ns;
      c->start_ns = 0;
      conn_opened(c, false);
      struct tcp_config *cfg = tcp_cfg();
      if (start && cfg && (c->flags & TCP_CONN_WATCHED)) {
        struct tcp_hist_key hk = {.cgroup_id = c->cgroup_id};
        __u64 d = bpf_ktime_get_ns() - start;
        hist_add_shared(&connect_hist, &hk, d, slot_of(cfg, d));
      }
    } else {
      __u64 cg = c ? c->cgroup_id : kmon_sock_cgroup(sk);
      if (kmon_cgroup_watched(cg)) {
        struct tcp_stats *s = stats_of(cg);
        if (s) s->connect_failures += 1;
      }
      if (c) conn_close(c);
    }
    return 0;
  }

  if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {  // passive open
    struct tcp_conn init = {};
    init.cgroup_id = kmon_sock_cgroup(sk);
    init.role = TCP_ROLE_SERVER;
    init.lport = sk->__sk_common.skc_num;
    init_server(&init, sk);
    struct tcp_conn *c = conn_new(sk, &init);
    if (c) {
      conn_opened(c, true);
    } else if (kmon_cgroup_watched(init.cgroup_id)) {  // opened, never active
      struct tcp_stats *s = stats_of(init.cgroup_id);
      if (s) s->opened_inbound += 1;
    }
    return 0;
  }

  if (oldstate == TCP_ESTABLISHED || newstate == TCP_CLOSE) {
    struct tcp_conn *c = bpf_sk_storage_get(&conns, (struct sock *)sk, 0, 0);
    if (!c || c->role == TCP_ROLE_CLOSED) return 0;
    /* The connection starts closing: its last request is complete. */
    if (c->role == TCP_ROLE_SERVER && c->phase == TCP_PHASE_SENDING) {
      record_request(c);
    }
    if (newstate == TCP_CLOSE) conn_close(c);
  }
  return 0;
}
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(kmon_tcp_state, const struct sock *sk, const int oldstate, const int newstate) {
  return KMON_RUN_NESTABLE(kmon_tcp_state_body(sk, oldstate, newstate));
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

/* Run by user space on each CPU in turn (never attached) before it reads req_hist
 * or edges: this CPU's request cache into them (bpf/tcp_request.bpf.h). */
SEC("raw_tp")
int kmon_tcp_flush(void *ctx) {
  return tcp_cache_flush();
}

/* Every socket is closed before the kernel destroys it, so its state is CLOSED here
 * already; this takes one whose close was missed out of the active gauge. */
static __always_inline int kmon_tcp_destroy_body(struct sock *sk) {
  struct tcp_conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);
  if (c && c->role != TCP_ROLE_CLOSED) conn_close(c);
  return 0;
}
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(kmon_tcp_destroy, struct sock *sk) {
  return KMON_RUN_NESTABLE(kmon_tcp_destroy_body(sk));
}

static __always_inline int kmon_tcp_retransmit_body(const struct sock *sk,
                                                    const struct sk_buff *skb) {
  __u64 cg = kmon_sock_cgroup(sk);
  if (!kmon_cgroup_watched(cg)) return 0;
  struct tcp_stats *s = stats_of(cg);
  if (s) s->retransmits += 1;
  return 0;
}
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(kmon_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb) {
  return KMON_RUN_NESTABLE(kmon_tcp_retransmit_body(sk, skb));
}

/* Node level (cgroup 0) when sk is NULL, a reset answering a packet no socket
 * wanted, or a timewait socket, one answering a segment it does not accept (e.g.
 * data after the close); a full socket's workload otherwise. */
static __always_inline int kmon_tcp_send_reset_body(const struct sock *sk) {
  __u64 cg = kmon_sock_cgroup(sk);
  if (cg && !kmon_cgroup_watched(cg)) return 0;
  struct tcp_stats *s = stats_of(cg);
  if (s) s->resets_sent += 1;
  return 0;
}
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(kmon_tcp_send_reset, const struct sock *sk) {
  return KMON_RUN_NESTABLE(kmon_tcp_send_reset_body(sk));
}

static __always_inline int kmon_tcp_recv_reset_body(struct sock *sk) {
  __u64 cg = kmon_sock_cgroup(sk);
  if (!kmon_cgroup_watched(cg)) return 0;
  struct tcp_stats *s = stats_of(cg);
  if (s) s->resets_received += 1;
  return 0;
}
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(kmon_tcp_recv_reset, struct sock *sk) {
  return KMON_RUN_NESTABLE(kmon_tcp_recv_reset_body(sk));
}
