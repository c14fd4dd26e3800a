// Text 0.0.4 and OpenMetrics 1.0 serialization: golden files for a fixed set of
// families (checked by promtool too), content negotiation, and the number formats.
#include "exporter/exposition.h"

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace kmon {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr double kInf = std::numeric_limits<double>::infinity();

ClientMetric::Label L(std::string name, std::string value) {
  return ClientMetric::Label{std::move(name), std::move(value)};
}

ClientMetric Counter(std::vector<ClientMetric::Label> labels, double v) {
  ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = v;
  return m;
}

ClientMetric Gauge(std::vector<ClientMetric::Label> labels, double v, int64_t ts_ms = 0) {
  ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = v;
  m.timestamp_ms = ts_ms;
  return m;
}

// The fixed input of the golden files: a counter whose labels and help need escaping,
// a gauge (one sample with a timestamp), and a histogram with three finite buckets plus
// +Inf as prometheus-cpp's Histogram::Collect hands them over.
std::vector<MetricFamily> GoldenFamilies() {
  MetricFamily counter;
  counter.name = "kmon_test_requests_total";
  counter.help = "Requests served.\nHelp may hold a backslash \\ and \"quotes\".";
  counter.type = MetricType::Counter;
  counter.metric.push_back(Counter({L("code", "200"), L("path", "/api/\"v1\"")}, 1027));
  counter.metric.push_back(Counter({L("code", "500"), L("path", "C:\\dir\nnext")}, 3));

  MetricFamily gauge;
  gauge.name = "kmon_test_queue_length";
  gauge.help = "Items waiting.";
  gauge.type = MetricType::Gauge;
  gauge.metric.push_back(Gauge({L("queue", "fast")}, 21.5));
  gauge.metric.push_back(Gauge({L("queue", "slow")}, -4, 1700000000123));

  MetricFamily hist;
  hist.name = "kmon_test_request_duration_seconds";
  hist.help = "Request latency.";
  hist.type = MetricType::Histogram;
  ClientMetric h;
  h.label = {L("method", "GET")};
  h.histogram.sample_count = 8;
  h.histogram.sample_sum = 3.25;
  h.histogram.bucket = {{2, 0.005}, {5, 0.1}, {7, 1.0}, {8, kInf}};
  hist.metric.push_back(h);

  return {counter, gauge, hist};
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string GoldenPath(const std::string& name) {
  return std::string(KMON_SOURCE_DIR) + "/tests/golden/" + name;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) lines.push_back(line);
  return lines;
}

TEST(NegotiateFormat, PicksOpenMetricsOnlyWhenAskedFor) {
  EXPECT_EQ(NegotiateFormat(""), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("*/*"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("text/plain;version=0.0.4"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text"), ExpositionFormat::kOpenMetrics100);
  // Prometheus 2.x's scrape Accept header.
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;version=1.0.0,application/"
                            "openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;"
                            "q=0.5,*/*;q=0.1"),
            ExpositionFormat::kOpenMetrics100);
  EXPECT_EQ(NegotiateFormat(" Application/OpenMetrics-Text ; version=1.0.0"),
            ExpositionFormat::kOpenMetrics100);
}

TEST(NegotiateFormat, HonoursQValues) {
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;q=0"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text; version=1.0.0; q=0.0, text/plain"),
            ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("text/plain;q=1,application/openmetrics-text;q=0.5"),
            ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("text/plain;q=0.5,application/openmetrics-text;q=0.9"),
            ExpositionFormat::kOpenMetrics100);
}

