// Small parsers for the text files of /proc: whole files, fields, hex numbers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kmon {

/// The whole file, or nullopt when it cannot be opened.
std::optional<std::string> ReadWholeFile(const std::string& path);

/// Hex digits (no "0x", at most 16) into `out`; false on anything else.
bool ParseHex(std::string_view s, uint64_t* out);

/// Splits off the next field of `s`, separated by spaces or tabs (kallsyms puts a
/// tab before a module name); empty when none is left.
std::string_view NextField(std::string_view* s);

}  // namespace kmon
