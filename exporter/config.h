// The YAML config (schema in ../shared/SPEC.md, documented in config/kmon.yaml):
// parsed strictly with the engine in base/strict_yaml.h, every problem reported
// with its key and line, nothing half-applied. The top-level keys are parsed
// here; each `collectors.NAME` section by its collector (the collector table's
// section parser), so adding a collector changes nothing in this file.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/strict_yaml.h"
#include "collectors/collector_config.h"

namespace kmon {

struct KubernetesConfig {
  std::string enabled = "auto";  // auto | true | false
  std::string node_name;
  std::string kubeconfig;
  /// How long a deleted pod's series stay on /metrics (they keep its names meanwhile).
  std::chrono::nanoseconds series_grace = std::chrono::minutes(5);
};

/// The whole config: what collectors are handed, and what only the exporter uses.
struct Config : CollectorConfig {
  /// Every collector's section with its defaults (from the collector table).
  Config();
  KubernetesConfig kubernetes;

  /// The `enabled` flag of collector `name`, or nullptr for an unknown name.
  bool* EnabledFlag(std::string_view name) { return collectors.EnabledFlag(name); }
  const bool* EnabledFlag(std::string_view name) const { return collectors.EnabledFlag(name); }
};

struct ConfigResult {
  std::optional<Config> config;  // set only when problems is empty
  std::vector<ConfigProblem> problems;
};

/// Built-in defaults (what SPEC shows), with syscall numbers resolved.
Config DefaultConfig();

/// Parses and validates YAML text. `${VAR}` in scalar values is expanded with
/// `env` (unset: empty string; `$$` is a literal `$`). Reports every problem.
ConfigResult ParseConfig(std::string_view yaml_text, const EnvLookup& env);

/// Reads `path` and parses it; an unreadable file is one problem naming the path.
ConfigResult LoadConfigFile(const std::string& path, const EnvLookup& env);

}  // namespace kmon
