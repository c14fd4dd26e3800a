// The exporter's lifecycle: load config, start collectors, serve HTTP, reload on
// SIGHUP / a change of the config file / POST /-/reload (--web.enable-lifecycle), shut
// down cleanly.
#pragma once

#include <absl/status/status.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "collectors/collector.h"
#include "collectors/kernel_features.h"
#include "collectors/topology_feed.h"
#include "collectors/watched_cgroups.h"
#include "exporter/config.h"
#include "exporter/flags.h"
#include "exporter/http_server.h"
#include "provider/kubernetes/kube_provider.h"
#include "provider/workload.h"

namespace kmon {

/// Applies --collector.NAME / --no-collector.NAME over the config file's choices.
void ApplyCollectorOverrides(const std::map<std::string, bool>& overrides, Config* config);

/// What an App is built from besides its flags; defaults are the real ones.
struct AppParts {
  /// The collectors to run (CollectorTable() when null). Rows must be names the
  /// config has sections for.
  const std::vector<CollectorEntry>* table = nullptr;
  /// Feature probes (the running kernel when null).
  std::unique_ptr<KernelFeatures> features;
};

class App {
 public:
  explicit App(Flags flags, AppParts parts = {});
  ~App();

  /// Loads the config, starts collectors and the HTTP server. Returns the process
  /// exit code to use when it fails (1: bad config/flags, 2: no collector started).
  int Start();
  /// Blocks until SIGTERM/SIGINT, handling SIGHUP, config-file changes and the
  /// periodic refresh of watched cgroups. Returns the exit code (0).
  int Run();

  /// Re-reads the config; a bad one is rejected whole and the old one stays.
  absl::Status Reload(const std::string& trigger);
  /// Every family for one scrape. Never throws.
  std::vector<prometheus::MetricFamily> Gather();
  bool Ready();
  std::string LandingPage();

 private:
  struct Slot {
    const CollectorEntry* entry;
    std::unique_ptr<Collector> collector;
    bool enabled = false;
    bool up = false;
    std::string reason;    // why it is down
    bool serving = false;  // its HTTP routes may call it; guarded by routes_mu_
    /// limits.bpf_map_entries of the running collector's object, as it was made.
    std::map<std::string, uint32_t> map_entries = {};
  };

  absl::StatusOr<Config> LoadConfig();
  /// Starts the Kubernetes provider when the config asks for it (`enabled: true`,
  /// or `auto` in a cluster or with a kubeconfig). A failure is logged and kmon
  /// runs on, naming pods by UID, with kmon_kubernetes_watch_up 0.
  void StartKubernetes(const KubernetesConfig& k);
  /// Brings the watched cgroups and every collector's provider-driven control maps
  /// up to date after a pod event. Caller holds mu_.
  void FollowProviderLocked();
  void StartSlot(Slot* slot, const Config& config);
  void StopSlot(Slot* slot);
  /// Starts/stops/reconfigures slots for a new config. Caller holds mu_. An error
  /// lists the collectors that refused their new settings.
  absl::Status ApplyLocked(const Config& config);

  Flags flags_;
  const std::vector<CollectorEntry>* table_;
  std::unique_ptr<KernelFeatures> features_;
  // Collector HTTP routes hold this shared while they run, so a slow one (a flame
  // graph) never blocks scrapes or reloads on mu_; stopping a collector takes it
  // exclusively, so no route is inside a collector when it stops.
  std::shared_mutex routes_mu_;
  std::mutex mu_;  // guards everything below
  Config config_;
  std::vector<Slot> slots_;
  bool last_reload_ok_ = true;
  double last_reload_success_unix_ = 0;
  bool kube_wanted_ = false;                   // the config asks for Kubernetes metadata
  std::unique_ptr<KubeProvider> kube_;         // null without Kubernetes or when it failed
  std::atomic<bool> provider_changed_{false};  // set from a watch thread
  std::unique_ptr<WorkloadResolver> workloads_;
  std::unique_ptr<WatchedCgroups> watched_;
  TopologyFeed topology_;
  std::unique_ptr<HttpServer> http_;
  // Routes collectors asked for before the server existed; registered once it does.
  std::vector<std::pair<std::string, HttpHandler>> pending_routes_;
  int bpf_stats_fd_ = -1;
  struct FileStamp {
    bool ok = false;
    long long mtime_ns = 0, size = 0, ino = 0;
    bool operator==(const FileStamp&) const = default;
  };
  static FileStamp StampOf(const std::string& path);
  FileStamp config_stamp_;
};

}  // namespace kmon
