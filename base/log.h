// Structured logging to stderr in the two formats Prometheus exporters use:
// logfmt (default) and JSON. One line per event, safe from any thread.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kmon {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kLogfmt, kJson };

/// Key/value pairs attached to a log line, in the order given.
using LogFields = std::vector<std::pair<std::string, std::string>>;

/// Parses "debug|info|warn|error"; false when the word is none of them.
bool ParseLogLevel(std::string_view text, LogLevel* out);
/// Parses "logfmt|json"; false when the word is none of them.
bool ParseLogFormat(std::string_view text, LogFormat* out);

/// Sets the process-wide threshold and format. Call before starting threads.
void ConfigureLogging(LogLevel level, LogFormat format);

/// Formats one line (no trailing newline) without writing it; exposed for tests.
std::string FormatLogLine(LogFormat format, std::string_view timestamp, LogLevel level,
                          std::string_view msg, const LogFields& fields);

/// Writes one line to stderr when `level` is at or above the threshold.
void Log(LogLevel level, std::string_view msg, const LogFields& fields = {});

inline void LogDebug(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kDebug, m, f); }
inline void LogInfo(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kInfo, m, f); }
inline void LogWarn(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kWarn, m, f); }
inline void LogError(std::string_view m, const LogFields& f = {}) { Log(LogLevel::kError, m, f); }

}  // namespace kmon
