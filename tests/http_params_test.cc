#include "base/http_params.h"

#include <gtest/gtest.h>

#include <string>

namespace kmon {
namespace {

TEST(WholeNumberParamTest, TakesDigitsInRange) {
  EXPECT_EQ(*ParseWholeNumberParam("seconds", "1", {1, 600}), 1);
  EXPECT_EQ(*ParseWholeNumberParam("seconds", "600", {1, 600}), 600);
  EXPECT_EQ(*ParseWholeNumberParam("seconds", "060", {1, 600}), 60);
  EXPECT_EQ(*ParseWholeNumberParam("seconds", "35", {5, 600, 5}), 35);
}

TEST(WholeNumberParamTest, RejectsAnythingElseNamingParameterValueAndRange) {
  // Empty, signed, spaced, a fraction, an exponent, hex, a unit, out of range, past int64.
  for (const std::string v : {"", "1e2", "30s", "+30", "-30", " 30", "30 ", "30.0", "0x1e", "30\n",
                              "0", "601", "99999999999999999999"}) {
    absl::StatusOr<int64_t> r = ParseWholeNumberParam("seconds", v, {1, 600});
    ASSERT_FALSE(r.ok()) << v;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(),
              "seconds: want a whole number from 1 to 600, got \"" + v + "\"");
  }
  absl::StatusOr<int64_t> off_grid = ParseWholeNumberParam("seconds", "7", {5, 600, 5});
  ASSERT_FALSE(off_grid.ok());
  EXPECT_EQ(off_grid.status().message(), "seconds: want a multiple of 5 from 5 to 600, got \"7\"");
}

}  // namespace
}  // namespace kmon
