/* Maps and helpers every kmon BPF object carries: the watched-cgroups control map
 * (Kmon's "what to watch"), its on/off switch, and the lost-event counters. */
#ifndef KMON_BPF_KMON_COMMON_BPF_H_
#define KMON_BPF_KMON_COMMON_BPF_H_

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "bpf/kmon_common.h"

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct kmon_filter_config);
} filter_config SEC(".maps");

/* cgroup v2 id -> 1. Consulted only while filter_config.filter_cgroups is set. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, KMON_MAX_WATCHED_CGROUPS);
  __type(key, __u64);
  __type(value, __u8);
} watched_cgroups SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, KMON_LOST_MAX);
  __type(key, __u32);
  __type(value, __u64);
} lost SEC(".maps");

static __always_inline bool kmon_cgroup_watched(__u64 cgroup_id) {
  __u32 zero = 0;
  struct kmon_filter_config *cfg = bpf_map_lookup_elem(&filter_config, &zero);
  if (!cfg || !cfg->filter_cgroups) return true;
  return bpf_map_lookup_elem(&watched_cgroups, &cgroup_id) != NULL;
}

static __always_inline void kmon_count_lost(__u32 reason) {
  __u64 *n = bpf_map_lookup_elem(&lost, &reason);
  if (n) *n += 1;
}

#endif /* KMON_BPF_KMON_COMMON_BPF_H_ */
