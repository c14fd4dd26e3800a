// The exporter's lifecycle around collectors, with collectors that stand in for
// real ones: a reload retries a collector whose start failed, through the
// feature-probe seam (KernelFeatures) the real collectors use, and reports it up
// once it has attached; real collectors whose BPF object the kernel refuses (the
// loader seam) are down with the reason while the others serve.
#include "exporter/app.h"

#include <bpf/libbpf.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "collectors/families.h"
#include "tests/kube_api_server.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

// A kernel whose BTF a test switches on and off.
class SwitchableFeatures : public KernelFeatures {
 public:
  explicit SwitchableFeatures(bool* has_btf, int* probes) : has_btf_(has_btf), probes_(probes) {}
  absl::StatusOr<const btf*> VmlinuxBtf() override {
    ++*probes_;
    if (!*has_btf_)
      return absl::FailedPreconditionError("load vmlinux BTF: No such file or directory");
    return static_cast<const btf*>(nullptr);  // the probing collector only asks whether it is there
  }
  void Release() override {}

 private:
  bool* has_btf_;
  int* probes_;
};

// A collector that needs the kernel's BTF to start, as drops, cpu and blockio do,
// and then exports one sample: how many times it was started.
class BtfProbingCollector : public Collector {
 public:
  explicit BtfProbingCollector(const CollectorDeps& deps) : Collector("drops", deps) {}
  ~BtfProbingCollector() override { Stop(); }

 private:
  absl::Status DoStart(const CollectorConfig&) override {
    absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
    if (!vmlinux.ok())
      return absl::Status(vmlinux.status().code(),
                          "collector=drops: " + std::string(vmlinux.status().message()));
    running_ = true;
    return absl::OkStatus();
  }
  absl::Status Configure(const CollectorConfig&) override { return absl::OkStatus(); }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override {
    FamilyBuilder b("kmon_test_probed", "Exported once started.", prometheus::MetricType::Gauge,
                    {});
    b.AddGauge({}, 1);
    out->push_back(b.Build());
    return absl::OkStatus();
  }
  void DoStop() override { running_ = false; }
  bool Running() const override { return running_; }
  bool running_ = false;
};

// One that always starts, so that the app has something up. Like a collector whose
// kernel map refuses a value, it refuses a config whose series limit is 7, and it
// remembers the limit it was last configured with.
std::atomic<int64_t> g_configured_limit{0};

class AlwaysUpCollector : public Collector {
 public:
  explicit AlwaysUpCollector(const CollectorDeps& deps) : Collector("tcp", deps) {}

 private:
  absl::Status DoStart(const CollectorConfig& c) override { return Configure(c); }
  absl::Status Configure(const CollectorConfig& c) override {
    if (c.limits.max_series_per_collector == 7) {
      return absl::InvalidArgumentError("collector=tcp: map=tcp_config: update: Invalid argument");
    }
    g_configured_limit = c.limits.max_series_per_collector;
    return absl::OkStatus();
  }
  absl::Status Read(std::vector<prometheus::MetricFamily>*) override { return absl::OkStatus(); }
  void DoStop() override {}
  bool Running() const override { return true; }
};

// One whose data-map read fails while a test says so, like a map a reader cannot
// get through.
std::atomic<bool> g_read_fails{false};

class ReadFailingCollector : public Collector {
 public:
  explicit ReadFailingCollector(const CollectorDeps& deps) : Collector("drops", deps) {}

 private:
  absl::Status DoStart(const CollectorConfig&) override { return absl::OkStatus(); }
  absl::Status Configure(const CollectorConfig&) override { return absl::OkStatus(); }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override {
    FamilyBuilder b("kmon_test_read", "Exported when the read works.",
                    prometheus::MetricType::Gauge, {});
    b.AddGauge({}, 1);
    out->push_back(b.Build());  // appended before the failure: must not be served
    if (g_read_fails)
      return absl::InternalError("collector=drops map=counts: batch lookup: EFAULT");
    return absl::OkStatus();
  }
  void DoStop() override {}
  bool Running() const override { return true; }
};

const CollectorEntry* Row(const char* name) {
  for (const auto& e : CollectorTable()) {
    if (std::string(e.name) == name) return &e;
  }
  return nullptr;
}

