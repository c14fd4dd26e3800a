/* The tcp collector's requests: each one ends in its server's histogram (`req_hist`,
 * kmon_tcp_request_duration_seconds) and, while the topology is on, in its
 * client -> server edge (`edges`), through this CPU's write-back cache (`req_cache`,
 * struct tcp_req_cache in bpf/tcp.h).
 *
 * Why a cache: a server's requests hit one key of each map over and over, and the
 * two hash lookups (the edge's a 40-byte key) and the edge's three atomic adds were
 * most of what a request cost the receive that ends it. A way holding the key adds
 * with three plain adds instead. The programs that write into the cache run with
 * preemption off (tracepoints) and only at depth 1 (bpf/kmon_nest.bpf.h): one that
 * interrupted another of the object on its CPU goes straight into the maps, under
 * the twin key. The flush (kmon_tcp_flush, run by user space on every CPU in an
 * IPI before it reads the maps) leaves a CPU alone while any program of the object
 * runs there (its depth is not 0) and asks to be run again.
 *
 * A way is given a key only right after that key's request went into both maps, so
 * a write-back never inserts: a key user space deleted since (a gone server, or a
 * gone client's edge) takes the way's counts with it, and a map that was full when
 * the key was new leaves it uncached (its requests are counted as lost there). */
#ifndef KMON_BPF_TCP_REQUEST_BPF_H_
#define KMON_BPF_TCP_REQUEST_BPF_H_

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "bpf/kmon_common.bpf.h"
#include "bpf/kmon_hist.bpf.h"
#include "bpf/kmon_nest.bpf.h"
#include "bpf/tcp.h"

KMON_MAP(BPF_MAP_TYPE_ARRAY, 1, __u32, struct tcp_config) tcp_config SEC(".maps");

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

/* Allocated as keys come (BPF_F_NO_PREALLOC): memory for the keys in use.
 * - req_hist: per-CPU, every request of a server adds to one key, from whichever
 *   CPU serves it.
 * - edges: shared, with atomic adds; a server's requests spread over its clients'
 *   edges, and a per-CPU copy of each would be memory times the CPUs. */
KMON_MAP_FLAGS(BPF_MAP_TYPE_PERCPU_HASH, KMON_TCP_REQ_MAX, struct tcp_hist_key, struct tcp_hist,
               BPF_F_NO_PREALLOC) req_hist SEC(".maps");
KMON_MAP_FLAGS(BPF_MAP_TYPE_HASH, KMON_TCP_EDGES_MAX, struct tcp_edge_key, struct tcp_hist,
               BPF_F_NO_PREALLOC) edges SEC(".maps");

KMON_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct tcp_req_cache) req_cache SEC(".maps");

static const struct tcp_hist zero_hist;

static __always_inline struct tcp_config *tcp_cfg(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&tcp_config, &zero);
}

static __always_inline __u32 slot_of(const struct tcp_config *cfg, __u64 value) {
  return kmon_hist_slot(cfg->bounds_ns, cfg->nbounds, KMON_TCP_MAX_BOUNDS, value);
}

/* Adds one value to a per-CPU histogram: plain adds to this CPU's copy. False when
 * the map had no room for a new key (counted as lost). */
static __always_inline bool hist_add_percpu(void *map, const void *key, __u64 value, __u32 slot) {
  struct tcp_hist *h = kmon_lookup_or_init(map, key, &zero_hist);
  if (!h) return false;
  h->slots[slot] += 1;
  h->count += 1;
  h->sum_ns += value;
  return true;
}

/* Adds one value to a shared histogram, atomically: other CPUs add to it too. A
 * reader may see the count ahead of the slot for an instant, never a value lost. */
static __always_inline bool hist_add_shared(void *map, const void *key, __u64 value, __u32 slot) {
  struct tcp_hist *h = kmon_lookup_or_init(map, key, &zero_hist);
  if (!h) return false;
  __sync_fetch_and_add(&h->slots[slot], 1);
  __sync_fetch_and_add(&h->count, 1);
  __sync_fetch_and_add(&h->sum_ns, value);
  return true;
}

/* Adds a way's histogram to a map's: only the slots that have any (a way holds the
 * requests since its last write-back, mostly in a few slots). */
static __always_inline void hist_merge(struct tcp_hist *dst, const struct tcp_hist *src,
                                       const bool atomic) {
  for (int i = 0; i <= KMON_TCP_MAX_BOUNDS; i++) {
    __u64 n = src->slots[i];
    if (!n) continue;
    if (atomic) __sync_fetch_and_add(&dst->slots[i], n);
    else dst->slots[i] += n;
  }
  if (atomic) {
    __sync_fetch_and_add(&dst->count, src->count);
    __sync_fetch_and_add(&dst->sum_ns, src->sum_ns);
  } else {
    dst->count += src->count;
    dst->sum_ns += src->sum_ns;
  }
}

static __always_inline bool port_measured(const struct tcp_config *cfg, __u16 port) {
  if (!cfg->filter_ports) return true;
  return (cfg->port_bits[port >> 6] >> (port & 63)) & 1;
}

static __always_inline struct tcp_req_cache *req_cache_of(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&req_cache, &zero);
}

/* The way of a key: a multiplicative hash (cgroup ids of one pod are often
 * consecutive inode numbers). */
