#include "exporter/app.h"

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <bpf/bpf.h>
#include <malloc.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "base/log.h"
#include "base/markup.h"
#include "collectors/bpf_util.h"
#include "exporter/privileges.h"
#include "exporter/self_metrics.h"
#include "exporter/version.h"

namespace kmon {
namespace {

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

void ApplyCollectorOverrides(const std::map<std::string, bool>& overrides, Config* config) {
  for (const auto& [name, on] : overrides) {
    if (bool* flag = config->EnabledFlag(name)) *flag = on;
  }
}

App::App(Flags flags, AppParts parts)
    : flags_(std::move(flags)),
      table_(parts.table != nullptr ? parts.table : &CollectorTable()),
      features_(parts.features ? std::move(parts.features)
                               : std::make_unique<RunningKernelFeatures>()) {}

App::~App() {
  http_.reset();
  for (auto& s : slots_) StopSlot(&s);
  // Its watch threads call back into this App: they end before any member does.
  if (kube_) kube_->Stop();
  if (bpf_stats_fd_ >= 0) close(bpf_stats_fd_);
}

App::FileStamp App::StampOf(const std::string& path) {
  FileStamp st;
  struct stat sb {};
  if (path.empty() || stat(path.c_str(), &sb) != 0) return st;
  st.ok = true;
  st.mtime_ns = static_cast<long long>(sb.st_mtim.tv_sec) * 1000000000LL + sb.st_mtim.tv_nsec;
  st.size = sb.st_size;
  st.ino = static_cast<long long>(sb.st_ino);
  return st;
}

absl::StatusOr<Config> App::LoadConfig() {
  ConfigResult r;
  if (flags_.config_file.empty()) {
    r.config = DefaultConfig();
  } else {
    r = LoadConfigFile(flags_.config_file, ProcessEnv());
  }
  if (!r.problems.empty()) {
    std::vector<std::string> lines;
    for (const auto& p : r.problems) lines.push_back(p.ToString());
    return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
  }
  ApplyCollectorOverrides(flags_.collector_overrides, &*r.config);
  return *r.config;
}

void App::StartSlot(Slot* slot, const Config& config) {
  slot->enabled = true;
  if (!slot->entry->factory) {
    slot->up = false;
    slot->reason = "not part of this version of kmon";
    LogWarn("collector skipped", {{"collector", slot->entry->name}, {"reason", slot->reason}});
    return;
  }
  // A collector's route answers only while that collector runs: a reload that stops
  // it must not leave the server calling into a destroyed object.
  const std::string name = slot->entry->name;
  auto handle = [this, name](const std::string& path, HttpHandler handler) {
    HttpHandler guarded = [this, name, handler](const HttpRequest& req) {
      std::shared_lock<std::shared_mutex> lock(routes_mu_);
      for (const auto& s : slots_) {
        if (s.entry->name == name && s.serving) return handler(req);
      }
      HttpResponse r;
      r.status = 404;
      r.body = absl::StrCat("collector ", name, " is not running\n");
      return r;
    };
    // Called under mu_ from StartSlot (startup or reload).
    if (http_) {
      http_->Handle(path, std::move(guarded));
    } else {
      pending_routes_.emplace_back(path, std::move(guarded));
    }
  };
  CollectorDeps deps{.workloads = workloads_.get(),
                     .watched = watched_.get(),
                     .handle_http = handle,
                     .topology = &topology_,
                     .features = features_.get(),
                     .peers = kube_ ? kube_->Peers() : nullptr};
  slot->collector = slot->entry->factory(deps);
  absl::Status st = slot->collector->Start(config);
  if (!st.ok()) {
    slot->collector.reset();
    slot->up = false;
    slot->reason = st.ToString();
    LogError("collector failed to start",
             {{"collector", slot->entry->name}, {"err", slot->reason}});
    return;
  }
  slot->up = true;
  slot->reason.clear();
  slot->map_entries = config.limits.MapEntriesOf(slot->entry->name);
  {
    std::unique_lock<std::shared_mutex> routes(routes_mu_);
    slot->serving = true;
  }
  const std::string detail = slot->collector->Detail();
  if (detail.empty()) {
    LogInfo("collector started", {{"collector", slot->entry->name}});
  } else {
    LogInfo("collector started", {{"collector", slot->entry->name}, {"detail", detail}});
  }
}

void App::StopSlot(Slot* slot) {
  {
    // Waits for routes already inside the collector; later ones answer 404.
    std::unique_lock<std::shared_mutex> routes(routes_mu_);
    slot->serving = false;
  }
  if (slot->collector) {
    slot->collector->Stop();
    slot->collector.reset();
    LogInfo("collector stopped", {{"collector", slot->entry->name}});
  }
  slot->enabled = false;
  slot->up = false;
}

absl::Status App::ApplyLocked(const Config& config) {
  std::vector<std::string> refused;
  for (auto& slot : slots_) {
    const bool* want = config.EnabledFlag(slot.entry->name);
    bool enabled = want != nullptr && *want;
    if (enabled && (!slot.enabled || (!slot.collector && slot.entry->factory))) {
      // New, or enabled but down: a reload tries again (the kernel, a permission
      // or a device may have come since the last attempt).
      StartSlot(&slot, config);
    } else if (!enabled && slot.enabled) {
      StopSlot(&slot);
    } else if (enabled && slot.collector &&
               config.limits.MapEntriesOf(slot.entry->name) != slot.map_entries) {
      // A map's size is fixed when the kernel makes it: the collector's object is
      // made again (its counters start again from zero, which Prometheus takes as
      // a counter reset). One that cannot start so refuses the config, and the
      // config in force is applied again, sizes and all.
      LogInfo("limits.bpf_map_entries changed: restarting the collector",
              {{"collector", slot.entry->name}});
      StopSlot(&slot);
      StartSlot(&slot, config);
      if (!slot.collector) refused.push_back(slot.reason);
    } else if (enabled && slot.collector) {
      absl::Status st = slot.collector->Reconfigure(config);
      if (!st.ok()) {
        LogError("collector refused the config",
                 {{"collector", slot.entry->name}, {"err", st.ToString()}});
        refused.push_back(st.ToString());
      }
    }
  }
  absl::Status st = watched_->Update(config.targets);
  if (!st.ok()) LogError("updating watched cgroups failed", {{"err", st.ToString()}});
  // Starting collectors parses kernel BTF and /proc/kallsyms into large temporaries;
  // hand those pages back rather than carry them as resident memory for the run.
  features_->Release();
  malloc_trim(0);
  if (refused.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(refused, "\n"));
}

int App::Start() {
  auto cfg = LoadConfig();
  if (!cfg.ok()) {
    std::vector<std::string> lines = absl::StrSplit(std::string(cfg.status().message()), '\n');
    for (const std::string& line : lines) {
      LogError("bad config", {{"file", flags_.config_file}, {"problem", line}});
    }
    return 1;
  }
  std::optional<WebConfig> web;
  if (!flags_.web_config_file.empty()) {
    auto w = LoadWebConfig(flags_.web_config_file);
    if (!w.ok()) {
      LogError("bad web config",
               {{"file", flags_.web_config_file}, {"err", w.status().ToString()}});
      return 1;
    }
    web = *w;
  }

  InstallLibbpfLogger();
  // Per-program run counts and run time cost a little on every run, so the kernel
  // keeps them off until asked; the fd keeps them on for as long as kmon runs.
  bpf_stats_fd_ = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (bpf_stats_fd_ >= 0) {
    LogInfo("enabled kernel.bpf_stats_enabled for per-program run counts and time");
  } else if (BpfStatsEnabled()) {
    LogInfo("kernel.bpf_stats_enabled is on (set by the node or an init container)");
  } else {
    LogWarn(
        "per-program BPF stats unavailable: kmon_bpf_program_* are not exported until "
        "kernel.bpf_stats_enabled=1 (turning it on takes CAP_SYS_ADMIN, at start only)",
        {{"err", std::strerror(errno)}});
  }

  std::optional<std::string> root = DetectCgroup2Root();
  if (!root) {
    LogWarn("no cgroup v2 mount found; workloads cannot be named");
    root = "/sys/fs/cgroup";
  }
  LogInfo("cgroup v2 root", {{"path", *root}});
  StartKubernetes(cfg->kubernetes);
  const PodMetadataSource* pods = kube_ ? kube_->Pods() : nullptr;
  workloads_ =
      std::make_unique<WorkloadResolver>(std::make_unique<CgroupFsPathSource>(*root), pods);
  workloads_->SetPodGrace(cfg->kubernetes.series_grace);
  const auto& shared = cfg->limits.MapEntriesOf(kSharedMapsCollector);
  auto watched_size = shared.find("watched_cgroups");
  watched_ = std::make_unique<WatchedCgroups>(
      workloads_.get(), pods,
      watched_size != shared.end() ? watched_size->second : KMON_MAX_WATCHED_CGROUPS);

  {
    std::lock_guard<std::mutex> lock(mu_);
    config_ = *cfg;
    for (const auto& e : *table_) slots_.push_back(Slot{&e, nullptr, false, false, ""});
    // At start nothing older could stand in: a refusal there is a collector down.
    ApplyLocked(config_).IgnoreError();
    last_reload_ok_ = true;
    last_reload_success_unix_ = UnixNow();
    config_stamp_ = StampOf(flags_.config_file);
    bool any_up = std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.up; });
    if (!any_up) {
      const bool refused = std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) {
        return s.reason.find(std::strerror(EPERM)) != std::string::npos;
      });
      LogError("no collector could start",
               {{"hint", refused ? PermissionHint(EPERM) : "see each collector's error above"}});
      return 2;
    }
  }

  HttpServerOptions opts;
  opts.listen_address = flags_.listen_address;
  opts.telemetry_path = flags_.telemetry_path;
  opts.web = web;
  opts.enable_lifecycle = flags_.enable_lifecycle;
  opts.max_requests = flags_.max_requests;
  HttpHooks hooks;
  hooks.gather = [this] { return Gather(); };
  hooks.ready = [this] { return Ready(); };
  hooks.reload = [this] { return Reload("http"); };
  hooks.landing_page = [this] { return LandingPage(); };
  auto server = HttpServer::Start(opts, std::move(hooks));
  if (!server.ok()) {
    LogError("cannot start HTTP server", {{"err", server.status().ToString()}});
    return 1;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    http_ = std::move(*server);
    for (auto& [path, handler] : pending_routes_) http_->Handle(path, std::move(handler));
    pending_routes_.clear();
  }
  LogInfo("listening", {{"address", flags_.listen_address},
                        {"path", flags_.telemetry_path},
                        {"tls", web && web->tls() ? "true" : "false"}});
  return 0;
}

