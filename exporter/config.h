// The YAML config (schema in ../shared/SPEC.md, documented in config/kmon.yaml):
// parsed strictly, every problem reported with its key and line, nothing half-applied.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kmon {

struct TargetsConfig {
  std::vector<std::string> namespaces;                      // empty: all
  std::vector<std::string> exclude_namespaces{"kube-system"};
  std::map<std::string, std::string> pod_selector;          // matchLabels
  bool host_processes = true;
  /// True when the config narrows what is watched, so BPF must consult the
  /// watched-cgroups control map instead of counting every cgroup.
  bool Filters() const;
};

struct KubernetesConfig {
  std::string enabled = "auto";  // auto | true | false
  std::string node_name;
  std::string kubeconfig;
};

struct LimitsConfig {
  int64_t max_series_per_collector = 20000;
};

struct TcpConfig {
  bool enabled = true;
  std::vector<uint16_t> ports;  // empty: all
  std::vector<double> latency_buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                      0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                      1,      2.5,     5,      10};
};

struct TopologyConfig {
  bool enabled = true;
  std::string granularity = "pod";           // pod | workload
  std::string external_peers = "aggregate";  // aggregate | address
  bool service_graph_metrics = false;
};

struct DropsConfig {
  bool enabled = true;
};

struct BlockioConfig {
  bool enabled = true;
  std::vector<std::string> devices;  // empty: all
};

struct SyscallsConfig {
  bool enabled = true;
  std::vector<std::string> syscalls{"read",  "write", "sendto",     "recvfrom",
                                    "sendmsg", "recvmsg", "openat", "close",
                                    "futex", "epoll_wait", "connect", "accept4"};
  /// Native syscall numbers of `syscalls`, same order; filled by the parser.
  std::vector<int> numbers;
  /// Names libseccomp knows but this CPU architecture lacks (e.g. `epoll_wait`
  /// on arm64). They are dropped from `syscalls` so one config can serve a
  /// mixed-architecture cluster; callers should log them. Filled by the parser.
  std::vector<std::string> unavailable;
};

struct CpuConfig {
  bool enabled = true;
  std::chrono::nanoseconds offcpu_min = std::chrono::milliseconds(1);
  bool stacks = true;
};

struct DnsConfig {
  bool enabled = true;
  std::vector<uint16_t> ports{53};
};

struct PagecacheConfig {
  bool enabled = true;
};

struct CollectorsConfig {
  TcpConfig tcp;
  TopologyConfig topology;
  DropsConfig drops;
  BlockioConfig blockio;
  SyscallsConfig syscalls;
  CpuConfig cpu;
  DnsConfig dns;
  PagecacheConfig pagecache;
};

struct Config {
  std::chrono::nanoseconds interval = std::chrono::seconds(15);
  TargetsConfig targets;
  KubernetesConfig kubernetes;
  LimitsConfig limits;
  CollectorsConfig collectors;

  /// The `enabled` flag of collector `name`, or nullptr for an unknown name.
  bool* EnabledFlag(std::string_view name);
  const bool* EnabledFlag(std::string_view name) const;
};

/// One problem found in a config: which key, on which YAML line (1-based; 0 when
/// the problem is not tied to a line), and what is wrong.
struct ConfigProblem {
  std::string key;  // dotted path, e.g. "collectors.tcp.latency_buckets[3]"
  int line = 0;
  std::string message;
  /// "line 12: collectors.tcp.latency_buckets[3]: must be greater than 0.5"
  std::string ToString() const;
};

struct ConfigResult {
  std::optional<Config> config;          // set only when problems is empty
  std::vector<ConfigProblem> problems;
};

/// Looks up an environment variable for ${VAR} expansion; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
/// The process environment.
EnvLookup ProcessEnv();

/// Built-in defaults (what SPEC shows), with syscall numbers resolved.
Config DefaultConfig();

/// Parses and validates YAML text. `${VAR}` in scalar values is expanded with
/// `env` (unset: empty string; `$$` is a literal `$`). Reports every problem.
ConfigResult ParseConfig(std::string_view yaml_text, const EnvLookup& env);

/// Reads `path` and parses it; an unreadable file is one problem naming the path.
ConfigResult LoadConfigFile(const std::string& path, const EnvLookup& env);

/// Parses a Prometheus-style duration: "15s", "1ms", "1m30s", "2h", "100us", "0".
std::optional<std::chrono::nanoseconds> ParseDuration(std::string_view text);

}  // namespace kmon
