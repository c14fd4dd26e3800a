#include "exporter/exposition.h"

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_split.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <system_error>

namespace kmon {
namespace {

constexpr const char* kOpenMetricsMediaType = "application/openmetrics-text";
constexpr const char* kTextMediaType = "text/plain";

// The q-value of one media range ("type/subtype;param=x;q=0.5"); 1 when absent, and a
// malformed q counts as 1 too (RFC 9110 says ignore what you cannot parse).
double QValue(const std::vector<absl::string_view>& params) {
  for (size_t i = 1; i < params.size(); ++i) {
    absl::string_view p = absl::StripAsciiWhitespace(params[i]);
    if (p.size() >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
      double q = 1.0;
      if (absl::SimpleAtod(p.substr(2), &q) && q >= 0.0 && q <= 1.0) return q;
      return 1.0;
    }
  }
  return 1.0;
}

void Put(std::string& out, absl::string_view s) { out.append(s.data(), s.size()); }

// Label values and OpenMetrics HELP text: backslash, double quote and newline escaped.
// Runs of plain characters are appended whole: most values have nothing to escape.
void AppendEscaped(std::string& out, absl::string_view s) {
  size_t plain = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c != '\\' && c != '"' && c != '\n') continue;
    out.append(s.data() + plain, i - plain);
    out += '\\';
    out += c == '\n' ? 'n' : c;
    plain = i + 1;
  }
  out.append(s.data() + plain, s.size() - plain);
}

// `precision` < 0: the shortest text that reads back to the same double.
void AppendChars(std::string& out, double v, std::chars_format fmt, int precision = -1) {
  std::array<char, 64> buf;
  auto [end, ec] = precision < 0
                       ? std::to_chars(buf.data(), buf.data() + buf.size(), v, fmt)
                       : std::to_chars(buf.data(), buf.data() + buf.size(), v, fmt, precision);
  if (ec == std::errc()) out.append(buf.data(), end);
}

bool AppendNonFinite(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    return false;
  }
  return true;
}

// A sample value: integers exactly representable in a double (|v| <= 2^53) print
// without exponent or decimal point ("1000000", not "1e+06"); everything else as the
// shortest text that reads back to the same double.
void AppendValue(std::string& out, double v) {
  if (AppendNonFinite(out, v)) return;
  constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
  if (std::trunc(v) == v && std::fabs(v) <= kMaxExactInteger) {
    std::array<char, 32> buf;
    auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), static_cast<int64_t>(v));
    if (ec == std::errc()) out.append(buf.data(), end);
    return;
  }
  std::array<char, 64> buf;
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec == std::errc()) out.append(buf.data(), end);
}

void AppendInt(std::string& out, int64_t v) {
  std::array<char, 24> buf;
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec == std::errc()) out.append(buf.data(), end);
}

void AppendUint(std::string& out, uint64_t v) {
  std::array<char, 24> buf;
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec == std::errc()) out.append(buf.data(), end);
}

// "le" and "quantile" label values, which OpenMetrics wants canonical so that a bucket
// keeps one spelling across exposers: Go's strconv.FormatFloat(v, 'g', -1, 64) (shortest
// digits; exponent form when the exponent is < -4 or >= 6) plus ".0" when the result has
// neither a point nor an exponent. 1 -> "1.0", 0.001 -> "0.001", 1e6 -> "1e+06".
void AppendCanonical(std::string& out, double v) {
  if (AppendNonFinite(out, v)) return;
  std::array<char, 64> sci;
  auto [sci_end, ec] =
      std::to_chars(sci.data(), sci.data() + sci.size(), v, std::chars_format::scientific);
  if (ec != std::errc()) return;
  const absl::string_view sci_text(sci.data(), sci_end - sci.data());
  const size_t e = sci_text.find('e');
  const int exponent = std::atoi(std::string(sci_text.substr(e + 1)).c_str());
  if (v != 0 && (exponent < -4 || exponent >= 6)) {
    Put(out, sci_text);
    return;
  }
  const size_t start = out.size();
  AppendChars(out, v, std::chars_format::fixed);
  if (out.find('.', start) == std::string::npos) out += ".0";
}

