// The one labeler every collector uses: cgroup id -> labels, the series budget with
// "__overflow__", and the gone-cgroup grace.
#include "collectors/workload_labeler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

namespace kmon {
namespace {

using std::chrono::seconds;

// Cgroups that a test can make and remove.
class MutableCgroupPaths : public CgroupPathSource {
 public:
  explicit MutableCgroupPaths(std::unordered_map<uint64_t, std::string>* live) : live_(live) {}
  std::unordered_map<uint64_t, std::string> Scan() override { return *live_; }

 private:
  std::unordered_map<uint64_t, std::string>* live_;
};

class WorkloadLabelerTest : public ::testing::Test {
 protected:
  std::unordered_map<uint64_t, std::string> live_{{1, "/"},
                                                  {10, "/system.slice/a.service"},
                                                  {20, "/system.slice/b.service"},
                                                  {30, "/system.slice/c.service"}};
  // Rescans on every unknown id, so a removed cgroup is noticed at once.
  WorkloadResolver resolver_{std::make_unique<MutableCgroupPaths>(&live_), nullptr,
                             std::chrono::milliseconds(0)};
};

TEST_F(WorkloadLabelerTest, NamesCgroupsAndNodeLevel) {
  WorkloadLabeler labeler(&resolver_);
  EXPECT_EQ(labeler.Lookup(10), (WorkloadLabels{"", "", "a.service"}));
  EXPECT_EQ(labeler.Lookup(1), (WorkloadLabels{"", "", "/"}));
  // 0 is "no socket / no submitter": node level, all labels empty, never gone.
  EXPECT_EQ(labeler.Lookup(0), WorkloadLabels{});
  EXPECT_FALSE(labeler.Lookup(999).has_value());
  EXPECT_FALSE(labeler.Gone(0));
}

TEST_F(WorkloadLabelerTest, BudgetFoldsLaterWorkloadsAndCountsEachOnce) {
  WorkloadLabeler labeler(&resolver_, /*max_series=*/5);
  const WorkloadLabels overflow{"__overflow__", "__overflow__", "__overflow__"};
  for (int scrape = 0; scrape < 3; ++scrape) {
    labeler.BeginPass();
    EXPECT_EQ(labeler.LabelsFor(10, 3), (WorkloadLabels{"", "", "a.service"}));
    EXPECT_EQ(labeler.LabelsFor(10, 3), (WorkloadLabels{"", "", "a.service"}));  // same pass: free
    EXPECT_EQ(labeler.LabelsFor(20, 2), (WorkloadLabels{"", "", "b.service"}));  // 5 of 5
    EXPECT_EQ(labeler.LabelsFor(30, 4), overflow);
    EXPECT_FALSE(labeler.LabelsFor(999, 1).has_value());  // gone: no series, no cost
    labeler.EndPass();
  }
  EXPECT_EQ(labeler.Overflowed(), 4u);  // c's four series, once, not once per scrape
  // A larger limit on reload admits it.
  labeler.SetMaxSeries(9);
  labeler.BeginPass();
  EXPECT_EQ(labeler.LabelsFor(10, 3)->container, "a.service");
  EXPECT_EQ(labeler.LabelsFor(20, 2)->container, "b.service");
  EXPECT_EQ(labeler.LabelsFor(30, 4)->container, "c.service");
  EXPECT_EQ(labeler.Overflowed(), 4u);
}

TEST_F(WorkloadLabelerTest, FitsBudgetsOtherKeysTheSameWay) {
  WorkloadLabeler labeler(&resolver_, /*max_series=*/10);
  EXPECT_TRUE(labeler.Fits("a->b:80", 6));
  EXPECT_TRUE(labeler.Fits("a->b:80", 6));  // asked again: the first answer, no cost
  EXPECT_FALSE(labeler.Fits("a->c:80", 6));
  EXPECT_TRUE(labeler.Fits("a->d:80", 4));
  EXPECT_EQ(labeler.Overflowed(), 6u);
}

TEST_F(WorkloadLabelerTest, GoneOnlyAfterMissingForTheWholeGrace) {
  const auto t0 = std::chrono::steady_clock::now();
  WorkloadLabeler labeler(&resolver_, 20000, seconds(5));
  labeler.BeginPass(t0);
  ASSERT_TRUE(labeler.Lookup(20).has_value());
  labeler.EndPass();

  live_.erase(20);  // the cgroup is removed, and a rescan notices
  resolver_.Refresh();
  for (int s : {0, 2, 4}) {
    labeler.BeginPass(t0 + seconds(1 + s));
    EXPECT_FALSE(labeler.Lookup(20).has_value());
    EXPECT_FALSE(labeler.Gone(20)) << "missing for " << s << " s only";
    labeler.EndPass();
  }
  labeler.BeginPass(t0 + seconds(6));  // missing since t0+1s: 5 s
  EXPECT_FALSE(labeler.Lookup(20).has_value());
  EXPECT_TRUE(labeler.Gone(20));
  EXPECT_FALSE(labeler.Gone(10));  // not looked up in this pass: says nothing
  labeler.EndPass();
}

TEST_F(WorkloadLabelerTest, ACgroupFoundAgainStartsItsGraceAfresh) {
  const auto t0 = std::chrono::steady_clock::now();
  WorkloadLabeler labeler(&resolver_, 20000, seconds(5));
  live_.erase(30);
  resolver_.Refresh();
  labeler.BeginPass(t0);
  EXPECT_FALSE(labeler.Lookup(30).has_value());
  labeler.EndPass();
  // Back (a rescan had not seen it yet): the miss is forgotten.
  live_[30] = "/system.slice/c.service";
  labeler.BeginPass(t0 + seconds(3));
  EXPECT_TRUE(labeler.Lookup(30).has_value());
  labeler.EndPass();
  live_.erase(30);
  resolver_.Refresh();
  labeler.BeginPass(t0 + seconds(6));
  EXPECT_FALSE(labeler.Lookup(30).has_value());
  EXPECT_FALSE(labeler.Gone(30));  // missing since t0+6s, not since t0
  labeler.EndPass();
  // A pass that does not ask about it forgets it too.
  labeler.BeginPass(t0 + seconds(12));
  labeler.EndPass();
  labeler.BeginPass(t0 + seconds(13));
  EXPECT_FALSE(labeler.Lookup(30).has_value());
  EXPECT_FALSE(labeler.Gone(30));
  labeler.EndPass();
}

// Pod metadata that a test can change, as the Kubernetes watcher does.
class MutablePods : public PodMetadataSource {
 public:
  std::optional<PodMeta> PodByUid(const std::string& uid) const override {
    auto it = pods.find(uid);
    if (it == pods.end()) return std::nullopt;
    return it->second;
  }
  uint64_t Generation() const override { return generation; }
  std::map<std::string, PodMeta> pods;
  uint64_t generation = 1;
};

TEST_F(WorkloadLabelerTest, KeepsLabelsAcrossPassesAndFollowsRenames) {
  const std::string uid = "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc";
  const std::string cid = "4f2a9c1b7d3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
  live_[40] =
      "/kubepods.slice/kubepods-pod0c4b8f6e_1d2a_4c3b_9e8f_123456789abc.slice/"
      "cri-containerd-" +
      cid + ".scope";
  MutablePods pods;
  WorkloadResolver resolver(std::make_unique<MutableCgroupPaths>(&live_), &pods,
                            std::chrono::milliseconds(0));
  WorkloadLabeler labeler(&resolver, /*max_series=*/100);
  labeler.BeginPass();
  const WorkloadLabels* before = labeler.Labels(40, 10);
  ASSERT_NE(before, nullptr);
  EXPECT_EQ(before->pod, uid);                // no metadata yet: the UID
  EXPECT_EQ(labeler.Labels(40, 10), before);  // the same labels, charged once
  EXPECT_EQ(labeler.Find(10)->container, "a.service");
  EXPECT_EQ(labeler.Labels(999, 1), nullptr);
  labeler.EndPass();
  labeler.BeginPass();
  EXPECT_EQ(labeler.Labels(40, 10), before) << "unchanged: kept, not rebuilt";
  labeler.EndPass();

  PodMeta meta;
  meta.namespace_ = "shop";
  meta.name = "checkout-7d9f8b6c5-x2x9k";
  meta.containers[cid] = "server";
  pods.pods[uid] = meta;
  ++pods.generation;
  labeler.BeginPass();
  const WorkloadLabels* after = labeler.Labels(40, 10);
  ASSERT_NE(after, nullptr);
  EXPECT_EQ(*after, (WorkloadLabels{"shop", "checkout-7d9f8b6c5-x2x9k", "server", ""}));
  labeler.EndPass();
  // The budget charges the workload by its new name.
  labeler.SetMaxSeries(15);
  labeler.BeginPass();
  EXPECT_EQ(labeler.Labels(40, 10)->pod, "checkout-7d9f8b6c5-x2x9k");
  EXPECT_EQ(labeler.Labels(10, 10)->pod, "__overflow__");
  EXPECT_EQ(labeler.Labels(0, 5)->container, "");  // node level, within the budget
  labeler.EndPass();
}

}  // namespace
}  // namespace kmon
