// Query parameters of the HTTP routes, read strictly: a value that is not one the
// route documents is the client's mistake to hear about (a 400 naming it), never a
// guess; strtol would read "1e2" as 1 and "30s" as 30.
#pragma once

#include <cstdint>

#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>

namespace kmon {

/// The whole numbers a parameter takes: from `min` to `max`, multiples of `step` (at least 1).
struct WholeNumberRange {
  int64_t min = 0;
  int64_t max = 0;
  int64_t step = 1;
};

/// `value`, the value of query parameter `name`, as a whole number in `range`: ASCII
/// digits only, so no sign, space, fraction, exponent or unit. Otherwise
/// InvalidArgument naming the parameter, what it takes and the value, e.g.
/// `seconds: want a multiple of 5 from 5 to 600, got "7"`.
absl::StatusOr<int64_t> ParseWholeNumberParam(absl::string_view name, absl::string_view value,
                                              const WholeNumberRange& range);

}  // namespace kmon
