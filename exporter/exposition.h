// Metric families -> bytes on the wire: Prometheus text 0.0.4, or OpenMetrics 1.0
// when the scraper asks for it in its Accept header.
#pragma once

#include <prometheus/metric_family.h>

#include <string>
#include <string_view>
#include <vector>

namespace kmon {

enum class ExpositionFormat { kText004, kOpenMetrics100 };

/// Picks the format from an HTTP Accept header (OpenMetrics only when it is asked for).
ExpositionFormat NegotiateFormat(std::string_view accept_header);

/// The Content-Type header value of a format.
std::string_view ContentType(ExpositionFormat format);

/// Serializes families: text 0.0.4 as prometheus-cpp 1.0.1's TextSerializer writes it
/// (HELP escaped), or OpenMetrics 1.0 (counter families lose `_total` in # TYPE/HELP,
/// `# EOF` ends it).
std::string Serialize(const std::vector<prometheus::MetricFamily>& families,
                      ExpositionFormat format);

/// A little more than the bytes the text of `families` takes in either format: what
/// SerializeInto reserves before it writes.
size_t EstimateSize(const std::vector<prometheus::MetricFamily>& families);

/// The same text into `out`, which is cleared first and keeps its capacity (a buffer
/// reused from scrape to scrape). Each family's samples are freed once written, so a
/// scrape never holds all its families and all their text at once.
void SerializeInto(std::vector<prometheus::MetricFamily>&& families, ExpositionFormat format,
                   std::string* out);

}  // namespace kmon
