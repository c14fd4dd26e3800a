// Pure parts of the events collector: the config section (each problem with its
// key and line, against a catalog of tracepoints the test chooses), the naming of
// events, and the families built from fixed kernel data.
#include "collectors/events.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "bpf/events.h"
#include "collectors/workload_labeler.h"
#include "exporter/config.h"
#include "exporter/exposition.h"
#include "provider/workload.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// "The kernel" of these tests: a few tracepoints, or an error for every question.
class FakeCatalog : public TracepointCatalog {
 public:
  absl::StatusOr<bool> Has(const TracepointName& tp) override {
    ++asked;
    if (!error.empty()) return absl::PermissionDeniedError(error);
    return known.count(tp.category + ":" + tp.name) > 0;
  }
  std::set<std::string> known{"sched:sched_process_fork", "sched:sched_process_exec",
                              "sched:sched_process_exit", "syscalls:sys_enter_openat"};
  std::string error;
  int asked = 0;
};

class EventsConfigTest : public ::testing::Test {
 protected:
  ConfigResult Parse(const std::string& yaml) {
    return ParseConfig(yaml, [](const std::string&) { return std::nullopt; });
  }
  std::vector<std::string> Problems(const std::string& yaml) {
    std::vector<std::string> out;
    for (const ConfigProblem& p : Parse(yaml).problems) out.push_back(p.ToString());
    return out;
  }
  FakeCatalog catalog_;
  ScopedTracepointCatalog scoped_{&catalog_};
};

TEST_F(EventsConfigTest, DefaultIsOffWithNothingToCount) {
  const Config defaults = DefaultConfig();  // kept: Get returns a reference into it
  const EventsConfig& e = defaults.collectors.Get<EventsConfig>();
  EXPECT_FALSE(e.enabled);
  EXPECT_THAT(e.tracepoints, IsEmpty());
  EXPECT_THAT(e.functions, IsEmpty());
  // As SPEC writes it.
  ConfigResult r =
      Parse("collectors:\n  events: {enabled: false, tracepoints: [], functions: []}\n");
  ASSERT_THAT(r.problems, IsEmpty());
  EXPECT_FALSE(r.config->collectors.Get<EventsConfig>().enabled);
  EXPECT_EQ(catalog_.asked, 0);
}

TEST_F(EventsConfigTest, ReadsTracepointsAndFunctionsInOrder) {
  ConfigResult r = Parse(
      "collectors:\n"
      "  events:\n"
      "    enabled: true\n"
      "    tracepoints: [sched:sched_process_fork, \"syscalls:sys_enter_openat\"]\n"
      "    functions: [tcp_connect, vfs_read]\n");
  ASSERT_THAT(r.problems, IsEmpty());
  const EventsConfig& e = r.config->collectors.Get<EventsConfig>();
  EXPECT_TRUE(e.enabled);
  EXPECT_THAT(e.tracepoints, ElementsAre("sched:sched_process_fork", "syscalls:sys_enter_openat"));
  EXPECT_THAT(e.functions, ElementsAre("tcp_connect", "vfs_read"));
  EXPECT_EQ(catalog_.asked, 2);
}

TEST_F(EventsConfigTest, UnknownTracepointNamesItsKeyAndLine) {
  EXPECT_THAT(Problems("collectors:\n"
                       "  events:\n"
                       "    tracepoints:\n"
                       "      - sched:sched_process_fork\n"
                       "      - sched:sched_process_exec\n"
                       "      - foo:bar\n"),
              ElementsAre("line 6: collectors.events.tracepoints[2]: no tracepoint \"foo:bar\" "
                          "in this kernel"));
  // The category is part of the name: the right event in the wrong category is unknown.
  EXPECT_THAT(Problems("collectors:\n  events: {tracepoints: [task:sched_process_fork]}\n"),
              ElementsAre("line 2: collectors.events.tracepoints[0]: no tracepoint "
                          "\"task:sched_process_fork\" in this kernel"));
}

TEST_F(EventsConfigTest, MalformedTracepointsAreProblemsWithoutAskingTheKernel) {
  const std::vector<std::string> problems = Problems(
      "collectors:\n"
      "  events:\n"
      "    tracepoints:\n"
      "      - nocolon\n"                  // 4
      "      - \":sched_process_fork\"\n"  // 5
      "      - \"sched:\"\n"               // 6
      "      - a:b:c\n"                    // 7
      "      - ../../x:y\n"                // 8
      "      - \"sched: sched_switch\"\n"  // 9
      "      - sched:sched_process_exit\n");
  const std::string want = ": want \"category:name\", e.g. \"sched:sched_process_exec\"";
  EXPECT_THAT(problems,
              ElementsAre("line 4: collectors.events.tracepoints[0]: malformed tracepoint "
                          "\"nocolon\"" +
                              want,
                          "line 5: collectors.events.tracepoints[1]: malformed tracepoint "
                          "\":sched_process_fork\"" +
                              want,
                          "line 6: collectors.events.tracepoints[2]: malformed tracepoint "
                          "\"sched:\"" +
                              want,
                          "line 7: collectors.events.tracepoints[3]: malformed tracepoint "
                          "\"a:b:c\"" +
                              want,
                          "line 8: collectors.events.tracepoints[4]: malformed tracepoint "
                          "\"../../x:y\"" +
                              want,
                          "line 9: collectors.events.tracepoints[5]: malformed tracepoint "
                          "\"sched: sched_switch\"" +
                              want));
  EXPECT_EQ(catalog_.asked, 1);  // only the well-formed one
}

