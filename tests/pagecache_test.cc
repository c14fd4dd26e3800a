// Pure parts of the pagecache collector: the range and folio arithmetic the BPF
// programs run (the very inline functions of bpf/pagecache.h), the totals of each
// formula, its config section, and the two families built from fixed kernel data
// (golden text, checked by promtool).
// KMON_UPDATE_GOLDEN=1 rewrites tests/golden/pagecache_metrics.prom (review the diff).
#include "bpf/pagecache.h"

#include <gtest/gtest.h>

#include "collectors/pagecache.h"
#include "collectors/workload_labeler.h"
#include "exporter/config.h"
#include "exporter/exposition.h"
#include "provider/workload.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

TEST(PagecacheRangeTest, ClampsToTheEndOfTheFile) {
  __u64 last = 255;
  // An 8 KiB + 1 byte file has pages 0..2.
  EXPECT_TRUE(kmon_pc_clamp_to_eof(0, &last, 8193, 12));
  EXPECT_EQ(last, 2u);
  last = 1;
  EXPECT_TRUE(kmon_pc_clamp_to_eof(0, &last, 8192, 12));  // exactly two pages
  EXPECT_EQ(last, 1u);
  last = 9;
  EXPECT_FALSE(kmon_pc_clamp_to_eof(2, &last, 8192, 12));  // all of it beyond the end
  EXPECT_FALSE(kmon_pc_clamp_to_eof(0, &last, 0, 12));     // an empty file
  last = 3;
  EXPECT_TRUE(kmon_pc_clamp_to_eof(3, &last, 1 << 30, 16));  // 64 KiB pages
  EXPECT_EQ(last, 3u);
}

TEST(PagecacheRangeTest, OneReadInBatchesCountsEachPageOnce) {
  // What filemap_get_pages reports for one 8 MiB read(2) fetched in batches of 31
  // pages: the rest of the request each time.
  pc_range prev{};
  uint64_t pages = 0;
  for (uint64_t first = 0; first < 2048; first += 31)
    pages += kmon_pc_new_pages(&prev, 7, first, 2047, 0);
  EXPECT_EQ(pages, 2048u);
  // The next read(2) of the file is new...
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 2048, 2303, 0), 256u);
  // ... and so is a read of another file, or of the same pages again after it.
  EXPECT_EQ(kmon_pc_new_pages(&prev, 9, 2048, 2303, 0), 256u);
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 2048, 2303, 0), 256u);
}

TEST(PagecacheRangeTest, SmallReadsCountAPageOnceLikeTheKernel) {
  pc_range prev{};
  // 6000-byte reads: [0,1], [1,2], [2,4] (bytes 12000..17999) ...
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 0, 1, 0), 2u);
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 1, 2, 0), 1u);  // page 1 was the last read's end
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 2, 4, 0), 2u);
  // 100-byte reads within one page count it once, as filemap_read marks it once.
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 5, 5, 0), 1u);
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 5, 5, 0), 0u);
  // A read backwards that overlaps the last one counts the new part, and a second
  // pass over the file counts again.
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 3, 5, 0), 2u);
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 0, 1, 0), 2u);
}

TEST(PagecacheRangeTest, AFaultAndItsWindowCountOnce) {
  // A cold mmap: the fault on page 0 reads it in, the next fault maps the window.
  pc_range prev{};
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 0, 0, 1), 1u);
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 0, 15, 1), 15u);
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 3, 3, 1), 0u);   // a page of it not yet uptodate
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 0, 15, 1), 0u);  // and the window mapped again
  EXPECT_EQ(kmon_pc_new_pages(&prev, 7, 16, 31, 1), 16u);
  // Replacing instead would count the window twice around that fault.
  pc_range replace{};
  kmon_pc_new_pages(&replace, 7, 0, 15, 0);
  kmon_pc_new_pages(&replace, 7, 3, 3, 0);
  EXPECT_EQ(kmon_pc_new_pages(&replace, 7, 0, 15, 0), 15u);
}

TEST(PagecacheFolioTest, CountsPagesByOrder) {
  const uint32_t head = 6;  // PG_head on 6.18; the BPF side reads it from BTF
  EXPECT_EQ(kmon_pc_folio_pages(0, 0xff, head), 1u);  // not large: _flags_1 is not its own
  EXPECT_EQ(kmon_pc_folio_pages(1ull << head, 4, head), 16u);
  EXPECT_EQ(kmon_pc_folio_pages((1ull << head) | 0x3, 0xab09, head), 512u);  // a PMD folio
  EXPECT_EQ(kmon_pc_folio_pages(1ull << head, 0xff, head), 1u);  // nonsense: no shift past 63
}

TEST(PagecacheTotalsTest, TracepointsAddReadsMapsAndDirtiesAndCountAddsAsMisses) {
  std::map<uint64_t, PagecacheTotal> held;
  std::vector<PagecacheCount> counts{{.cgroup_id = 100,
                                      .read_pages = 2048,
                                      .mapped_pages = 16,
                                      .added_pages = 2100,
                                      .dirtied_pages = 4,
                                      .accessed_pages = 99,
                                      .buffers_dirtied = 3}};
  auto t = PagecacheTotals(counts, PagecacheHooks::kTracepoints, &held);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].accesses, 2068u);  // the twin's fields are not this formula's
  EXPECT_EQ(t[0].misses, 2100u);    // readahead beyond what was read counts
}