TEST(ContentType, NamesVersionAndCharset) {
  EXPECT_EQ(ContentType(ExpositionFormat::kText004), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(ContentType(ExpositionFormat::kOpenMetrics100),
            "application/openmetrics-text; version=1.0.0; charset=utf-8");
}

TEST(Serialize, TextMatchesGoldenFile) {
  EXPECT_EQ(Serialize(GoldenFamilies(), ExpositionFormat::kText004),
            ReadFile(GoldenPath("exposition_text.prom")));
}

TEST(Serialize, OpenMetricsMatchesGoldenFile) {
  EXPECT_EQ(Serialize(GoldenFamilies(), ExpositionFormat::kOpenMetrics100),
            ReadFile(GoldenPath("exposition_openmetrics.txt")));
}

TEST(Serialize, TextPassesPromtoolCheckMetrics) {
  ASSERT_EQ(access("/usr/bin/promtool", X_OK), 0) << "promtool is part of the test toolchain";
  const CommandResult r = RunWithInput("/usr/bin/promtool check metrics",
                                       Serialize(GoldenFamilies(), ExpositionFormat::kText004));
  EXPECT_EQ(r.exit_status, 0) << r.output;
  EXPECT_EQ(r.output, "");  // promtool prints lint problems; there must be none
}

TEST(Serialize, PromtoolFailsOnABrokenExposition) {
  // Proves the check above can fail: a counter without _total is a lint problem.
  const CommandResult r =
      RunWithInput("/usr/bin/promtool check metrics", "# HELP foo x\n# TYPE foo counter\nfoo 1\n");
  EXPECT_NE(r.exit_status, 0);
  EXPECT_NE(r.output.find("_total"), std::string::npos) << r.output;
}

TEST(Serialize, OpenMetricsStructure) {
  const std::string om = Serialize(GoldenFamilies(), ExpositionFormat::kOpenMetrics100);
  ASSERT_GE(om.size(), 6u);
  EXPECT_EQ(om.substr(om.size() - 6), "# EOF\n");
  EXPECT_EQ(om.find("# EOF"), om.size() - 6) << "# EOF only at the end";
  int counter_samples = 0;
  for (const std::string& line : Lines(om)) {
    if (line.rfind("# TYPE ", 0) == 0 || line.rfind("# HELP ", 0) == 0) {
      const std::string name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_EQ(name.find("_total"), std::string::npos) << line;
    } else if (line.rfind("kmon_test_requests", 0) == 0) {
      EXPECT_EQ(line.rfind("kmon_test_requests_total{", 0), 0u) << line;
      ++counter_samples;
    }
  }
  EXPECT_EQ(counter_samples, 2);
  EXPECT_NE(om.find("# TYPE kmon_test_requests counter\n"), std::string::npos);
  EXPECT_NE(om.find("kmon_test_request_duration_seconds_bucket{method=\"GET\",le=\"+Inf\"} 8\n"),
            std::string::npos);
}

TEST(Serialize, OpenMetricsPassesAStrictParser) {
  // prometheus_client's OpenMetrics parser rejects what the spec forbids (a counter
  // TYPE with _total, a missing # EOF, bad escapes). Debian: python3-prometheus-client.
  const char* kCheck =
      "/usr/bin/python3 -c 'import sys\n"
      "from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n"
      "fams = list(p(sys.stdin.read()))\n"
      "print(len(fams), sum(len(f.samples) for f in fams))'";
  if (RunWithInput("/usr/bin/python3 -c 'import prometheus_client'", "").exit_status != 0) {
    GTEST_SKIP() << "python3-prometheus-client is not installed";
  }
  const CommandResult r =
      RunWithInput(kCheck, Serialize(GoldenFamilies(), ExpositionFormat::kOpenMetrics100));
  EXPECT_EQ(r.exit_status, 0) << r.output;
  EXPECT_EQ(r.output, "3 10\n");  // 3 families; 2 + 2 + (4 buckets, count, sum) samples
}

TEST(Serialize, EmptyInput) {
  EXPECT_EQ(Serialize({}, ExpositionFormat::kOpenMetrics100), "# EOF\n");
  EXPECT_EQ(Serialize({}, ExpositionFormat::kText004), "");
}

// One gauge sample in OpenMetrics, without the metadata lines and # EOF.
std::string OmGaugeSample(double v, int64_t ts_ms = 0) {
  MetricFamily f;
  f.name = "g";
  f.type = MetricType::Gauge;
  f.metric.push_back(Gauge({}, v, ts_ms));
  const std::string om = Serialize({f}, ExpositionFormat::kOpenMetrics100);
  const std::vector<std::string> lines = Lines(om);
  EXPECT_EQ(lines.size(), 3u) << om;  // TYPE, sample, EOF (no HELP: it is empty)
  return lines.size() == 3 ? lines[1] : "";
}

TEST(OpenMetricsNumbers, Values) {
  EXPECT_EQ(OmGaugeSample(0), "g 0");
  EXPECT_EQ(OmGaugeSample(42), "g 42");
  EXPECT_EQ(OmGaugeSample(-4), "g -4");
  EXPECT_EQ(OmGaugeSample(1e6), "g 1000000");  // an integer: no exponent
  EXPECT_EQ(OmGaugeSample(9007199254740992.0), "g 9007199254740992");
  EXPECT_EQ(OmGaugeSample(0.1), "g 0.1");
  EXPECT_EQ(OmGaugeSample(21.5), "g 21.5");
  EXPECT_EQ(OmGaugeSample(1e-7), "g 1e-07");
  EXPECT_EQ(OmGaugeSample(1e21), "g 1e+21");
  EXPECT_EQ(OmGaugeSample(0.1 + 0.2), "g 0.30000000000000004");  // round-trips exactly
  EXPECT_EQ(OmGaugeSample(kInf), "g +Inf");
  EXPECT_EQ(OmGaugeSample(-kInf), "g -Inf");
  EXPECT_EQ(OmGaugeSample(std::nan("")), "g NaN");
}

TEST(OpenMetricsNumbers, TimestampsAreSeconds) {
  EXPECT_EQ(OmGaugeSample(1, 1700000000123), "g 1 1700000000.123");
  EXPECT_EQ(OmGaugeSample(1, 1500), "g 1 1.5");
  EXPECT_EQ(OmGaugeSample(1, 2000), "g 1 2");
  EXPECT_EQ(OmGaugeSample(1, 1001), "g 1 1.001");
  EXPECT_EQ(OmGaugeSample(1, -1500), "g 1 -1.5");
}

TEST(OpenMetricsNumbers, CanonicalLeValues) {
  // The spec's "Canonical Numbers" examples: Go's %g plus ".0" when integral.
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0.0"},           {0.001, "0.001"}, {0.002, "0.002"}, {0.01, "0.01"},
      {0.1, "0.1"},           {0.9, "0.9"},     {0.95, "0.95"},   {0.99, "0.99"},
      {0.999, "0.999"},       {1.0, "1.0"},     {1.7, "1.7"},     {10.0, "10.0"},
      {1e-10, "1e-10"},       {1e-09, "1e-09"}, {1e-05, "1e-05"}, {0.0001, "0.0001"},
      {100000.0, "100000.0"}, {1e+06, "1e+06"}, {1e+10, "1e+10"}, {0.0025, "0.0025"},
  };
  MetricFamily f;
  f.name = "h";
  f.type = MetricType::Histogram;
  ClientMetric m;
  for (const auto& [bound, text] : cases) m.histogram.bucket.push_back({0, bound});
  m.histogram.bucket.push_back({0, kInf});
  f.metric.push_back(m);
  const std::vector<std::string> lines = Lines(Serialize({f}, ExpositionFormat::kOpenMetrics100));
  ASSERT_EQ(lines.size(), 1 + cases.size() + 1 + 2 + 1);  // TYPE, buckets, +Inf, count+sum, EOF
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(lines[1 + i], "h_bucket{le=\"" + cases[i].second + "\"} 0");
  }
  EXPECT_EQ(lines[1 + cases.size()], "h_bucket{le=\"+Inf\"} 0");
}