void App::StartKubernetes(const KubernetesConfig& k) {
  const EnvLookup env = ProcessEnv();
  kube_wanted_ =
      k.enabled == "true" || (k.enabled == "auto" && (!k.kubeconfig.empty() || InCluster(env)));
  if (!kube_wanted_) {
    LogInfo("kubernetes metadata off: pods are named by UID and container ID",
            {{"enabled", k.enabled}});
    return;
  }
  absl::StatusOr<KubeTarget> target = ResolveKubeTarget(k.kubeconfig, k.node_name, env);
  if (!target.ok()) {
    LogError("kubernetes: cannot use the API; pods stay named by UID and container ID",
             {{"err", target.status().ToString()}});
    return;
  }
  KubeProviderOptions options;
  options.endpoint = std::move(target->endpoint);
  options.node_name = target->node_name;
  options.series_grace = k.series_grace;
  LogInfo("kubernetes: watching pods",
          {{"server", options.endpoint.server}, {"node", options.node_name}});
  kube_ = std::make_unique<KubeProvider>(std::move(options));
  kube_->SetOnChange([this] { provider_changed_ = true; });
  kube_->Start();
}

void App::FollowProviderLocked() {
  absl::Status st = watched_->Update(config_.targets);
  if (!st.ok()) LogWarn("updating watched cgroups failed", {{"err", st.ToString()}});
  for (auto& slot : slots_) {
    if (slot.collector) slot.collector->ProviderChanged();
  }
}