double Up(App& app, const std::string& collector) {
  const auto fams = app.Gather();
  const auto* m = FindSample(fams, "kmon_collector_up", {{"collector", collector}});
  return m == nullptr ? -1 : m->gauge.value;
}

TEST(AppTest, ReloadRetriesACollectorWhoseStartFailedAndReportsItUp) {
  // Real rows' names and config sections, stand-in collectors.
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<AlwaysUpCollector>(d); },
       Row("tcp")->section},
      {"drops", true,
       [](const CollectorDeps& d) { return std::make_unique<BtfProbingCollector>(d); },
       Row("drops")->section},
  };
  bool has_btf = false;
  int probes = 0;
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  App app(flags, AppParts{&table, std::make_unique<SwitchableFeatures>(&has_btf, &probes)});
  ASSERT_EQ(app.Start(), 0);
  EXPECT_EQ(probes, 1);
  EXPECT_EQ(Up(app, "tcp"), 1);
  EXPECT_EQ(Up(app, "drops"), 0);
  EXPECT_FALSE(app.Ready());
  EXPECT_NE(app.LandingPage().find("load vmlinux BTF: No such file or directory"),
            std::string::npos);
  EXPECT_EQ(FindSample(app.Gather(), "kmon_test_probed", {}), nullptr);

  // Still missing: the reload tries again and it stays down.
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(probes, 2);
  EXPECT_EQ(Up(app, "drops"), 0);

  // The kernel has it now (a module loaded, a node upgraded): the next reload
  // starts the collector, which is reported up and collects.
  has_btf = true;
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(probes, 3);
  EXPECT_EQ(Up(app, "drops"), 1);
  EXPECT_TRUE(app.Ready());
  const auto fams = app.Gather();
  const auto* probed = FindSample(fams, "kmon_test_probed", {});
  ASSERT_NE(probed, nullptr);
  EXPECT_EQ(probed->gauge.value, 1);

  // A collector that is up is reconfigured, not started again.
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(probes, 3);
  EXPECT_EQ(Up(app, "drops"), 1);
}

double Gauge(App& app, const std::string& name) {
  const auto fams = app.Gather();
  const auto* m = FindSample(fams, name, {});
  return m == nullptr ? -1 : m->gauge.value;
}

// SPEC: a collector that refuses the new settings fails the whole reload, and the
// old config stays in force for every collector.
TEST(AppTest, AReloadACollectorRefusesFailsAndTheOldConfigStays) {
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<AlwaysUpCollector>(d); },
       Row("tcp")->section},
  };
  TempFile file("limits:\n  max_series_per_collector: 100\n");
  ASSERT_TRUE(file.ok());
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  flags.config_file = file.path();
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);
  EXPECT_EQ(g_configured_limit.load(), 100);
  EXPECT_EQ(Gauge(app, "kmon_config_last_reload_successful"), 1);

  ASSERT_TRUE(file.Rewrite("limits:\n  max_series_per_collector: 7\n"));
  const absl::Status refused = app.Reload("test");
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.message(),
            "INVALID_ARGUMENT: collector=tcp: map=tcp_config: update: Invalid argument");
  EXPECT_EQ(Gauge(app, "kmon_config_last_reload_successful"), 0);
  EXPECT_EQ(g_configured_limit.load(), 100);  // back on the config in force
  EXPECT_EQ(Up(app, "tcp"), 1);

  ASSERT_TRUE(file.Rewrite("limits:\n  max_series_per_collector: 300\n"));
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(g_configured_limit.load(), 300);
  EXPECT_EQ(Gauge(app, "kmon_config_last_reload_successful"), 1);
}

// A collector that counts its starts and keeps the map sizes it was started with;
// like a kernel refusing a map, it cannot start with a map of 1 entry.
std::atomic<int> g_sized_starts{0};
std::atomic<uint32_t> g_sized_stats{0};

class SizedCollector : public Collector {
 public:
  explicit SizedCollector(const CollectorDeps& deps) : Collector("tcp", deps) {}
  ~SizedCollector() override { Stop(); }

