#include "base/gzip.h"

#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

namespace kmon {
namespace {

// The q-value of one Accept-Encoding element ("gzip;q=0.5"); 1 without one, nullopt
// when it is malformed (such an element is ignored, as if absent).
std::optional<double> QValue(absl::string_view params) {
  double q = 1;
  for (absl::string_view p : absl::StrSplit(params, ';', absl::SkipEmpty())) {
    p = absl::StripAsciiWhitespace(p);
    if (p.size() < 2 || absl::AsciiStrToLower(p.substr(0, 2)) != "q=") continue;
    if (!absl::SimpleAtod(p.substr(2), &q) || q < 0 || q > 1) return std::nullopt;
  }
  return q;
}

}  // namespace

absl::StatusOr<std::string> Gzip(std::string_view data, int level) {
  std::string out;
  absl::Status st = GzipInto(data, level, &out);
  if (!st.ok()) return st;
  return out;
}

absl::Status GzipInto(std::string_view data, int level, std::string* out) {
  z_stream zs{};
  // windowBits 15 + 16: a gzip header and trailer around the deflate stream.
  if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    return absl::InternalError("zlib: deflateInit2 failed");
  }
  // Text compresses about tenfold; start at an eighth (or what the buffer has) and
  // double when deflate runs out of room.
  out->resize(std::max(out->capacity(), data.size() / 8 + 4096));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out->data());
  zs.avail_out = static_cast<uInt>(out->size());
  int rc;
  while ((rc = deflate(&zs, Z_FINISH)) == Z_OK || (rc == Z_BUF_ERROR && zs.avail_out == 0)) {
    if (zs.avail_out != 0) continue;
    const size_t used = zs.total_out;
    out->resize(out->size() * 2);
    zs.next_out = reinterpret_cast<Bytef*>(out->data() + used);
    zs.avail_out = static_cast<uInt>(out->size() - used);
  }
  const size_t written = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) return absl::InternalError(absl::StrCat("zlib: deflate returned ", rc));
  out->resize(written);
  return absl::OkStatus();
}

bool AcceptsGzip(std::string_view header) {
  std::optional<bool> gzip, any;
  // Debian's abseil has its own string_view, not std's.
  const absl::string_view accept_encoding(header.data(), header.size());
  for (absl::string_view element : absl::StrSplit(accept_encoding, ',', absl::SkipEmpty())) {
    const size_t semi = element.find(';');
    const std::string name =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(element.substr(0, semi)));
    const std::optional<double> q =
        QValue(semi == absl::string_view::npos ? "" : element.substr(semi + 1));
    if (!q) continue;
    if (name == "gzip" || name == "x-gzip") gzip = *q > 0;
    if (name == "*") any = *q > 0;
  }
  if (gzip) return *gzip;
  return any.value_or(false);
}

}  // namespace kmon
