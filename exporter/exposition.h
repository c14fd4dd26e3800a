// Metric families -> bytes on the wire: Prometheus text 0.0.4, or OpenMetrics 1.0
// when the scraper asks for it in its Accept header.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <prometheus/metric_family.h>

namespace kmon {

enum class ExpositionFormat { kText004, kOpenMetrics100 };

/// Picks the format from an HTTP Accept header (OpenMetrics only when it is asked for).
ExpositionFormat NegotiateFormat(std::string_view accept_header);

/// The Content-Type header value of a format.
std::string_view ContentType(ExpositionFormat format);

/// Serializes families. Text 0.0.4 via prometheus-cpp's TextSerializer; OpenMetrics
/// by our own writer (counter families lose `_total` in # TYPE/HELP, `# EOF` ends it).
std::string Serialize(const std::vector<prometheus::MetricFamily>& families,
                      ExpositionFormat format);

}  // namespace kmon