// OpenMetrics timestamps are seconds; ClientMetric carries milliseconds. Printed exactly
// from the integer ("1700000000.123"), never through a double.
void AppendTimestampSeconds(std::string& out, int64_t ms) {
  const uint64_t abs_ms =
      ms < 0 ? uint64_t{0} - static_cast<uint64_t>(ms) : static_cast<uint64_t>(ms);
  if (ms < 0) out += '-';
  AppendUint(out, abs_ms / 1000);
  const uint64_t frac = abs_ms % 1000;
  if (frac == 0) return;
  char digits[4] = {static_cast<char>('0' + frac / 100), static_cast<char>('0' + frac / 10 % 10),
                    static_cast<char>('0' + frac % 10), '\0'};
  for (int i = 2; i > 0 && digits[i] == '0'; --i) digits[i] = '\0';  // 1.500 -> 1.5
  out += '.';
  out += digits;
}

// A double as 1.0.1 prints it: printf's %.16g, "Nan", "+Inf", "-Inf".
void AppendTextValue(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "Nan";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  // Most values are whole (counts, bytes, bucket bounds above 1): %.16g prints an
  // integer below 1e16 as its digits.
  if (std::trunc(v) == v && std::fabs(v) < 1e16 && !(v == 0 && std::signbit(v))) {
    AppendInt(out, static_cast<int64_t>(v));
    return;
  }
  AppendChars(out, v, std::chars_format::general, 16);
}

constexpr ExpositionFormat kText = ExpositionFormat::kText004;
constexpr ExpositionFormat kOm = ExpositionFormat::kOpenMetrics100;

struct ExtraLabel {
  absl::string_view name;
  double value;
};

// A sample's name and labels, up to its value. The formats differ only in how the
// "le" and "quantile" values and the timestamp are written.
void AppendSample(std::string& out, absl::string_view name, absl::string_view suffix,
                  const prometheus::ClientMetric& metric, const ExtraLabel* extra,
                  ExpositionFormat format) {
  Put(out, name);
  Put(out, suffix);
  if (!metric.label.empty() || extra != nullptr) {
    out += '{';
    bool first = true;
    for (const auto& label : metric.label) {
      if (!first) out += ',';
      first = false;
      out += label.name;
      out += "=\"";
      AppendEscaped(out, label.value);
      out += '"';
    }
    if (extra != nullptr) {
      if (!first) out += ',';
      Put(out, extra->name);
      out += "=\"";
      if (format == ExpositionFormat::kText004) {
        AppendTextValue(out, extra->value);
      } else {
        AppendCanonical(out, extra->value);
      }
      out += '"';
    }
    out += '}';
  }
  out += ' ';
}

// Text 0.0.4 timestamps are milliseconds, OpenMetrics ones seconds.
void EndSample(std::string& out, const prometheus::ClientMetric& metric, ExpositionFormat format) {
  if (metric.timestamp_ms != 0) {
    out += ' ';
    if (format == ExpositionFormat::kText004) {
      AppendInt(out, metric.timestamp_ms);
    } else {
      AppendTimestampSeconds(out, metric.timestamp_ms);
    }
  }
  out += '\n';
}

// The TYPE line's word; text 0.0.4 says "untyped" where OpenMetrics says "unknown".
absl::string_view TypeName(prometheus::MetricType type, absl::string_view untyped) {
  switch (type) {
    case prometheus::MetricType::Counter:
      return "counter";
    case prometheus::MetricType::Gauge:
      return "gauge";
    case prometheus::MetricType::Summary:
      return "summary";
    case prometheus::MetricType::Histogram:
      return "histogram";
    case prometheus::MetricType::Untyped:
      break;
  }
  return untyped;
}

