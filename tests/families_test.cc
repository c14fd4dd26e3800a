#include "collectors/families.h"

#include <cmath>

#include <gtest/gtest.h>

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
