// Splitting text without a copy.
#pragma once

#include <string_view>
#include <vector>

namespace kmon {

/// The non-empty pieces of `text` between `sep` characters: "/a//b/" -> {"a", "b"}.
/// Views into `text`.
std::vector<std::string_view> SplitNonEmpty(std::string_view text, char sep);

}  // namespace kmon