void WriteOpenMetricsFamily(std::string& out, const prometheus::MetricFamily& family) {
  using prometheus::MetricType;
  // A counter's family is named without `_total`; only its samples carry the suffix.
  absl::string_view name = family.name;
  if (family.type == MetricType::Counter && absl::EndsWith(name, "_total")) {
    name.remove_suffix(absl::string_view("_total").size());
  }
  out += "# TYPE ";
  Put(out, name);
  out += ' ';
  Put(out, TypeName(family.type, "unknown"));
  out += '\n';
  if (!family.help.empty()) {  // an empty HELP means "no HELP" in OpenMetrics
    out += "# HELP ";
    Put(out, name);
    out += ' ';
    AppendEscaped(out, family.help);
    out += '\n';
  }
  for (const auto& metric : family.metric) {
    // The _count and _sum samples of a summary or histogram.
    const auto count_and_sum = [&](uint64_t count, double sum) {
      AppendSample(out, name, "_count", metric, nullptr, kOm);
      AppendUint(out, count);
      EndSample(out, metric, kOm);
      AppendSample(out, name, "_sum", metric, nullptr, kOm);
      AppendValue(out, sum);
      EndSample(out, metric, kOm);
    };
    switch (family.type) {
      case MetricType::Counter:
        AppendSample(out, name, "_total", metric, nullptr, kOm);
        AppendValue(out, metric.counter.value);
        EndSample(out, metric, kOm);
        break;
      case MetricType::Gauge:
        AppendSample(out, name, "", metric, nullptr, kOm);
        AppendValue(out, metric.gauge.value);
        EndSample(out, metric, kOm);
        break;
      case MetricType::Untyped:
        AppendSample(out, name, "", metric, nullptr, kOm);
        AppendValue(out, metric.untyped.value);
        EndSample(out, metric, kOm);
        break;
      case MetricType::Summary:
        for (const auto& q : metric.summary.quantile) {
          const ExtraLabel quantile{"quantile", q.quantile};
          AppendSample(out, name, "", metric, &quantile, kOm);
          AppendValue(out, q.value);
          EndSample(out, metric, kOm);
        }
        count_and_sum(metric.summary.sample_count, metric.summary.sample_sum);
        break;
      case MetricType::Histogram: {
        bool has_inf = false;
        for (const auto& b : metric.histogram.bucket) {
          const ExtraLabel le{"le", b.upper_bound};
          AppendSample(out, name, "_bucket", metric, &le, kOm);
          AppendUint(out, b.cumulative_count);
          EndSample(out, metric, kOm);
          has_inf = has_inf || (std::isinf(b.upper_bound) && b.upper_bound > 0);
        }
        if (!has_inf) {  // OpenMetrics requires the +Inf bucket; it holds every event
          const ExtraLabel le{"le", HUGE_VAL};
          AppendSample(out, name, "_bucket", metric, &le, kOm);
          AppendUint(out, metric.histogram.sample_count);
          EndSample(out, metric, kOm);
        }
        count_and_sum(metric.histogram.sample_count, metric.histogram.sample_sum);
        break;
      }
    }
  }
}

// ---- Text 0.0.4 ----
// Byte for byte what prometheus-cpp 1.0.1's TextSerializer writes (the golden files
// were made with it; tests/exposition_test.cc compares the two on random input),
// without its ostream: that one formatted every number through the locale machinery
// and grew a stringbuf that was then copied whole, three times the text at its peak.
// HELP is escaped (backslash, newline) as the format says; 1.0.1 wrote it verbatim.

void AppendTextHelp(std::string& out, absl::string_view s) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

void WriteTextFamily(std::string& out, const prometheus::MetricFamily& family) {
  using prometheus::MetricType;
  if (!family.help.empty()) {
    out += "# HELP ";
    Put(out, family.name);
    out += ' ';
    AppendTextHelp(out, family.help);
    out += '\n';
  }
  out += "# TYPE ";
  Put(out, family.name);
  out += ' ';
  Put(out, TypeName(family.type, "untyped"));
  out += '\n';
  for (const auto& metric : family.metric) {
    // Text 0.0.4 puts a summary's and a histogram's _count and _sum first.
    const auto count_and_sum = [&](uint64_t count, double sum) {
      AppendSample(out, family.name, "_count", metric, nullptr, kText);
      AppendUint(out, count);
      EndSample(out, metric, kText);
      AppendSample(out, family.name, "_sum", metric, nullptr, kText);
      AppendTextValue(out, sum);
      EndSample(out, metric, kText);
    };
    switch (family.type) {
      case MetricType::Counter:
      case MetricType::Gauge:
      case MetricType::Untyped:
        AppendSample(out, family.name, "", metric, nullptr, kText);
        AppendTextValue(out, family.type == MetricType::Counter ? metric.counter.value
                             : family.type == MetricType::Gauge ? metric.gauge.value
                                                                : metric.untyped.value);
        EndSample(out, metric, kText);
        break;
      case MetricType::Summary:
        count_and_sum(metric.summary.sample_count, metric.summary.sample_sum);
        for (const auto& q : metric.summary.quantile) {
          const ExtraLabel quantile{"quantile", q.quantile};
          AppendSample(out, family.name, "", metric, &quantile, kText);
          AppendTextValue(out, q.value);
          EndSample(out, metric, kText);
        }
        break;
      case MetricType::Histogram: {
        const auto& hist = metric.histogram;
        count_and_sum(hist.sample_count, hist.sample_sum);
        double last = -HUGE_VAL;
        for (const auto& b : hist.bucket) {
          const ExtraLabel le{"le", b.upper_bound};
          AppendSample(out, family.name, "_bucket", metric, &le, kText);
          last = b.upper_bound;
          AppendUint(out, b.cumulative_count);
          EndSample(out, metric, kText);
        }
        if (last != HUGE_VAL) {
          const ExtraLabel le{"le", HUGE_VAL};
          AppendSample(out, family.name, "_bucket", metric, &le, kText);
          AppendUint(out, hist.sample_count);
          EndSample(out, metric, kText);
        }
        break;
      }
    }
  }
}

