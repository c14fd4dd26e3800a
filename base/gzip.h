// gzip (RFC 1952) with zlib: pprof profiles, and HTTP responses for clients that
// accept the gzip content coding (Prometheus always does).
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <string>
#include <string_view>

namespace kmon {

/// zlib's levels: 1 is the fastest (what a scrape wants: kmon runs on every node),
/// -1 zlib's default (6).
inline constexpr int kGzipFastest = 1;
inline constexpr int kGzipDefault = -1;

/// `data` as one gzip member.
absl::StatusOr<std::string> Gzip(std::string_view data, int level = kGzipDefault);

/// The same into `out`, replaced, whose capacity is reused (a buffer kept from one
/// response to the next). It grows as deflate fills it rather than being sized for
/// the worst case up front: zeroing a bound as large as the input would make every
/// page of it resident for output that is a tenth of it.
absl::Status GzipInto(std::string_view data, int level, std::string* out);

/// Whether an Accept-Encoding value (RFC 9110 12.5.3) accepts gzip: "gzip" (or its
/// alias "x-gzip") with a q-value above 0, or "*" above 0 when gzip is not named.
/// Names are case-insensitive; "gzip;q=0" refuses it.
bool AcceptsGzip(std::string_view accept_encoding);

}  // namespace kmon