 private:
  absl::Status DoStart(const CollectorConfig& c) override {
    ++g_sized_starts;
    const auto& sizes = c.limits.MapEntriesOf("tcp");
    auto it = sizes.find("stats");
    const uint32_t stats = it == sizes.end() ? 0 : it->second;
    if (stats == 1) return absl::ResourceExhaustedError("collector=tcp map=stats: create: ENOMEM");
    g_sized_stats = stats;
    running_ = true;
    return absl::OkStatus();
  }
  absl::Status Configure(const CollectorConfig&) override { return absl::OkStatus(); }
  absl::Status Read(std::vector<prometheus::MetricFamily>*) override { return absl::OkStatus(); }
  void DoStop() override { running_ = false; }
  bool Running() const override { return running_; }
  bool running_ = false;
};

// A map's size is fixed when the kernel makes it: a reload that changes
// limits.bpf_map_entries of a collector makes its object again, one that changes
// anything else does not; a size the kernel refuses fails the reload, and the
// collector runs on at the sizes in force.
TEST(AppTest, AReloadThatResizesACollectorsMapsRestartsThatCollector) {
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<SizedCollector>(d); },
       Row("tcp")->section},
  };
  auto config = [](int stats, int series) {
    return absl::StrCat("limits:\n  max_series_per_collector: ", series,
                        "\n  bpf_map_entries:\n    tcp: {stats: ", stats, "}\n");
  };
  TempFile file(config(100, 500));
  ASSERT_TRUE(file.ok());
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  flags.config_file = file.path();
  App app(flags, AppParts{&table, nullptr});
  g_sized_starts = 0;
  ASSERT_EQ(app.Start(), 0);
  EXPECT_EQ(g_sized_starts.load(), 1);
  EXPECT_EQ(g_sized_stats.load(), 100u);

  ASSERT_TRUE(file.Rewrite(config(100, 600)));
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(g_sized_starts.load(), 1) << "same sizes: reconfigured in place";

  ASSERT_TRUE(file.Rewrite(config(200, 600)));
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(g_sized_starts.load(), 2);
  EXPECT_EQ(g_sized_stats.load(), 200u);
  EXPECT_EQ(Up(app, "tcp"), 1);

  ASSERT_TRUE(file.Rewrite(config(1, 600)));
  const absl::Status refused = app.Reload("test");
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("map=stats: create: ENOMEM"), std::string::npos) << refused;
  EXPECT_EQ(Gauge(app, "kmon_config_last_reload_successful"), 0);
  EXPECT_EQ(g_sized_starts.load(), 4) << "refused at 1, started again at 200";
  EXPECT_EQ(g_sized_stats.load(), 200u);
  EXPECT_EQ(Up(app, "tcp"), 1);
}

// A collector whose read fails is down, with the reason, for as long as it fails;
// the others keep serving.
TEST(AppTest, ACollectorWhoseReadFailsIsDownWhileTheOthersServe) {
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<AlwaysUpCollector>(d); },
       Row("tcp")->section},
      {"drops", true,
       [](const CollectorDeps& d) { return std::make_unique<ReadFailingCollector>(d); },
       Row("drops")->section},
  };
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);
  EXPECT_EQ(Up(app, "drops"), 1);

  g_read_fails = true;
  auto fams = app.Gather();
  EXPECT_EQ(FindSample(fams, "kmon_test_read", {}), nullptr);
  EXPECT_EQ(FindSample(fams, "kmon_collector_up", {{"collector", "drops"}})->gauge.value, 0);
  EXPECT_EQ(FindSample(fams, "kmon_collector_up", {{"collector", "tcp"}})->gauge.value, 1);
  EXPECT_EQ(FindSample(fams, "kmon_events_lost_total",
                       {{"collector", "drops"}, {"reason", "map_read_error"}})
                ->counter.value,
            1);
  EXPECT_NE(app.LandingPage().find("<td>drops</td><td>down</td><td>last collection failed: "
                                   "INTERNAL: collector=drops map=counts: batch lookup: EFAULT"),
            std::string::npos)
      << app.LandingPage();

  g_read_fails = false;
  fams = app.Gather();
  ASSERT_NE(FindSample(fams, "kmon_test_read", {}), nullptr);
  EXPECT_EQ(FindSample(fams, "kmon_collector_up", {{"collector", "drops"}})->gauge.value, 1);
  EXPECT_NE(app.LandingPage().find("<td>drops</td><td>up</td>"), std::string::npos);
}

