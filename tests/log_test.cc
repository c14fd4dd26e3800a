#include "base/log.h"

#include <gtest/gtest.h>

namespace kmon {
namespace {

TEST(LogTest, Logfmt) {
  EXPECT_EQ(FormatLogLine(LogFormat::kLogfmt, "2026-01-02T03:04:05.006Z", LogLevel::kWarn,
                          "collector failed", {{"collector", "tcp"}, {"err", "no \"perm\""},
                                               {"empty", ""}, {"plain", "a=b"}}),
            "ts=2026-01-02T03:04:05.006Z level=warn msg=\"collector failed\" collector=tcp "
            "err=\"no \\\"perm\\\"\" empty=\"\" plain=\"a=b\"");
}

TEST(LogTest, Json) {
  EXPECT_EQ(FormatLogLine(LogFormat::kJson, "T", LogLevel::kError, "bad\nline",
                          {{"k", "v\"\\\x01"}}),
            "{\"ts\":\"T\",\"level\":\"error\",\"msg\":\"bad\\nline\",\"k\":\"v\\\"\\\\\\u0001\"}");
}

TEST(LogTest, ParseLevelAndFormat) {
  LogLevel l;
  EXPECT_TRUE(ParseLogLevel("debug", &l));
  EXPECT_EQ(l, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("error", &l));
  EXPECT_EQ(l, LogLevel::kError);
  EXPECT_FALSE(ParseLogLevel("verbose", &l));
  LogFormat f;
  EXPECT_TRUE(ParseLogFormat("json", &f));
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("JSON", &f));
}

}  // namespace
}  // namespace kmon