static __always_inline __u32 way_of(const struct tcp_edge_key *k) {
  __u64 x = k->server_cgroup ^ (k->client_cgroup * 0xC2B2AE3D27D4EB4FULL) ^ k->server_port;
  x *= 0x9E3779B97F4A7C15ULL;
  return (__u32)(x >> 60) & (KMON_TCP_REQ_CACHE_WAYS - 1);
}

/* Moves a way's requests into req_hist and (for an edge) edges, where their keys
 * still are; counts taken under bounds that have changed since are dropped. */
static __always_inline void way_writeback(const struct tcp_config *cfg, struct tcp_req_way *w) {
  if (w->hist.count == 0) return;
  if (w->generation == cfg->generation) {
    struct tcp_hist_key hk = {.cgroup_id = w->key.server_cgroup, .port = w->key.server_port};
    struct tcp_hist *h = bpf_map_lookup_elem(&req_hist, &hk);
    if (h) hist_merge(h, &w->hist, false);
    if (w->edge) {
      struct tcp_hist *e = bpf_map_lookup_elem(&edges, &w->key);
      if (e) hist_merge(e, &w->hist, true);
    }
  }
  __builtin_memset(&w->hist, 0, sizeof(w->hist));
}

/* One request straight into the maps (under the twin key when `nested`); true when
 * both had room. */
static __always_inline bool record_direct(const struct tcp_edge_key *ek, bool edge, __u64 latency,
                                          __u32 slot, bool nested) {
  struct tcp_hist_key hk = {.cgroup_id = ek->server_cgroup, .port = ek->server_port};
  if (nested) hk.pad[0] = KMON_TCP_NESTED_HIST;
  bool stored = hist_add_percpu(&req_hist, &hk, latency, slot);
  if (edge) stored = hist_add_shared(&edges, ek, latency, slot) && stored;
  return stored;
}

/* Not nested: one request into this CPU's way for its key, or straight into the maps (and the
 * way is the key's from then on, its earlier key's requests written back). With
 * the cache off, each way is written back and left empty at its next use, so
 * nothing stays in a way no flush will empty. */
static __always_inline void record_cached(const struct tcp_config *cfg,
                                          const struct tcp_edge_key *ek, bool edge, __u64 latency,
                                          __u32 slot) {
  struct tcp_req_cache *cache = req_cache_of();
  if (!cache) {
    record_direct(ek, edge, latency, slot, false);
    return;
  }
  struct tcp_req_way *w = &cache->ways[way_of(ek)];
  if (cfg->cache && w->key.server_port == ek->server_port &&
      w->key.server_cgroup == ek->server_cgroup && w->key.client_cgroup == ek->client_cgroup &&
      w->edge == edge && w->generation == cfg->generation) {
    w->hist.slots[slot] += 1;
    w->hist.count += 1;
    w->hist.sum_ns += latency;
    return;
  }
  bool stored = record_direct(ek, edge, latency, slot, false);
  way_writeback(cfg, w);
  w->key = *ek;
  w->edge = edge;
  w->generation = cfg->generation;
  if (!cfg->cache || !stored) w->key.server_port = 0; /* empty */
}

/* The request that ran from start_ns to last_send_ns is over: into the server's
 * histogram, and into its edge while the topology is on. */
static __always_inline void record_request(struct tcp_conn *c) {
  __u64 start = c->start_ns;
  c->start_ns = 0;
  c->phase = TCP_PHASE_IDLE;
  if (start == 0 || c->last_send_ns < start) return;
  struct tcp_config *cfg = tcp_cfg();
  if (!cfg) return;
  __u16 port = c->lport;
  if (!(c->flags & TCP_CONN_WATCHED) || !port_measured(cfg, port)) return;
  __u64 latency = c->last_send_ns - start;
  __u32 slot = slot_of(cfg, latency);
  bool edge = cfg->topology;
  struct tcp_edge_key ek = {};
  ek.server_cgroup = c->cgroup_id;
  ek.server_port = port;
  ek.client_cgroup = c->client_cgroup;
  if (edge && c->client_cgroup == 0 &&
      (cfg->peer_address || bpf_map_lookup_elem(&peer_addrs, c->addr))) {
    /* A key per client address: too many for the cache's ways. */
    __builtin_memcpy(ek.client_addr, c->addr, 16);
    record_direct(&ek, edge, latency, slot, kmon_nested());
    return;
  }
  if (kmon_nested()) record_direct(&ek, edge, latency, slot, true);
  else record_cached(cfg, &ek, edge, latency, slot);
}

/* kmon_tcp_flush's body: every way of this CPU's cache into the maps; 1 (run me
 * again) while a program of the object is running on this CPU, which the IPI may
 * have interrupted between a load and its store. */
static __always_inline int tcp_cache_flush(void) {
  __u32 *depth = kmon_depth_of();
  if (depth && *(volatile __u32 *)depth) return 1;
  struct tcp_config *cfg = tcp_cfg();
  struct tcp_req_cache *cache = req_cache_of();
  if (!cfg || !cache) return 0;
  for (int i = 0; i < KMON_TCP_REQ_CACHE_WAYS; i++) way_writeback(cfg, &cache->ways[i]);
  return 0;
}

#endif /* KMON_BPF_TCP_REQUEST_BPF_H_ */
