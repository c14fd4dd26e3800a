// Command-line flags, Prometheus exporter style: --name=value or --name value,
// --collector.NAME / --no-collector.NAME from the collector table.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/log.h"

namespace kmon {

struct Flags {
  std::string config_file;
  std::string listen_address = ":9877";
  std::string telemetry_path = "/metrics";
  std::string web_config_file;
  bool enable_lifecycle = false;  // POST /-/reload; off as in Prometheus
  int max_requests = 40;          // --web.max-requests: handlers at once, beyond: 503
  std::map<std::string, bool> collector_overrides;  // name -> enabled
  LogLevel log_level = LogLevel::kInfo;
  LogFormat log_format = LogFormat::kLogfmt;
  bool check_config = false;
  bool version = false;
  bool help = false;
};

struct FlagsResult {
  Flags flags;
  std::vector<std::string> problems;  // one line each
};

/// Parses argv (without argv[0]). `collectors` are the names --collector.X accepts.
FlagsResult ParseFlags(const std::vector<std::string>& args,
                       const std::vector<std::string>& collectors);

/// The --help text.
std::string UsageText(const std::vector<std::string>& collectors);

}  // namespace kmon