// Collector isolation through the loader seam (KernelFeatures::LoadSkeleton): real
// collectors (syscalls, dns) whose BPF object the kernel will not load, as a memory
// cgroup at its limit refuses a map (ENOMEM) or a missing permission does (EPERM),
// are reported down with the reason on the landing page and in the log, and retried
// by each reload, while the others keep serving. (The kernel's own ENOMEM under a
// memory cgroup's limit is the root test MemcgRootTest.)
// The running kernel's probes, and a loader that refuses the objects a test names
// with the errno libbpf would return; it counts every load it is asked for.
class RefusingLoader : public KernelFeatures {
 public:
  RefusingLoader(std::map<std::string, int> refuse, std::map<std::string, int>* loads)
      : refuse_(std::move(refuse)), loads_(loads) {}
  absl::StatusOr<const btf*> VmlinuxBtf() override { return real_.VmlinuxBtf(); }
  void Release() override { real_.Release(); }
  int LoadSkeleton(bpf_object_skeleton* skeleton) override {
    const std::string object = skeleton->name;  // "syscalls_bpf"
    ++(*loads_)[object];
    auto it = refuse_.find(object);
    if (it != refuse_.end()) return it->second;
    return KernelFeatures::LoadSkeleton(skeleton);
  }

 private:
  RunningKernelFeatures real_;
  std::map<std::string, int> refuse_;
  std::map<std::string, int>* loads_;
};

// The log line a failed start writes, for one collector; empty when there is none.
std::string StartFailureLine(const std::string& log, const std::string& collector) {
  size_t pos = 0;
  while (pos < log.size()) {
    size_t nl = log.find('\n', pos);
    if (nl == std::string::npos) nl = log.size();
    const std::string line = log.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.find("msg=\"collector failed to start\"") != std::string::npos &&
        line.find("collector=" + collector + " ") != std::string::npos)
      return line;
  }
  return "";
}

TEST(AppTest, AnObjectWhoseMapsTheKernelRefusesIsDownWithTheReason) {
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<AlwaysUpCollector>(d); },
       Row("tcp")->section},
      {"drops", true,
       [](const CollectorDeps& d) { return std::make_unique<ReadFailingCollector>(d); },
       Row("drops")->section},
      *Row("syscalls"),
      *Row("dns"),
  };
  std::map<std::string, int> loads;
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  flags.collector_overrides["syscalls"] = true;  // off by default (SPEC)
  App app(flags, AppParts{&table, std::make_unique<RefusingLoader>(
                                      std::map<std::string, int>{{"syscalls_bpf", -ENOMEM},
                                                                 {"dns_bpf", -EPERM}},
                                      &loads)});
  ::testing::internal::CaptureStderr();
  const int started = app.Start();
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_EQ(started, 0) << log;
  // Each real collector got as far as its load (opened, layouts checked), once.
  EXPECT_EQ(loads, (std::map<std::string, int>{{"dns_bpf", 1}, {"syscalls_bpf", 1}}));

  EXPECT_EQ(Up(app, "tcp"), 1);
  EXPECT_EQ(Up(app, "syscalls"), 0);
  EXPECT_EQ(Up(app, "dns"), 0);
  EXPECT_FALSE(app.Ready());
  const std::string enomem =
      "collector=syscalls load: Cannot allocate memory (a BPF map could not be allocated: BPF "
      "memory is charged to kmon&apos;s memory cgroup; raise its memory limit)";
  const std::string page = app.LandingPage();
  EXPECT_NE(page.find("<td>syscalls</td><td>down</td><td>INTERNAL: " + enomem + "</td>"),
            std::string::npos)
      << page;
  EXPECT_NE(page.find("<td>dns</td><td>down</td><td>PERMISSION_DENIED: collector=dns load: "
                      "Operation not permitted</td>"),
            std::string::npos)
      << page;
  EXPECT_NE(page.find("<td>tcp</td><td>up</td>"), std::string::npos) << page;
  EXPECT_NE(page.find("<td>drops</td><td>up</td>"), std::string::npos) << page;
  const std::string syscalls_line = StartFailureLine(log, "syscalls");
  EXPECT_NE(syscalls_line.find("load: Cannot allocate memory (a BPF map could not be allocated"),
            std::string::npos)
      << log;
  EXPECT_NE(StartFailureLine(log, "dns").find("load: Operation not permitted"), std::string::npos)
      << log;

  // The others keep serving: the started collectors' families, nothing of the two.
  auto fams = app.Gather();
  EXPECT_NE(FindSample(fams, "kmon_test_read", {}), nullptr);
  for (const auto& f : fams) {
    EXPECT_NE(f.name.rfind("kmon_syscall", 0), 0u) << f.name;
    EXPECT_NE(f.name.rfind("kmon_dns", 0), 0u) << f.name;
  }

  // A reload tries both again (the limit may have been raised); still refused.
  ASSERT_TRUE(app.Reload("test").ok());
  EXPECT_EQ(loads, (std::map<std::string, int>{{"dns_bpf", 2}, {"syscalls_bpf", 2}}));
  EXPECT_EQ(Up(app, "syscalls"), 0);
  EXPECT_EQ(Up(app, "tcp"), 1);
  fams = app.Gather();
  EXPECT_NE(FindSample(fams, "kmon_test_read", {}), nullptr);
}

