#include "collectors/families.h"

#include <gtest/gtest.h>

#include <cmath>
#include <span>
#include <string>
#include <vector>

namespace kmon {
namespace {

TEST(FamilyBuilderTest, SumsEqualLabelsAndSortsByLabels) {
  FamilyBuilder b("x_total", "help", prometheus::MetricType::Counter, {"a", "b"});
  b.AddCounter({"2", "z"}, 1);
  b.AddCounter({"1", "y"}, 2);
  b.AddCounter({"2", "z"}, 3);
  auto f = b.Build();
  ASSERT_EQ(f.metric.size(), 2u);
  EXPECT_EQ(f.metric[0].label[0].value, "1");
  EXPECT_EQ(f.metric[0].counter.value, 2);
  EXPECT_EQ(f.metric[1].label[1].value, "z");
  EXPECT_EQ(f.metric[1].counter.value, 4);
}

TEST(FamilyBuilderTest, HistogramIsCumulativeWithInf) {
  FamilyBuilder b("h_seconds", "help", prometheus::MetricType::Histogram, {"p"});
  b.AddHistogram({"80"}, {0.1, 1}, {3, 2, 1}, 4.5);
  b.AddHistogram({"80"}, {0.1, 1}, {1, 0, 0}, 0.05);
  auto f = b.Build();
  ASSERT_EQ(f.metric.size(), 1u);
  const auto& h = f.metric[0].histogram;
  ASSERT_EQ(h.bucket.size(), 3u);
  EXPECT_EQ(h.bucket[0].cumulative_count, 4u);
  EXPECT_EQ(h.bucket[1].cumulative_count, 6u);
  EXPECT_EQ(h.bucket[2].cumulative_count, 7u);
  EXPECT_TRUE(std::isinf(h.bucket[2].upper_bound));
  EXPECT_EQ(h.sample_count, 7u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 4.55);
}

TEST(FamilyBuilderTest, TakesViewsOrVectorsAndSortsLikeTheValueLists) {
  FamilyBuilder b("x_total", "help", prometheus::MetricType::Counter, {"a", "b"});
  const std::string pod = "checkout-7d9f8b6c5-x2x9k";
  b.AddCounter({pod, "z"}, 1);
  b.AddCounter(std::vector<std::string>{pod, "z"}, 2);  // the same series
  b.AddCounter({"", "q"}, 3);
  b.AddCounter({pod}, 4);  // fewer values than names: the label is left out, sorted first
  auto f = b.Build();
  ASSERT_EQ(f.metric.size(), 3u);
  EXPECT_EQ(f.metric[0].label.size(), 2u);
  EXPECT_EQ(f.metric[0].label[1].value, "q");
  ASSERT_EQ(f.metric[1].label.size(), 1u);
  EXPECT_EQ(f.metric[1].label[0].name, "a");
  EXPECT_EQ(f.metric[1].counter.value, 4);
  EXPECT_EQ(f.metric[2].label[0].value, pod);
  EXPECT_EQ(f.metric[2].counter.value, 3);
}

TEST(FamilyBuilderTest, HistogramsSummedKeepTheFirstBoundsAndSlots) {
  FamilyBuilder b("h_seconds", "help", prometheus::MetricType::Histogram, {"p"});
  const std::vector<uint64_t> three{1, 1, 1};
  b.AddHistogram({"b"}, {0.5, 1}, std::span<const uint64_t>(three), 1);
  b.AddHistogram({"a"}, {0.1}, {2, 2}, 1);
  b.AddHistogram({"b"}, {0.1}, {5, 5}, 2);  // shorter: adds to the first two slots
  auto f = b.Build();
  ASSERT_EQ(f.metric.size(), 2u);
  EXPECT_EQ(f.metric[0].label[0].value, "a");
  ASSERT_EQ(f.metric[0].histogram.bucket.size(), 2u);
  EXPECT_EQ(f.metric[0].histogram.bucket[0].upper_bound, 0.1);
  const auto& h = f.metric[1].histogram;
  ASSERT_EQ(h.bucket.size(), 3u);
  EXPECT_EQ(h.bucket[0].upper_bound, 0.5);
  EXPECT_EQ(h.bucket[0].cumulative_count, 6u);
  EXPECT_EQ(h.bucket[1].cumulative_count, 12u);
  EXPECT_EQ(h.bucket[2].cumulative_count, 13u);
  EXPECT_EQ(h.sample_sum, 3);
}

TEST(SeriesBudgetTest, FoldsBeyondTheLimitAndCountsOnce) {
  SeriesBudget budget;
  WorkloadLabels a{"", "", "a.service"}, b{"", "", "b.service"}, c{"", "", "c.service"};
  for (int scrape = 0; scrape < 3; ++scrape) {
    budget.Begin(4);
    EXPECT_EQ(budget.Admit(a, 2), a);
    EXPECT_EQ(budget.Admit(b, 2), b);
    EXPECT_EQ(budget.Admit(a, 2), a);  // already admitted in this scrape: free
    WorkloadLabels folded = budget.Admit(c, 2);
    EXPECT_EQ(folded.namespace_, "__overflow__");
    EXPECT_EQ(folded.pod, "__overflow__");
    EXPECT_EQ(folded.container, "__overflow__");
  }
  EXPECT_EQ(budget.Overflowed(), 2u);  // c's two series, once
}

}  // namespace
}  // namespace kmon
