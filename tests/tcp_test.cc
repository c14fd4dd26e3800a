#include <cmath>

#include <gtest/gtest.h>

#include "collectors/tcp.h"
#include "collectors/tcp_listeners.h"
#include "collectors/topology.h"

namespace kmon {
namespace {

TEST(TcpListenersTest, ParsesListenStateOnly) {
  const char* v4 =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
      "inode\n"
      "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
      "12345 1 0000000000000000 100 0 0 10 0\n"
      "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
      "12346 1 0000000000000000 100 0 0 10 0\n"
      "   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 "
      "12347 1 0000000000000000 20 4 30 10 -1\n";
  EXPECT_EQ(ParseProcNetTcpListeners(v4), (std::vector<uint16_t>{8080, 22}));
  const char* v6 =
      "  sl  local_address                         remote_address                        st\n"
      "   0: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 0A "
      "00000000:00000000 00:00000000 00000000     0        0 777 1\n";
  EXPECT_EQ(ParseProcNetTcpListeners(v6), (std::vector<uint16_t>{9090}));
  EXPECT_TRUE(ParseProcNetTcpListeners("").empty());
  EXPECT_TRUE(ParseProcNetTcpListeners("header\n   0: garbage\n").empty());
}

TEST(TcpTest, BoundsToNanosRounds) {
  EXPECT_EQ(BoundsToNanos({0.0001, 0.00025, 1, 10}),
            (std::vector<uint64_t>{100000, 250000, 1000000000, 10000000000}));
}

TEST(TopologyTest, HistogramQuantileInterpolatesLikePromql) {
  const std::vector<double> bounds{0.1, 0.2, 0.4};
  // 10 in (0,0.1], 10 in (0.1,0.2], 0 in (0.2,0.4], 0 in +Inf.
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.5, bounds, {10, 10, 0, 0}), 0.1);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.75, bounds, {10, 10, 0, 0}), 0.15);
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.25, bounds, {10, 10, 0, 0}), 0.05);
  // Mass in +Inf: the highest finite bound, as histogram_quantile answers.
  EXPECT_DOUBLE_EQ(HistogramQuantile(0.95, bounds, {0, 0, 0, 5}), 0.4);
  EXPECT_TRUE(std::isnan(HistogramQuantile(0.95, bounds, {0, 0, 0, 0})));
}

TEST(TopologyTest, FormatsAddresses) {
  std::array<uint8_t, 16> v4{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2};
  EXPECT_EQ(FormatAddress(v4), "198.18.1.2");
  std::array<uint8_t, 16> v6{};
  v6[15] = 1;
  EXPECT_EQ(FormatAddress(v6), "::1");
}

}  // namespace
}  // namespace kmon