absl::Status App::Reload(const std::string& trigger) {
  auto cfg = LoadConfig();
  std::lock_guard<std::mutex> lock(mu_);
  config_stamp_ = StampOf(flags_.config_file);
  if (!cfg.ok()) {
    last_reload_ok_ = false;
    std::vector<std::string> lines = absl::StrSplit(std::string(cfg.status().message()), '\n');
    for (const std::string& line : lines) {
      LogError("config reload rejected; keeping the previous config",
               {{"trigger", trigger}, {"problem", line}});
    }
    return cfg.status();
  }
  absl::Status applied = ApplyLocked(*cfg);
  if (!applied.ok()) {
    // A collector refused its new settings (SPEC: that fails the whole reload):
    // every collector goes back to the config in force.
    last_reload_ok_ = false;
    ApplyLocked(config_).IgnoreError();
    LogError("config reload rejected by a collector; keeping the previous config",
             {{"trigger", trigger}, {"err", applied.ToString()}});
    return applied;
  }
  if (cfg->limits.MapEntriesOf(kSharedMapsCollector) !=
      config_.limits.MapEntriesOf(kSharedMapsCollector)) {
    // Every collector's object holds the shared set: resizing it means all of them.
    LogWarn("limits.bpf_map_entries.shared takes effect at the next start", {{"trigger", trigger}});
  }
  const KubernetesConfig& was = config_.kubernetes;
  const KubernetesConfig& is = cfg->kubernetes;
  if (was.enabled != is.enabled || was.node_name != is.node_name ||
      was.kubeconfig != is.kubeconfig) {
    // The provider's stores are what every collector's resolver reads: swapping them
    // under running collectors is not worth the risk for settings that follow the
    // node, not the workloads.
    LogWarn("kubernetes.enabled, node_name and kubeconfig take effect at the next start",
            {{"trigger", trigger}});
  }
  workloads_->SetPodGrace(is.series_grace);
  config_ = *cfg;
  last_reload_ok_ = true;
  last_reload_success_unix_ = UnixNow();
  LogInfo("config reloaded", {{"trigger", trigger}});
  return absl::OkStatus();
}