void WriteFamily(std::string& out, const prometheus::MetricFamily& family,
                 ExpositionFormat format) {
  if (format == ExpositionFormat::kText004) {
    WriteTextFamily(out, family);
  } else {
    WriteOpenMetricsFamily(out, family);
  }
}

}  // namespace

ExpositionFormat NegotiateFormat(std::string_view accept_header_std) {
  const absl::string_view accept_header(accept_header_std.data(), accept_header_std.size());
  // Prometheus asks for "application/openmetrics-text;version=1.0.0,...;q=0.75,
  // text/plain;version=0.0.4;q=0.5,*/*;q=0.1". OpenMetrics wins when it is listed with
  // q > 0 and at least the q of text/plain; any version of it gets 1.0.0, the only one
  // we write (0.0.1 differs only in what a scraper may tolerate).
  double openmetrics_q = -1.0;
  double text_q = -1.0;
  for (absl::string_view range : absl::StrSplit(accept_header, ',')) {
    std::vector<absl::string_view> params = absl::StrSplit(range, ';');
    const std::string media = absl::AsciiStrToLower(absl::StripAsciiWhitespace(params[0]));
    const double q = QValue(params);
    if (media == kOpenMetricsMediaType) {
      openmetrics_q = std::max(openmetrics_q, q);
    } else if (media == kTextMediaType) {
      text_q = std::max(text_q, q);
    }
  }
  if (openmetrics_q > 0.0 && openmetrics_q >= text_q) return ExpositionFormat::kOpenMetrics100;
  return ExpositionFormat::kText004;
}

std::string_view ContentType(ExpositionFormat format) {
  switch (format) {
    case ExpositionFormat::kOpenMetrics100:
      return "application/openmetrics-text; version=1.0.0; charset=utf-8";
    case ExpositionFormat::kText004:
      break;
  }
  return "text/plain; version=0.0.4; charset=utf-8";
}

std::string Serialize(const std::vector<prometheus::MetricFamily>& families,
                      ExpositionFormat format) {
  std::string out;
  for (const auto& family : families) WriteFamily(out, family, format);
  if (format == ExpositionFormat::kOpenMetrics100) out += "# EOF\n";
  return out;
}

size_t EstimateSize(const std::vector<prometheus::MetricFamily>& families) {
  // Per line: the name and a suffix, the labels, an le or quantile label, a value
  // and maybe a timestamp; a few bytes over rather than under.
  size_t bytes = 0;
  for (const auto& family : families) {
    bytes += 2 * family.name.size() + family.help.size() + 32;
    for (const auto& metric : family.metric) {
      size_t line = family.name.size() + 64;
      for (const auto& label : metric.label) line += label.name.size() + label.value.size() + 4;
      const size_t lines = 1 + metric.histogram.bucket.size() + metric.summary.quantile.size() +
                           (family.type == prometheus::MetricType::Histogram ||
                                    family.type == prometheus::MetricType::Summary
                                ? 3
                                : 0);
      bytes += line * lines;
    }
  }
  return bytes;
}

void SerializeInto(std::vector<prometheus::MetricFamily>&& families, ExpositionFormat format,
                   std::string* out) {
  out->clear();
  // Room for all of it first: a buffer that doubled as it filled would copy itself
  // and hold old and new at once (a fresh one, after a burst or at start). Reserved
  // pages cost nothing until written.
  out->reserve(EstimateSize(families));
  for (auto& family : families) {
    WriteFamily(*out, family, format);
    // Written: its samples go now, so the text grows as the families shrink.
    std::vector<prometheus::ClientMetric>().swap(family.metric);
  }
  if (format == ExpositionFormat::kOpenMetrics100) *out += "# EOF\n";
}

}  // namespace kmon
