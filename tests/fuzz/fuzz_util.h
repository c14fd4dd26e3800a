// What the fuzz targets share: the input as text, and a split of it in two at its
// first NUL byte (for parsers that take two documents).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace kmon::fuzz {

inline std::string_view Text(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

inline std::pair<std::string_view, std::string_view> SplitAtNul(std::string_view text) {
  const size_t nul = text.find('\0');
  if (nul == std::string_view::npos) return {text, {}};
  return {text.substr(0, nul), text.substr(nul + 1)};
}

}  // namespace kmon::fuzz