std::vector<prometheus::MetricFamily> App::Gather() {
  std::vector<prometheus::MetricFamily> out;
  try {
    std::lock_guard<std::mutex> lock(mu_);
    SelfState self;
    self.version = kVersion;
    self.revision = kRevision;
    self.libbpf_version = LibbpfVersion();
    self.kernel = KernelRelease();
    for (auto& slot : slots_) {
      if (!slot.enabled || !slot.entry->factory) continue;
      CollectorSelfState cs;
      cs.name = slot.entry->name;
      cs.up = slot.up;
      if (slot.collector) {
        slot.collector->Collect(&out);
        // Attached, but this collection failed: down for this scrape (its families
        // are left out), up again with the next one that succeeds.
        cs.collected = slot.collector->LastCollect().ok();
        cs.scrape_seconds = slot.collector->LastScrapeSeconds();
        cs.object = slot.collector->BpfObject();
        cs.lost = slot.collector->EventsLost();
        cs.series_overflow = slot.collector->SeriesOverflow();
      }
      self.collectors.push_back(std::move(cs));
    }
    self.last_reload_ok = last_reload_ok_;
    self.last_reload_success_unix = last_reload_success_unix_;
    self.watched_cgroups = watched_->WatchedCount();
    for (auto [name, fd] : {std::pair{"filter_config", watched_->FilterFd()},
                            std::pair{"watched_cgroups", watched_->SetFd()}}) {
      uint32_t id = 0;
      if (auto m = ReadMapFillFd(name, fd, &id)) {
        self.shared_maps.push_back(std::move(*m));
        self.shared_map_ids.push_back(id);
      }
    }
    self.bpf_stats = bpf_stats_fd_ >= 0 || BpfStatsEnabled();
    if (kube_) {
      for (const KubeWatchStatus& w : kube_->Status()) {
        self.kubernetes.push_back({w.scope, w.up, w.pods, w.last_sync_unix});
      }
    } else if (kube_wanted_) {
      self.kubernetes.push_back({"node", false, 0, 0});  // asked for, but no API to watch
    }
    for (auto& f : BuildSelfMetrics(self)) out.push_back(std::move(f));
  } catch (const std::exception& e) {
    LogError("gather failed", {{"err", e.what()}});
  }
  return out;
}