TEST_F(EventsConfigTest, DuplicatesWrongTypesAndUnknownKeys) {
  EXPECT_THAT(Problems("collectors:\n  events:\n    tracepoints: [sched:sched_process_fork, "
                       "sched:sched_process_fork]\n"),
              ElementsAre("line 3: collectors.events.tracepoints[1]: duplicate tracepoint "
                          "\"sched:sched_process_fork\" (also at index 0)"));
  EXPECT_THAT(Problems("collectors:\n  events:\n    functions: [tcp_connect, tcp_connect]\n"),
              ElementsAre("line 3: collectors.events.functions[1]: duplicate function "
                          "\"tcp_connect\" (also at index 0)"));
  const std::vector<std::string> p = Problems(
      "collectors:\n  events:\n    tracepoints: sched:sched_process_fork\n    probes: []\n");
  ASSERT_EQ(p.size(), 2u);
  EXPECT_THAT(p[0], ::testing::StartsWith("line 3: collectors.events.tracepoints: "));
  EXPECT_EQ(p[1],
            "line 4: collectors.events.probes: unknown key (expected one of: enabled, "
            "tracepoints, functions)");
}

TEST_F(EventsConfigTest, FunctionsAreCheckedForSpellingOnly) {
  EXPECT_THAT(Problems("collectors:\n"
                       "  events:\n"
                       "    functions:\n"
                       "      - tcp_connect\n"
                       "      - no_such_function_in_any_kernel\n"
                       "      - tcp-connect\n"
                       "      - 9lives\n"
                       "      - \"sched:sched_switch\"\n"),
              ElementsAre("line 6: collectors.events.functions[2]: malformed function name "
                          "\"tcp-connect\": want a kernel function's name, e.g. \"tcp_connect\"",
                          "line 7: collectors.events.functions[3]: malformed function name "
                          "\"9lives\": want a kernel function's name, e.g. \"tcp_connect\"",
                          "line 8: collectors.events.functions[4]: malformed function name "
                          "\"sched:sched_switch\": want a kernel function's name, e.g. "
                          "\"tcp_connect\""));
}

TEST_F(EventsConfigTest, AtMost64EventsTogether) {
  auto yaml = [](int tracepoints, int functions) {
    std::string y = "collectors:\n  events:\n    tracepoints: [";
    for (int i = 0; i < tracepoints; ++i) y += (i ? ", " : "") + absl::StrCat("t:e", i);
    y += "]\n    functions: [";
    for (int i = 0; i < functions; ++i) y += (i ? ", " : "") + absl::StrCat("f", i);
    return y + "]\n";
  };
  for (int i = 0; i < 64; ++i) catalog_.known.insert(absl::StrCat("t:e", i));
  EXPECT_THAT(Problems(yaml(64, 0)), IsEmpty());
  EXPECT_THAT(Problems(yaml(32, 32)), IsEmpty());
  EXPECT_THAT(Problems(yaml(40, 25)),
              ElementsAre("line 2: collectors.events: names 65 events (tracepoints and functions "
                          "together), at most 64"));
  EXPECT_EQ(KMON_EVENTS_MAX, 64);
  EXPECT_LT(KMON_EVENTS_MAX, KMON_EVENT_SLOTS);  // room to keep removed events' counters
}

TEST_F(EventsConfigTest, AKernelThatCannotBeAskedIsAProblemAtTheKey) {
  catalog_.error = "cannot check tracepoint names: /sys/kernel/tracing/events: Permission denied";
  EXPECT_THAT(Problems("collectors:\n  events:\n    tracepoints: [sched:sched_process_fork]\n"),
              ElementsAre("line 3: collectors.events.tracepoints[0]: cannot check tracepoint "
                          "names: /sys/kernel/tracing/events: Permission denied"));
}

TEST_F(EventsConfigTest, ShippedConfigHasTheDefaultSection) {
  const ConfigResult r = LoadConfigFile(std::string(KMON_SOURCE_DIR) + "/config/kmon.yaml",
                                        [](const std::string&) { return std::nullopt; });
  ASSERT_THAT(r.problems, IsEmpty());
  const EventsConfig& e = r.config->collectors.Get<EventsConfig>();
  EXPECT_FALSE(e.enabled);
  EXPECT_THAT(e.tracepoints, IsEmpty());
  EXPECT_THAT(e.functions, IsEmpty());
  EXPECT_EQ(ReadTextFile(std::string(KMON_SOURCE_DIR) + "/config/kmon.yaml"),
            ReadTextFile(std::string(KMON_SOURCE_DIR) + "/deploy/kubernetes/kmon.yaml"));
}

