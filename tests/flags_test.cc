#include "exporter/flags.h"

#include <gtest/gtest.h>

namespace kmon {
namespace {

const std::vector<std::string> kCollectors{"tcp", "syscalls"};

TEST(FlagsTest, DefaultsMatchSpec) {
  FlagsResult r = ParseFlags({}, kCollectors);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(r.flags.listen_address, ":9877");
  EXPECT_EQ(r.flags.telemetry_path, "/metrics");
  EXPECT_EQ(r.flags.config_file, "");
  EXPECT_EQ(r.flags.log_level, LogLevel::kInfo);
  EXPECT_EQ(r.flags.log_format, LogFormat::kLogfmt);
  EXPECT_FALSE(r.flags.check_config);
  EXPECT_FALSE(r.flags.enable_lifecycle);  // POST /-/reload is opt-in, as in Prometheus
}

TEST(FlagsTest, EnableLifecycleIsABooleanFlag) {
  FlagsResult r = ParseFlags({"--web.enable-lifecycle"}, kCollectors);
  ASSERT_TRUE(r.problems.empty()) << r.problems[0];
  EXPECT_TRUE(r.flags.enable_lifecycle);
  r = ParseFlags({"--web.enable-lifecycle=true"}, kCollectors);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0], "flag --web.enable-lifecycle takes no value");
  EXPECT_NE(UsageText(kCollectors).find("--web.enable-lifecycle"), std::string::npos);
}

TEST(FlagsTest, BothValueSpellings) {
  FlagsResult r = ParseFlags({"--config.file=/etc/kmon.yaml", "--web.listen-address",
                              "127.0.0.1:1234", "--log.level=debug", "--log.format", "json",
                              "--web.telemetry-path=/m", "--web.config.file=/w.yml"},
                             kCollectors);
  ASSERT_TRUE(r.problems.empty()) << r.problems[0];
  EXPECT_EQ(r.flags.config_file, "/etc/kmon.yaml");
  EXPECT_EQ(r.flags.listen_address, "127.0.0.1:1234");
  EXPECT_EQ(r.flags.log_level, LogLevel::kDebug);
  EXPECT_EQ(r.flags.log_format, LogFormat::kJson);
  EXPECT_EQ(r.flags.telemetry_path, "/m");
  EXPECT_EQ(r.flags.web_config_file, "/w.yml");
}

TEST(FlagsTest, MaxRequests) {
  EXPECT_EQ(ParseFlags({}, kCollectors).flags.max_requests, 40);  // SPEC default
  FlagsResult r = ParseFlags({"--web.max-requests=5"}, kCollectors);
  ASSERT_TRUE(r.problems.empty()) << r.problems[0];
  EXPECT_EQ(r.flags.max_requests, 5);
  r = ParseFlags({"--web.max-requests", "1"}, kCollectors);
  ASSERT_TRUE(r.problems.empty()) << r.problems[0];
  EXPECT_EQ(r.flags.max_requests, 1);
  for (const std::string bad : {"0", "-3", "many", "4.5", "", "99999999999"}) {
    r = ParseFlags({"--web.max-requests=" + bad}, kCollectors);
    ASSERT_EQ(r.problems.size(), 1u) << bad;
    EXPECT_EQ(r.problems[0],
              "flag --web.max-requests: \"" + bad + "\" is not a whole number of at least 1");
  }
  EXPECT_NE(UsageText(kCollectors).find("--web.max-requests=N"), std::string::npos);
}

TEST(FlagsTest, CollectorOverridesComeFromTheTable) {
  FlagsResult r = ParseFlags({"--no-collector.tcp", "--collector.syscalls"}, kCollectors);
  ASSERT_TRUE(r.problems.empty());
  EXPECT_EQ(r.flags.collector_overrides.at("tcp"), false);
  EXPECT_EQ(r.flags.collector_overrides.at("syscalls"), true);
}

TEST(FlagsTest, EveryProblemIsNamed) {
  FlagsResult r = ParseFlags({"--collector.gpu", "--bogus", "--log.level=loud", "--log.format=xml",
                              "--web.telemetry-path=metrics", "stray", "--version=1",
                              "--config.file"},
                             kCollectors);
  ASSERT_EQ(r.problems.size(), 8u);
  EXPECT_EQ(r.problems[0], "flag --collector.gpu: unknown collector \"gpu\"");
  EXPECT_EQ(r.problems[1], "unknown flag --bogus");
  EXPECT_EQ(r.problems[2], "flag --log.level: \"loud\" is not one of debug, info, warn, error");
  EXPECT_EQ(r.problems[3], "flag --log.format: \"xml\" is not one of logfmt, json");
  EXPECT_EQ(r.problems[4], "flag --web.telemetry-path: \"metrics\" must start with /");
  EXPECT_EQ(r.problems[5], "unexpected argument \"stray\"");
  EXPECT_EQ(r.problems[6], "flag --version takes no value");
  EXPECT_EQ(r.problems[7], "flag --config.file needs a value");
}

TEST(FlagsTest, UsageListsCollectors) {
  std::string u = UsageText(kCollectors);
  EXPECT_NE(u.find("\n  tcp\n"), std::string::npos);
  EXPECT_NE(u.find("\n  syscalls\n"), std::string::npos);
  EXPECT_NE(u.find("--web.listen-address"), std::string::npos);
}

}  // namespace
}  // namespace kmon
