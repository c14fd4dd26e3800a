// The collector table's list of the maps limits.bpf_map_entries may size, against
// the BPF objects themselves (opened, not loaded: no privilege needed): each listed
// map is in its collector's object at the size the list gives as its default, and
// each hash-type map of an object is listed, so no map the config could size is
// missing from the README's table or the parser's keys.
#include <bpf/libbpf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <string>

// The shared headers first: the skeletons name their structs.
#include "bpf/blockio.h"
#include "bpf/cpu.h"
#include "bpf/dns.h"
#include "bpf/drops.h"
#include "bpf/events.h"
#include "bpf/pagecache.h"
#include "bpf/syscalls.h"
#include "bpf/tcp.h"
// clang-format off
#include "bpf/blockio.skel.h"
#include "bpf/cpu.skel.h"
#include "bpf/dns.skel.h"
#include "bpf/drops.skel.h"
#include "bpf/events.skel.h"
#include "bpf/pagecache.skel.h"
#include "bpf/syscalls.skel.h"
#include "bpf/tcp.skel.h"
// clang-format on
#include "collectors/collector.h"
#include "collectors/watched_cgroups.h"

namespace kmon {
namespace {

// Opens a skeleton's object and hands it to `check`.
template <typename Skel>
void WithObject(Skel* (*open)(), void (*destroy)(Skel*),
                const std::function<void(const bpf_object*)>& check) {
  Skel* s = open();
  ASSERT_NE(s, nullptr);
  check(s->obj);
  destroy(s);
}

bool HashType(bpf_map_type t) {
  return t == BPF_MAP_TYPE_HASH || t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_LRU_HASH ||
         t == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

TEST(CollectorTableTest, SizableMapsAreTheObjectsHashMapsAtTheirDefaults) {
  const std::map<std::string, std::function<void(const std::function<void(const bpf_object*)>&)>>
      objects = {
          {"tcp", [](auto f) { WithObject(tcp_bpf__open, tcp_bpf__destroy, f); }},
          {"cpu", [](auto f) { WithObject(cpu_bpf__open, cpu_bpf__destroy, f); }},
          {"blockio", [](auto f) { WithObject(blockio_bpf__open, blockio_bpf__destroy, f); }},
          {"dns", [](auto f) { WithObject(dns_bpf__open, dns_bpf__destroy, f); }},
          {"drops", [](auto f) { WithObject(drops_bpf__open, drops_bpf__destroy, f); }},
          {"events", [](auto f) { WithObject(events_bpf__open, events_bpf__destroy, f); }},
          {"pagecache", [](auto f) { WithObject(pagecache_bpf__open, pagecache_bpf__destroy, f); }},
          {"syscalls", [](auto f) { WithObject(syscalls_bpf__open, syscalls_bpf__destroy, f); }},
      };
  // Hash maps sized by something else: blockio's `devices` holds the configured
  // devices (collectors.blockio.devices, at most its size).
  const std::set<std::pair<std::string, std::string>> not_sized = {{"blockio", "devices"}};
  std::set<std::string> shared;
  for (const BpfMapSize& m : SharedMapSizes()) shared.insert(m.map);
  size_t listed_total = 0, checked = 0;
  for (const CollectorEntry& e : CollectorTable()) {
    listed_total += e.maps.size();
    auto it = objects.find(e.name);
    if (it == objects.end()) {
      EXPECT_THAT(e.maps, ::testing::IsEmpty()) << e.name << " has no BPF object of its own";
      continue;
    }
    it->second([&](const bpf_object* obj) {
      std::map<std::string, uint32_t> listed;
      for (const BpfMapSize& m : e.maps) {
        listed[m.map] = m.entries;
        const bpf_map* map = bpf_object__find_map_by_name(obj, m.map);
        ASSERT_NE(map, nullptr) << e.name << "." << m.map;
        EXPECT_TRUE(HashType(bpf_map__type(map))) << e.name << "." << m.map;
        EXPECT_EQ(bpf_map__max_entries(map), m.entries) << e.name << "." << m.map;
        ++checked;
      }
      const bpf_map* map = nullptr;
      bpf_object__for_each_map(map, obj) {
        const std::string name = bpf_map__name(map);
        if (!HashType(bpf_map__type(map)) || shared.count(name) ||
            not_sized.count({e.name, name})) {
          continue;
        }
        EXPECT_EQ(listed.count(name), 1u) << e.name << "." << name << " is not in the table";
      }
    });
  }
  EXPECT_EQ(checked, listed_total) << "every listed map was found in an object";
  EXPECT_GE(listed_total, 8u);  // tcp's alone
}

}  // namespace
}  // namespace kmon