bool App::Ready() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& s : slots_) {
    if (s.enabled && s.entry->factory && !s.up) return false;
  }
  return true;
}

std::string App::LandingPage() {
  std::lock_guard<std::mutex> lock(mu_);
  std::string rows;
  for (const auto& s : slots_) {
    const absl::Status collected = s.collector ? s.collector->LastCollect() : absl::OkStatus();
    const bool up = s.up && collected.ok();
    std::string state = !s.enabled ? "disabled" : up ? "up" : "down";
    const std::string reason =
        collected.ok() ? s.reason : absl::StrCat("last collection failed: ", collected.ToString());
    const std::string detail = s.collector ? s.collector->Detail() : "";
    rows += absl::StrCat("<tr><td>", s.entry->name, "</td><td>", state, "</td><td>",
                         MarkupEscape(reason), "</td><td>", MarkupEscape(detail), "</td></tr>\n");
  }
  const std::string path = MarkupEscape(flags_.telemetry_path);
  return absl::StrCat(
      "<!DOCTYPE html>\n<html><head><title>kmon exporter</title></head><body>\n"
      "<h1>kmon exporter</h1>\n<p>version ",
      kVersion, " (revision ", kRevision, ")</p>\n", "<ul><li><a href=\"", path,
      "\">Metrics</a></li>",
      "<li><a href=\"/-/healthy\">Health</a></li><li><a href=\"/-/ready\">Readiness</a></li>"
      "</ul>\n<h2>Collectors</h2>\n<table border=\"1\"><tr><th>collector</th><th>state</th>"
      "<th>reason</th><th>detail</th></tr>\n",
      rows, "</table>\n</body></html>\n");
}

int App::Run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  auto next_refresh = std::chrono::steady_clock::now();
  for (;;) {
    // A quarter second: pod events reach the watched-cgroups map well within a second.
    timespec timeout{0, 250'000'000};
    int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      LogInfo("shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      http_.reset();
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& s : slots_) StopSlot(&s);
      if (kube_) kube_->Stop();
      return 0;
    }
    if (sig == SIGHUP) {
      Reload("SIGHUP").IgnoreError();
      continue;
    }
    // A change of the config file (an edit, or a ConfigMap's symlink swap) reloads.
    if (!flags_.config_file.empty()) {
      FileStamp now = StampOf(flags_.config_file);
      bool changed;
      {
        std::lock_guard<std::mutex> lock(mu_);
        changed = !(now == config_stamp_);
      }
      if (changed) Reload("file change").IgnoreError();
    }
    if (provider_changed_.exchange(false)) {
      std::lock_guard<std::mutex> lock(mu_);
      FollowProviderLocked();
    }
    // New cgroups are picked up into the watched set once per interval.
    if (std::chrono::steady_clock::now() >= next_refresh) {
      std::lock_guard<std::mutex> lock(mu_);
      absl::Status st = watched_->Update(config_.targets);
      if (!st.ok()) LogWarn("updating watched cgroups failed", {{"err", st.ToString()}});
      next_refresh = std::chrono::steady_clock::now() + config_.interval;
    }
  }
}

}  // namespace kmon
