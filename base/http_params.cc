#include "base/http_params.h"

#include <absl/status/status.h>
#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

#include <algorithm>

namespace kmon {

absl::StatusOr<int64_t> ParseWholeNumberParam(absl::string_view name, absl::string_view value,
                                              const WholeNumberRange& range) {
  int64_t n = 0;
  // SimpleAtoi alone would take a sign and surrounding spaces; an overflow fails it.
  const bool digits = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
    return absl::ascii_isdigit(static_cast<unsigned char>(c));
  });
  if (digits && absl::SimpleAtoi(value, &n) && n >= range.min && n <= range.max &&
      n % range.step == 0) {
    return n;
  }
  const std::string want =
      range.step == 1
          ? absl::StrCat("a whole number from ", range.min, " to ", range.max)
          : absl::StrCat("a multiple of ", range.step, " from ", range.min, " to ", range.max);
  return absl::InvalidArgumentError(absl::StrCat(name, ": want ", want, ", got \"", value, "\""));
}

}  // namespace kmon