TEST(PagecacheTotalsTest, CachestatIsBccsFormulaAndNeverGoesBack) {
  std::map<uint64_t, PagecacheTotal> held;
  PagecacheCount c{.cgroup_id = 100,
                   .read_pages = 5000,  // not this formula's
                   .added_pages = 300,
                   .dirtied_pages = 100,
                   .accessed_pages = 1000,
                   .buffers_dirtied = 50};
  auto t = PagecacheTotals({c}, PagecacheHooks::kCachestat, &held);
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].accesses, 950u);  // total = mpa - mbd
  EXPECT_EQ(t[0].misses, 200u);    // misses = apcl - apd
  // A dirtying counted before its access: the difference dips, the counters hold.
  c.buffers_dirtied = 60;
  c.dirtied_pages = 120;
  t = PagecacheTotals({c}, PagecacheHooks::kCachestat, &held);
  EXPECT_EQ(t[0].accesses, 950u);
  EXPECT_EQ(t[0].misses, 200u);
  c.accessed_pages = 1100;
  c.added_pages = 400;
  t = PagecacheTotals({c}, PagecacheHooks::kCachestat, &held);
  EXPECT_EQ(t[0].accesses, 1040u);
  EXPECT_EQ(t[0].misses, 280u);
  // More dirtied than added, more buffers than accesses: zero, as cachestat clamps;
  // misses never exceed accesses (hits = total - misses >= 0).
  std::map<uint64_t, PagecacheTotal> fresh;
  t = PagecacheTotals({{.cgroup_id = 1,
                        .added_pages = 5,
                        .dirtied_pages = 9,
                        .accessed_pages = 2,
                        .buffers_dirtied = 4},
                       {.cgroup_id = 2, .added_pages = 50, .accessed_pages = 20}},
                      PagecacheHooks::kCachestat, &fresh);
  EXPECT_EQ(t[0].accesses, 0u);
  EXPECT_EQ(t[0].misses, 0u);
  EXPECT_EQ(t[1].accesses, 20u);
  EXPECT_EQ(t[1].misses, 20u);
}

std::vector<PagecacheTotal> FixedTotals() {
  return {
      {.cgroup_id = 100, .accesses = 2048, .misses = 0},
      {.cgroup_id = 200, .accesses = 4096, .misses = 2048},
      {.cgroup_id = 1, .accesses = 7, .misses = 1},
      {.cgroup_id = 999, .accesses = 5, .misses = 5},  // a cgroup that no longer exists
  };
}

TEST(PagecacheFamiliesTest, GoldenTextPassesPromtool) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  auto families = BuildPagecacheFamilies(FixedTotals(), &budget);
  ExpectGoldenMetrics(Serialize(families, ExpositionFormat::kText004), "pagecache_metrics.prom");
}

TEST(PagecacheFamiliesTest, SamplesAreExactAndGoneCgroupsLeft) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 20000);
  auto fams = BuildPagecacheFamilies(FixedTotals(), &budget);
  ASSERT_EQ(fams.size(), 2u);
  EXPECT_EQ(fams[0].metric.size(), 3u);
  EXPECT_EQ(fams[1].metric.size(), 3u);
  const auto* pod =
      FindSample(fams, "kmon_page_cache_misses_total", {{"container", "4f2a9c1b7d3e"}});
  ASSERT_NE(pod, nullptr);
  EXPECT_EQ(pod->counter.value, 2048);
  const auto* host =
      FindSample(fams, "kmon_page_cache_accesses_total", {{"container", "nginx.service"}});
  ASSERT_NE(host, nullptr);
  EXPECT_EQ(host->counter.value, 2048);
}

TEST(PagecacheFamiliesTest, OverBudgetWorkloadsFoldIntoOverflow) {
  WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler budget(&workloads, 4);  // two workloads of two series each
  auto fams = BuildPagecacheFamilies(FixedTotals(), &budget);
  const auto* overflow =
      FindSample(fams, "kmon_page_cache_accesses_total", {{"container", "__overflow__"}});
  ASSERT_NE(overflow, nullptr);
  EXPECT_EQ(overflow->counter.value, 4096);  // the third workload by cgroup id: the pod
  EXPECT_EQ(budget.Overflowed(), 2u);        // its two series
}

TEST(PagecacheConfigTest, HooksAreTracepointsUnlessCachestatIsAsked) {
  ConfigResult def = ParseConfig("collectors:\n  pagecache: {}\n", ProcessEnv());
  ASSERT_TRUE(def.config.has_value());
  EXPECT_EQ(def.config->collectors.Get<PagecacheConfig>().hooks, PagecacheHooks::kTracepoints);
  ConfigResult cs = ParseConfig("collectors:\n  pagecache: {hooks: cachestat}\n", ProcessEnv());
  ASSERT_TRUE(cs.config.has_value());
  EXPECT_EQ(cs.config->collectors.Get<PagecacheConfig>().hooks, PagecacheHooks::kCachestat);
  ConfigResult bad = ParseConfig("collectors:\n  pagecache:\n    hooks: kprobes\n", ProcessEnv());
  ASSERT_EQ(bad.problems.size(), 1u);
  EXPECT_EQ(bad.problems[0].ToString(),
            "line 3: collectors.pagecache.hooks: must be one of tracepoints, cachestat; got "
            "\"kprobes\"");
}

}  // namespace
}  // namespace kmon
