// `pagecache`: page-cache accesses and misses per workload, in pages.
//
// With `hooks: tracepoints` (the default) the counts are exact for what they say:
//  - an access is a page a buffered read asked for (the part inside the file, once
//    per read even when the kernel fetches it in batches), a page a fault on a
//    file mapping mapped (once per fault-around window, not per load from it), or
//    a page that became dirty (once until it is written back, not per write);
//  - a miss is a page added to the page cache by the workload: read misses with
//    the readahead they start, fault read-around, and new pages a write creates.
// Approximate, by what the hooks see: readahead adds pages before anyone asks (a
// file read only in part can show more misses than accesses); a fault-around window
// counts the pages of the window, cached or not; an access to a page already mapped
// is invisible.
//
// With `hooks: cachestat` it counts as bcc's cachestat does, where the kernel lets
// BPF attach to folio_mark_accessed and mark_buffer_dirty (fentry, else kprobe; a
// feature probe loads each twin once to find out): accesses = marked accessed -
// buffers dirtied, misses = added - dirtied, clamped to [0, accesses] and held from
// going back. Where neither twin attaches (a locked-down kernel) it counts on the
// tracepoints and says so in the log.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectors/bpf_collector.h"
#include "collectors/data_source.h"

struct pagecache_bpf;

namespace kmon {

/// What the collector hooks.
enum class PagecacheHooks {
  kTracepoints,  // filemap and writeback tracepoints (v6.11+)
  kCachestat,    // bcc's cachestat formula; needs fentry or kprobes
};

/// collectors.pagecache
struct PagecacheConfig : CollectorSectionOf<PagecacheConfig> {
  static constexpr char kName[] = "pagecache";
  PagecacheHooks hooks = PagecacheHooks::kTracepoints;
};
void ParsePagecacheSection(YamlParser& p, const YamlValue& v, PagecacheConfig* c);

/// The kernel's counters of one cgroup, summed over CPUs (bpf/pagecache.h).
struct PagecacheCount {
  uint64_t cgroup_id = 0;
  uint64_t read_pages = 0;
  uint64_t mapped_pages = 0;
  uint64_t added_pages = 0;
  uint64_t dirtied_pages = 0;
  uint64_t accessed_pages = 0;
  uint64_t buffers_dirtied = 0;
};

/// The two exported counters of one cgroup.
struct PagecacheTotal {
  uint64_t cgroup_id = 0;
  uint64_t accesses = 0;
  uint64_t misses = 0;
};

/// The data map (collectors/data_source.h).
using PagecacheSource = DataSource<PagecacheCount>;

/// Accesses and misses of each cgroup by the hooks that counted. cachestat's
/// differences can fall back for a moment (a dirtying counted before the access it
/// belongs to): `held` keeps each cgroup's last totals, and a total never goes below
/// them, so the exported counters only grow. Tracepoint totals only grow anyway.
std::vector<PagecacheTotal> PagecacheTotals(const std::vector<PagecacheCount>& counts,
                                            PagecacheHooks hooks,
                                            std::map<uint64_t, PagecacheTotal>* held);

/// kmon_page_cache_{accesses,misses}_total. Pure apart from the labeler: golden tests
/// feed it fixed input.
std::vector<prometheus::MetricFamily> BuildPagecacheFamilies(
    const std::vector<PagecacheTotal>& totals, WorkloadLabeler* labeler);

/// What the last start chose, and why (for the log and the tests).
struct PagecacheChoice {
  PagecacheHooks requested = PagecacheHooks::kTracepoints;  // collectors.pagecache.hooks
  PagecacheHooks hooks = PagecacheHooks::kTracepoints;      // what counts
  std::string twin;                                         // "fentry" or "kprobe" with kCachestat
  std::string reason;  // why the cachestat hooks were not used, when asked for
};

class PagecacheCollector : public BpfCollector {
 public:
  explicit PagecacheCollector(const CollectorDeps& deps);
  ~PagecacheCollector() override { Stop(); }

  PagecacheChoice choice() const;

 private:
  absl::Status BeforeLoad(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override { source_.reset(); }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  /// The cachestat twin that loads and attaches here ("fentry" or "kprobe"), found by
  /// loading each in an object of its own; empty, with the reason, when none does.
  std::string ProbeCachestatTwin(std::string* reason);
  /// Deletes data-map entries (and held totals) of cgroups that are gone.
  void DropStale(const std::vector<PagecacheCount>& counts);

  pagecache_bpf* skel_ = nullptr;
  std::unique_ptr<PagecacheSource> source_;
  PagecacheChoice choice_;  // guarded by mu_
  std::map<uint64_t, PagecacheTotal> held_;
};

}  // namespace kmon