TEST(OpenMetrics, HistogramWithoutInfBucketGetsOne) {
  MetricFamily f;
  f.name = "lat_seconds";
  f.help = "h";
  f.type = MetricType::Histogram;
  ClientMetric m;
  m.histogram.sample_count = 5;
  m.histogram.sample_sum = 0.5;
  m.histogram.bucket = {{3, 0.25}};
  f.metric.push_back(m);
  EXPECT_EQ(Serialize({f}, ExpositionFormat::kOpenMetrics100),
            "# TYPE lat_seconds histogram\n"
            "# HELP lat_seconds h\n"
            "lat_seconds_bucket{le=\"0.25\"} 3\n"
            "lat_seconds_bucket{le=\"+Inf\"} 5\n"
            "lat_seconds_count 5\n"
            "lat_seconds_sum 0.5\n"
            "# EOF\n");
}

TEST(OpenMetrics, SummaryUntypedAndCounterWithoutSuffix) {
  MetricFamily summary;
  summary.name = "rpc_seconds";
  summary.help = "RPC latency.";
  summary.type = MetricType::Summary;
  ClientMetric s;
  s.label = {L("svc", "a")};
  s.summary.sample_count = 10;
  s.summary.sample_sum = 1.5;
  s.summary.quantile = {{0.5, 0.1}, {0.99, 0.75}};
  summary.metric.push_back(s);

  MetricFamily untyped;
  untyped.name = "mystery";
  untyped.help = "Unknown.";
  untyped.type = MetricType::Untyped;
  ClientMetric u;
  u.untyped.value = 7;
  untyped.metric.push_back(u);

  MetricFamily counter;  // a counter named without _total still gets it on its samples
  counter.name = "events";
  counter.type = MetricType::Counter;
  counter.metric.push_back(Counter({}, 2));

  EXPECT_EQ(Serialize({summary, untyped, counter}, ExpositionFormat::kOpenMetrics100),
            "# TYPE rpc_seconds summary\n"
            "# HELP rpc_seconds RPC latency.\n"
            "rpc_seconds{svc=\"a\",quantile=\"0.5\"} 0.1\n"
            "rpc_seconds{svc=\"a\",quantile=\"0.99\"} 0.75\n"
            "rpc_seconds_count{svc=\"a\"} 10\n"
            "rpc_seconds_sum{svc=\"a\"} 1.5\n"
            "# TYPE mystery unknown\n"
            "# HELP mystery Unknown.\n"
            "mystery 7\n"
            "# TYPE events counter\n"
            "events_total 2\n"
            "# EOF\n");
}