// The Kubernetes provider never takes kmon down: an unusable kubeconfig leaves it
// serving with the watch reported down; an API outage keeps the pods it knew.
double KubeGauge(App& app, const std::string& name, const std::string& scope) {
  auto fams = app.Gather();
  const auto* s = FindSample(fams, name, {{"scope", scope}});
  return s == nullptr ? -1 : s->gauge.value;
}

TEST(AppKubernetesTest, AnUnusableKubeconfigLeavesKmonServingWithTheWatchDown) {
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<AlwaysUpCollector>(d); },
       Row("tcp")->section},
  };
  TempFile file("kubernetes:\n  enabled: true\n  kubeconfig: /nonexistent/kubeconfig\n");
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  flags.config_file = file.path();
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);
  EXPECT_EQ(Up(app, "tcp"), 1);
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_watch_up", "node"), 0);
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_pods", "node"), 0);
}

TEST(AppKubernetesTest, AnApiOutageKeepsTheLastKnownPodsAndSaysSo) {
  KubeApiServer api;
  ASSERT_TRUE(api.ok());
  api.Upsert(KubeApiServer::MakePod("shop", "cart-1", "node-a", "10.244.0.5"));
  api.Upsert(KubeApiServer::MakePod("web", "front-1", "node-b", "10.244.1.5"));
  TempFile kubeconfig("apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: " + api.url() +
                      "\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n"
                      "  context: {cluster: c, user: u}\ncurrent-context: x\n");
  const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<AlwaysUpCollector>(d); },
       Row("tcp")->section},
  };
  TempFile file("kubernetes:\n  enabled: auto\n  node_name: node-a\n  kubeconfig: " +
                kubeconfig.path() + "\n");
  Flags flags;
  flags.listen_address = "127.0.0.1:0";
  flags.config_file = file.path();
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);
  ASSERT_TRUE(Eventually([&] {
    return KubeGauge(app, "kmon_kubernetes_watch_up", "node") == 1 &&
           KubeGauge(app, "kmon_kubernetes_watch_up", "cluster") == 1;
  }));
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_pods", "node"), 1);
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_pods", "cluster"), 2);
  EXPECT_GT(KubeGauge(app, "kmon_kubernetes_last_sync_timestamp_seconds", "node"), 1.7e9);

  api.FailRequests(503);
  api.DropWatches();
  EXPECT_TRUE(Eventually([&] {
    return KubeGauge(app, "kmon_kubernetes_watch_up", "node") == 0 &&
           KubeGauge(app, "kmon_kubernetes_watch_up", "cluster") == 0;
  }));
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_pods", "node"), 1);
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_pods", "cluster"), 2);

  api.FailRequests(0, 0);
  api.Upsert(KubeApiServer::MakePod("shop", "cart-2", "node-a", "10.244.0.6"));
  EXPECT_TRUE(Eventually([&] { return KubeGauge(app, "kmon_kubernetes_pods", "node") == 2; }));
  EXPECT_EQ(KubeGauge(app, "kmon_kubernetes_watch_up", "node"), 1);
}

}  // namespace
}  // namespace kmon