TEST(EventNamesTest, SplitsTracepointsAtTheColon) {
  std::optional<TracepointName> tp = SplitTracepoint("sched:sched_process_exec");
  ASSERT_TRUE(tp.has_value());
  EXPECT_EQ(tp->category, "sched");
  EXPECT_EQ(tp->name, "sched_process_exec");
  tp = SplitTracepoint("9p:9p_protocol_dump");  // categories may start with a digit
  ASSERT_TRUE(tp.has_value());
  EXPECT_EQ(tp->category, "9p");
  for (const char* bad : {"", ":", "sched", "sched:", ":x", "a:b:c", "a/b:c", "a:b.c", "a :b",
                          "sched:sched-switch"}) {
    EXPECT_FALSE(SplitTracepoint(bad).has_value()) << bad;
  }
}

TEST(EventNamesTest, FunctionNamesAreIdentifiers) {
  for (const char* good : {"tcp_connect", "_do_fork", "vfs_read", "x", "__x64_sys_read"}) {
    EXPECT_TRUE(IsFunctionName(good)) << good;
  }
  for (const char* bad : {"", "1x", "tcp-connect", "tcp_connect.isra.0", "a:b", "a b"}) {
    EXPECT_FALSE(IsFunctionName(bad)) << bad;
  }
}

// Fixed kernel data through the real family builder and the text serializer.
std::vector<prometheus::MetricFamily> FixedEventFamilies(int64_t max_series = 20000) {
  static WorkloadResolver workloads(std::make_unique<FixedCgroupPaths>(), nullptr);
  WorkloadLabeler labeler(&workloads, max_series);
  const std::vector<EventCount> counts = {
      {100, 0, 17},  // nginx.service: sched:sched_process_fork
      {100, 1, 17},  //   sched:sched_process_exec
      {100, 2, 18},  //   sched:sched_process_exit
      {200, 0, 4},   // the pod's container
      {200, 5, 99},  // number 5: a removed event, kept for a re-add: not exported
      {999, 0, 3},   // a cgroup that is gone: not exported
      {1, 2, 1},     // the root cgroup
  };
  const std::vector<EventStatus> events = {
      {"sched:sched_process_fork", 0, true},
      {"sched:sched_process_exec", 1, true},
      {"sched:sched_process_exit", 2, true},
      {"tcp_connect", 3, false},  // the kernel refused fentry: 0, no counts
  };
  labeler.BeginPass();
  auto families = BuildEventFamilies(counts, events, &labeler);
  labeler.EndPass();
  return families;
}

TEST(EventFamiliesTest, GoldenTextPassesPromtool) {
  ExpectGoldenMetrics(Serialize(FixedEventFamilies(), ExpositionFormat::kText004),
                      "events_metrics.prom");
}

TEST(EventFamiliesTest, CountsPerWorkloadAndEventAttachedPerEvent) {
  const auto families = FixedEventFamilies();
  ASSERT_EQ(families.size(), 2u);
  EXPECT_EQ(families[0].name, "kmon_kernel_events_total");
  EXPECT_EQ(families[0].metric.size(), 5u);
  const auto* exit =
      FindSample(families, "kmon_kernel_events_total",
                 {{"container", "nginx.service"}, {"event", "sched:sched_process_exit"}});
  ASSERT_NE(exit, nullptr);
  EXPECT_EQ(exit->counter.value, 18);
  const auto* pod = FindSample(families, "kmon_kernel_events_total",
                               {{"pod", "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc"}});
  ASSERT_NE(pod, nullptr);
  EXPECT_EQ(pod->counter.value, 4);
  EXPECT_EQ(FindSample(families, "kmon_kernel_events_total", {{"event", "tcp_connect"}}), nullptr);
  EXPECT_EQ(families[1].name, "kmon_kernel_event_attached");
  ASSERT_EQ(families[1].metric.size(), 4u);
  EXPECT_EQ(
      FindSample(families, "kmon_kernel_event_attached", {{"event", "tcp_connect"}})->gauge.value,
      0);
  EXPECT_EQ(
      FindSample(families, "kmon_kernel_event_attached", {{"event", "sched:sched_process_fork"}})
          ->gauge.value,
      1);
}

TEST(EventFamiliesTest, SeriesBudgetFoldsWhatDoesNotFit) {
  // Three series: the root cgroup's one fits, nginx.service's three then do not
  // (folded), the pod's one still does.
  const auto families = FixedEventFamilies(3);
  const auto* folded =
      FindSample(families, "kmon_kernel_events_total",
                 {{"container", kOverflowLabel}, {"event", "sched:sched_process_fork"}});
  ASSERT_NE(folded, nullptr);
  EXPECT_EQ(folded->counter.value, 17);
  const auto* pod =
      FindSample(families, "kmon_kernel_events_total", {{"container", "4f2a9c1b7d3e"}});
  ASSERT_NE(pod, nullptr);
  EXPECT_EQ(pod->counter.value, 4);
  // The attached gauges are per event, not per workload: never folded.
  EXPECT_EQ(families[1].metric.size(), 4u);
}

}  // namespace
}  // namespace kmon