TEST(Text, HelpIsEscaped) {
  // prometheus-cpp 1.0.1 writes HELP raw; a newline in it would end the line early.
  MetricFamily f;
  f.name = "x";
  f.help = "a\\b\nc";
  f.type = MetricType::Gauge;
  f.metric.push_back(Gauge({}, 1));
  EXPECT_EQ(Serialize({f}, ExpositionFormat::kText004),
            "# HELP x a\\\\b\\nc\n# TYPE x gauge\nx 1\n");
}

// Random families of every type, with values of every kind (whole, fractional, tiny,
// huge, -0, NaN, infinities), labels that need escaping and timestamps: kmon's text
// writer must give exactly what prometheus-cpp 1.0.1's TextSerializer gives (the
// golden files were made with it), HELP apart, which 1.0.1 does not escape.
TEST(Text, SameBytesAsPrometheusCppTextSerializer) {
  std::mt19937_64 rng(42);
  const std::vector<double> special{0,
                                    -0.0,
                                    1,
                                    -1,
                                    0.1,
                                    1.0 / 3,
                                    1e-7,
                                    1e15,
                                    1e16,
                                    1e21,
                                    2.5e-5,
                                    123456789.123,
                                    9007199254740993.0,
                                    5e-324,
                                    1.7976931348623157e308,
                                    std::nan(""),
                                    kInf,
                                    -kInf};
  auto value = [&]() -> double {
    switch (rng() % 4) {
      case 0:
        return special[rng() % special.size()];
      case 1:
        return static_cast<double>(rng() % 100000000000ULL);
      case 2:
        return std::ldexp(static_cast<double>(rng() % 1000000) - 500000,
                          -static_cast<int>(rng() % 40));
      default:
        return std::ldexp(static_cast<double>(rng()), static_cast<int>(rng() % 200) - 100);
    }
  };
  const std::vector<std::string> texts{
      "", "a", "nginx.service", "x\"q\"", "C:\\d\nn", "\n", "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc"};
  const MetricType types[] = {MetricType::Counter, MetricType::Gauge, MetricType::Summary,
                              MetricType::Untyped, MetricType::Histogram};
  std::vector<MetricFamily> families;
  for (int i = 0; i < 200; ++i) {
    MetricFamily f;
    f.name = "kmon_random_" + std::to_string(i);
    f.help = i % 5 == 0 ? "" : "Help text " + std::to_string(i) + ".";
    f.type = types[i % 5];
    const int labels = static_cast<int>(rng() % 4);
    for (int s = 0; s < 1 + static_cast<int>(rng() % 5); ++s) {
      ClientMetric m;
      for (int l = 0; l < labels; ++l) {
        m.label.push_back(L("l" + std::to_string(l), texts[rng() % texts.size()]));
      }
      m.counter.value = value();
      m.gauge.value = value();
      m.untyped.value = value();
      m.summary.sample_count = rng() % 1000;
      m.summary.sample_sum = value();
      m.histogram.sample_count = rng();
      m.histogram.sample_sum = value();
      for (int b = 0; b < static_cast<int>(rng() % 4); ++b) {
        m.summary.quantile.push_back({value(), value()});
        m.histogram.bucket.push_back({rng() % 5000, value()});
      }
      if (rng() % 3 == 0) m.histogram.bucket.push_back({7, kInf});
      if (rng() % 4 == 0) m.timestamp_ms = static_cast<int64_t>(rng() % 2000000000000ULL) - 1000;
      f.metric.push_back(std::move(m));
    }
    families.push_back(std::move(f));
  }
  for (ExpositionFormat format : {ExpositionFormat::kText004, ExpositionFormat::kOpenMetrics100}) {
    EXPECT_GE(EstimateSize(families), Serialize(families, format).size());  // never regrows
  }
  const std::string theirs = prometheus::TextSerializer().Serialize(families);
  EXPECT_EQ(Serialize(families, ExpositionFormat::kText004), theirs);
  std::string into = "left over from the last scrape";
  SerializeInto(std::vector<MetricFamily>(families), ExpositionFormat::kText004, &into);
  EXPECT_EQ(into, theirs);
}

TEST(SerializeInto, FreesEachFamilyAndMatchesSerialize) {
  std::vector<MetricFamily> families = GoldenFamilies();
  for (ExpositionFormat format : {ExpositionFormat::kText004, ExpositionFormat::kOpenMetrics100}) {
    std::vector<MetricFamily> consumed = families;
    std::string out;
    SerializeInto(std::move(consumed), format, &out);
    EXPECT_EQ(out, Serialize(families, format));
  }
  std::vector<MetricFamily> consumed = families;
  std::string out;
  SerializeInto(std::move(consumed), ExpositionFormat::kText004, &out);
  for (const MetricFamily& f : consumed) EXPECT_TRUE(f.metric.empty()) << f.name;
}

}  // namespace
}  // namespace kmon
