// The exporter under concurrent load, over real sockets: scrapes while reloads start,
// stop and reconfigure collectors (by App::Reload, POST /-/reload and SIGHUP), pod churn
// through the Kubernetes test API server while the App loop follows it, and
// /debug/offcpu requests while the collector that serves it stops and starts. Every
// scrape must be a 200 that parses, and the counts (configures, starts, stops, pods,
// off-CPU nanoseconds) must come out exact. These are the tests scripts/sanitize.sh
// thread runs under TSan (a binary of their own, kmon_concurrency_tests).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectors/families.h"
#include "collectors/offcpu/offcpu_service.h"
#include "exporter/app.h"
#include "tests/http_test_client.h"
#include "tests/kube_api_server.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using namespace std::chrono_literals;

// ---- checking what a scrape returned ----

bool ParseLabels(const std::string& s, size_t* i) {
  // {name="value",...}; *i is at '{' and ends past '}'.
  ++*i;
  while (*i < s.size() && s[*i] != '}') {
    const size_t start = *i;
    while (*i < s.size() && (isalnum(static_cast<unsigned char>(s[*i])) || s[*i] == '_')) ++*i;
    if (*i == start || s.compare(*i, 2, "=\"") != 0) return false;
    *i += 2;
    while (*i < s.size() && s[*i] != '"') *i += s[*i] == '\\' ? 2 : 1;
    if (*i >= s.size()) return false;
    ++*i;
    if (*i < s.size() && s[*i] == ',') ++*i;
  }
  if (*i >= s.size()) return false;
  ++*i;
  return true;
}

bool ParseValue(const std::string& v) {
  if (v == "+Inf" || v == "-Inf" || v == "NaN") return true;
  char* end = nullptr;
  std::strtod(v.c_str(), &end);
  return !v.empty() && end == v.c_str() + v.size();
}

// Empty when every line of a Prometheus text exposition is a HELP/TYPE comment or a
// sample `name{labels} value [timestamp]`; else the first line that is neither.
std::string BadLine(const std::string& body) {
  if (body.empty() || body.back() != '\n') return "(body does not end in a newline)";
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t nl = body.find('\n', pos);
    const std::string line = body.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    size_t i = 0;
    while (i < line.size() &&
           (isalnum(static_cast<unsigned char>(line[i])) || line[i] == '_' || line[i] == ':'))
      ++i;
    if (i == 0 || isdigit(static_cast<unsigned char>(line[0]))) return line;
    if (i < line.size() && line[i] == '{' && !ParseLabels(line, &i)) return line;
    if (i >= line.size() || line[i] != ' ') return line;
    const std::string rest = line.substr(i + 1);
    const size_t sp = rest.find(' ');
    if (!ParseValue(rest.substr(0, sp))) return line;
    if (sp != std::string::npos && !ParseValue(rest.substr(sp + 1))) return line;
  }
  return "";
}

// The value of `name{collector="c"}` in a text exposition; -1 when absent.
double Sample(const std::string& body, const std::string& series) {
  const size_t at = body.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::strtod(body.c_str() + at + series.size() + 2, nullptr);
}

// What scraper threads saw; a failure is kept with its first example.
struct ScrapeLog {
  std::atomic<int> ok{0};
  std::mutex mu;
  std::vector<std::string> failures;
  void Fail(std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    if (failures.size() < 5) failures.push_back(std::move(what));
  }
};

// One scrape: 200 and parseable; `check` adds what the test knows about the content.
void ScrapeOnce(int port, ScrapeLog* log,
                const std::function<std::string(const std::string&)>& check = nullptr) {
  const Response r = Fetch(port, "/metrics");
  if (r.status != 200) return log->Fail("status " + std::to_string(r.status) + " " + r.curl_error);
  const std::string bad = BadLine(r.body);
  if (!bad.empty()) return log->Fail("unparseable line: " + bad);
  if (check) {
    const std::string wrong = check(r.body);
    if (!wrong.empty()) return log->Fail(wrong);
  }
  ++log->ok;
}

int PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

// Flags for an App serving on 127.0.0.1:port with this config file.
Flags LocalFlags(int port, const std::string& config_file) {
  Flags flags;
  flags.listen_address = "127.0.0.1:" + std::to_string(port);
  flags.config_file = config_file;
  return flags;
}

// ---- collectors that stand in for real ones ----

struct Counts {
  std::atomic<int> starts{0}, stops{0}, configures{0}, provider_changes{0};
};

// Exports the config generation it was last configured with (carried in
// limits.max_series_per_collector): one scrape must see one generation in every
// collector, since a reload applies a config to all of them under the App's lock.
class GenerationCollector : public Collector {
 public:
  GenerationCollector(const char* name, const CollectorDeps& deps, Counts* counts)
      : Collector(name, deps), counts_(counts) {}
  ~GenerationCollector() override { Stop(); }

 protected:
  absl::Status DoStart(const CollectorConfig& c) override {
    ++counts_->starts;
    running_ = true;
    return Configure(c);
  }
  absl::Status Configure(const CollectorConfig& c) override {
    ++counts_->configures;
    generation_ = c.limits.max_series_per_collector;
    return absl::OkStatus();
  }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override {
    FamilyBuilder b("kmon_test_generation", "Config generation applied.",
                    prometheus::MetricType::Gauge, {"collector"});
    b.AddGauge({name()}, static_cast<double>(generation_));
    out->push_back(b.Build());
    return absl::OkStatus();
  }
  void DoStop() override {
    if (running_.exchange(false)) ++counts_->stops;  // Stop() may come twice
  }
  bool Running() const override { return running_; }
  absl::Status OnProviderChange() override {
    ++counts_->provider_changes;
    return absl::OkStatus();
  }

 private:
  Counts* counts_;
  std::atomic<bool> running_{false};
  int64_t generation_ = 0;  // guarded by mu_
};

const CollectorEntry* Row(const char* name) {
  for (const auto& e : CollectorTable()) {
    if (std::string(e.name) == name) return &e;
  }
  return nullptr;
}

// A table row: the real row's name and config section, a GenerationCollector.
CollectorEntry GenerationRow(const char* name, Counts* counts) {
  return {name, true,
          [name, counts](const CollectorDeps& d) {
            return std::make_unique<GenerationCollector>(name, d, counts);
          },
          Row(name)->section};
}

std::string ConfigText(int64_t generation, bool second_enabled, const char* second) {
  return "limits:\n  max_series_per_collector: " + std::to_string(generation) +
         "\ncollectors:\n  " + second + ":\n    enabled: " + (second_enabled ? "true" : "false") +
         "\n";
}

// Every reload i (1..n): the tenth ones invalid (a negative limit) and rejected; the
// valid ones carry generation 1000+i, and the second collector is off in every fourth.
struct ReloadPlan {
  static bool Valid(int i) { return i % 10 != 0; }
  static bool SecondOn(int i) { return i % 4 != 3; }
  static std::string Text(int i, const char* second) {
    if (!Valid(i)) return "limits:\n  max_series_per_collector: -1\n";
    return ConfigText(1000 + i, SecondOn(i), second);
  }
};

TEST(ConcurrencyTest, ScrapesDuringReloadsAre200AndSeeOneConfig) {
  Counts tcp, drops;
  const std::vector<CollectorEntry> table = {
      GenerationRow("tcp", &tcp),
      GenerationRow("drops", &drops),
  };
  TempFile file(ConfigText(1000, true, "drops"));
  ASSERT_TRUE(file.ok());
  const int port = PickFreePort();
  ASSERT_GT(port, 0);
  Flags flags = LocalFlags(port, file.path());
  flags.enable_lifecycle = true;
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);

  std::atomic<bool> done{false};
  ScrapeLog log;
  // In one scrape both collectors show the same generation (drops may be off).
  auto one_config = [](const std::string& body) -> std::string {
    const double t = Sample(body, "kmon_test_generation{collector=\"tcp\"}");
    const double d = Sample(body, "kmon_test_generation{collector=\"drops\"}");
    if (t < 1000) return "no tcp generation";
    if (d >= 0 && d != t) return "tcp at " + std::to_string(t) + ", drops at " + std::to_string(d);
    return "";
  };
  std::vector<std::thread> scrapers;
  for (int t = 0; t < 4; ++t) {
    scrapers.emplace_back([&] {
      while (!done) ScrapeOnce(port, &log, one_config);
    });
  }
  // Reloads, alternately in-process and over HTTP; the test knows each outcome.
  constexpr int kReloads = 60;
  int valid = 0, expected_drops_starts = 1, expected_drops_stops = 0, expected_drops_configures = 1;
  bool drops_on = true;
  for (int i = 1; i <= kReloads; ++i) {
    ASSERT_TRUE(file.Rewrite(ReloadPlan::Text(i, "drops")));
    if (i % 2 == 0) {
      EXPECT_EQ(app.Reload("test").ok(), ReloadPlan::Valid(i)) << "reload " << i;
    } else {
      Request post;
      post.method = "POST";
      EXPECT_EQ(Fetch(port, "/-/reload", post).status, ReloadPlan::Valid(i) ? 200 : 500)
          << "reload " << i;
    }
    if (!ReloadPlan::Valid(i)) continue;
    ++valid;
    const bool on = ReloadPlan::SecondOn(i);
    if (on && !drops_on) ++expected_drops_starts, ++expected_drops_configures;
    if (on && drops_on) ++expected_drops_configures;
    if (!on && drops_on) ++expected_drops_stops;
    drops_on = on;
    std::this_thread::sleep_for(10ms);
  }
  done = true;
  for (auto& t : scrapers) t.join();

  EXPECT_TRUE(log.failures.empty()) << log.failures.front();
  EXPECT_GE(log.ok.load(), 20);
  EXPECT_EQ(valid, 54);
  EXPECT_EQ(tcp.starts, 1);
  EXPECT_EQ(tcp.configures, 1 + valid);
  EXPECT_EQ(drops.starts, expected_drops_starts);
  EXPECT_EQ(drops.stops, expected_drops_stops);
  EXPECT_EQ(drops.configures, expected_drops_configures);
  // The last reload (60) was invalid: rejected, the 59th config stays in force.
  const Response last = Fetch(port, "/metrics");
  EXPECT_EQ(Sample(last.body, "kmon_config_last_reload_successful"), 0);
  EXPECT_EQ(Sample(last.body, "kmon_test_generation{collector=\"tcp\"}"), 1059);
}

// ---- pod churn: the App loop (Run) follows the API while scrapes and SIGHUPs come ----

// Blocks the signals App::Run waits for in every thread made from now on, and
// restores the mask when it goes (declared first, so it goes last).
class BlockedRunSignals {
 public:
  BlockedRunSignals() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&set, s);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~BlockedRunSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

std::string Kubeconfig(const std::string& server) {
  return "apiVersion: v1\nclusters:\n- name: c\n  cluster:\n    server: " + server +
         "\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n"
         "  context: {cluster: c, user: u}\ncurrent-context: x\n";
}

TEST(ConcurrencyTest, PodChurnWhileScrapingAndReloadingBySighup) {
  BlockedRunSignals blocked;
  KubeApiServer api;
  ASSERT_TRUE(api.ok());
  TempFile kubeconfig(Kubeconfig(api.url()));
  Counts tcp;
  const std::vector<CollectorEntry> table = {
      GenerationRow("tcp", &tcp),
  };
  const std::string kube =
      "kubernetes:\n  enabled: auto\n  node_name: node-a\n  kubeconfig: " + kubeconfig.path() +
      "\n";
  TempFile file(kube + "limits:\n  max_series_per_collector: 1000\n");
  const int port = PickFreePort();
  ASSERT_GT(port, 0);
  Flags flags = LocalFlags(port, file.path());
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);
  std::atomic<int> run_rc{-1};
  std::thread run([&] { run_rc = app.Run(); });
  const pthread_t run_thread = run.native_handle();

  std::atomic<bool> done{false};
  ScrapeLog log;
  std::vector<std::thread> scrapers;
  for (int t = 0; t < 3; ++t) {
    scrapers.emplace_back([&] {
      while (!done) {
        ScrapeOnce(port, &log, [](const std::string& body) -> std::string {
          return Sample(body, "kmon_kubernetes_pods{scope=\"node\"}") < 0 ? "no node pod count"
                                                                          : "";
        });
      }
    });
  }
  // 120 pods come, each on this node or another, and all but the last 6 go again.
  std::thread churn([&] {
    for (int i = 0; i < 120; ++i) {
      api.Upsert(KubeApiServer::MakePod(
          "shop", "p-" + std::to_string(i), i % 3 == 0 ? "node-b" : "node-a",
          "10.244." + std::to_string(i / 200) + "." + std::to_string(i % 200 + 1)));
      if (i >= 6) api.Delete("shop", "p-" + std::to_string(i - 6));
      std::this_thread::sleep_for(5ms);
    }
  });
  // SIGHUP reloads while that goes on; each is waited for (pending signals merge).
  int hups = 0;
  for (; hups < 10; ++hups) {
    const int before = tcp.configures;
    pthread_kill(run_thread, SIGHUP);
    ASSERT_TRUE(Eventually([&] { return tcp.configures == before + 1; })) << "SIGHUP " << hups;
    std::this_thread::sleep_for(50ms);
  }
  churn.join();
  // Left: p-114..p-119; of those p-114 and p-117 are on node-b.
  EXPECT_TRUE(Eventually([&] {
    const std::string body = Fetch(port, "/metrics").body;
    return Sample(body, "kmon_kubernetes_pods{scope=\"node\"}") == 4 &&
           Sample(body, "kmon_kubernetes_pods{scope=\"cluster\"}") == 6;
  }));
  // The App loop brought the collectors up to date with the pods (it checks every
  // 250 ms, between signals).
  EXPECT_TRUE(Eventually([&] { return tcp.provider_changes >= 1; }));
  done = true;
  for (auto& t : scrapers) t.join();
  pthread_kill(run_thread, SIGTERM);
  run.join();

  EXPECT_EQ(run_rc, 0);
  EXPECT_TRUE(log.failures.empty()) << log.failures.front();
  EXPECT_GE(log.ok.load(), 10);
  EXPECT_EQ(tcp.starts, 1);
  EXPECT_EQ(tcp.configures, 1 + hups);
  EXPECT_EQ(tcp.stops, 1);  // by Run at SIGTERM
}

// ---- /debug/offcpu during scrapes, while its collector stops and starts ----

// A fake kernel: one off-CPU aggregate that a "scheduler" thread adds to, shared by
// every start of the collector (the test's totals are cumulative across them).
struct FakeOffCpuKernel {
  std::mutex mu;
  uint64_t ns = 0, count = 0;
  static offcpu_stack_key Key() {
    offcpu_stack_key k{};
    k.cgroup_id = 1;  // the root cgroup: container "/"
    k.tgid = 100;
    k.start_ns = 1;
    k.kstack = 1;
    k.ustack = KMON_CPU_NO_STACK;
    return k;
  }
};

class FakeOffCpuSource : public OffCpuStackSource {
 public:
  explicit FakeOffCpuSource(FakeOffCpuKernel* k) : k_(k) {}
  absl::Status Read(std::vector<OffCpuRawEntry>* out) override {
    std::lock_guard<std::mutex> lock(k_->mu);
    out->clear();
    if (k_->count > 0) out->push_back({FakeOffCpuKernel::Key(), {k_->ns, k_->count}});
    return absl::OkStatus();
  }
  std::vector<uint64_t> Stack(int32_t id) override {
    if (id == 1) return {0x14, 0x15, 0x16, 0x17};
    return {};
  }
  std::optional<OffCpuTotals> Take(const offcpu_stack_key&) override { return std::nullopt; }
  std::vector<int32_t> StackIds() override { return {1}; }
  std::vector<int32_t> StackIdsHeldByThreads() override { return {}; }
  void DeleteStack(int32_t) override {}
  size_t StackCapacity() const override { return 64; }
  uint64_t StackCollisions() override { return 0; }

 private:
  FakeOffCpuKernel* k_;
};

class FakeKernelFrames : public FrameResolver {
 public:
  void Capture(const ProcessId&) override {}
  bool Alive(const ProcessId&) override { return true; }
  void Forget(const ProcessId&) override {}
  std::string Kernel(uint64_t ip) override {
    static const std::map<uint64_t, std::string> names = {{0x14, "__schedule"},
                                                          {0x15, "schedule"},
                                                          {0x16, "do_nanosleep"},
                                                          {0x17, "entry_SYSCALL_64"}};
    auto it = names.find(ip);
    return it == names.end() ? kUnknownFrame : it->second;
  }
  std::string User(const ProcessId&, uint64_t, bool) override { return kUnknownFrame; }
};

// The cpu collector's part in this: an OffCpuService over the fake kernel, serving
// /debug/offcpu through the App's route for as long as it runs.
class OffCpuCollector : public GenerationCollector {
 public:
  OffCpuCollector(const CollectorDeps& deps, Counts* counts, FakeOffCpuKernel* kernel)
      : GenerationCollector("cpu", deps, counts), kernel_(kernel) {}
  ~OffCpuCollector() override { Stop(); }

 private:
  absl::Status DoStart(const CollectorConfig& c) override {
    service_ =
        std::make_unique<OffCpuService>(std::make_unique<FakeOffCpuSource>(kernel_),
                                        std::make_unique<FakeKernelFrames>(), deps().workloads);
    // The look-back mode: every request answers at once from what the kernel holds
    // (on_demand, the default, would make each wait out its window).
    service_->SetStacks(OffCpuStacks::kAlways);
    service_->Start();
    deps().handle_http("/debug/offcpu", service_->Handler());
    return GenerationCollector::DoStart(c);
  }
  void DoStop() override {
    if (service_) service_->Stop();
    GenerationCollector::DoStop();
  }
  FakeOffCpuKernel* kernel_;
  std::unique_ptr<OffCpuService> service_;
};

TEST(ConcurrencyTest, OffCpuRequestsDuringScrapesWhileTheCollectorStopsAndStarts) {
  FakeOffCpuKernel kernel;
  Counts tcp, cpu;
  const std::vector<CollectorEntry> table = {
      GenerationRow("tcp", &tcp),
      {"cpu", true,
       [&](const CollectorDeps& d) { return std::make_unique<OffCpuCollector>(d, &cpu, &kernel); },
       Row("cpu")->section},
  };
  TempFile file(ConfigText(1000, true, "cpu"));
  const int port = PickFreePort();
  ASSERT_GT(port, 0);
  Flags flags = LocalFlags(port, file.path());
  App app(flags, AppParts{&table, nullptr});
  ASSERT_EQ(app.Start(), 0);

  std::atomic<bool> sleeping{true}, done{false};
  // 1 µs off CPU per episode, an episode every 200 µs.
  std::thread scheduler([&] {
    while (sleeping) {
      {
        std::lock_guard<std::mutex> lock(kernel.mu);
        kernel.ns += 1000;
        ++kernel.count;
      }
      std::this_thread::sleep_for(200us);
    }
  });
  ScrapeLog scrapes;
  std::mutex mu;
  std::map<long, int> offcpu_status;  // status -> answers
  std::vector<std::string> offcpu_wrong;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      while (!done) ScrapeOnce(port, &scrapes);
    });
  }
  const char* queries[] = {"/debug/offcpu", "/debug/offcpu?format=svg",
                           "/debug/offcpu?format=pprof", "/debug/offcpu?seconds=5"};
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int n = t; !done; ++n) {
        const Response r = Fetch(port, queries[n % 4]);
        const bool folded = n % 4 == 0 || n % 4 == 3;  // the plain and the seconds= queries
        std::string wrong;
        if (r.status == 200 && folded && !r.body.empty() &&
            r.body.rfind("/;entry_SYSCALL_64;do_nanosleep;schedule;__schedule ", 0) != 0)
          wrong = "folded: " + r.body;
        if (r.status == 404 && r.body != "collector cpu is not running\n") wrong = "404: " + r.body;
        if (r.status == 503 && r.body != "the cpu collector is not running\n")
          wrong = "503: " + r.body;
        std::lock_guard<std::mutex> lock(mu);
        ++offcpu_status[r.status];
        if (!wrong.empty() && offcpu_wrong.size() < 5) offcpu_wrong.push_back(wrong);
      }
    });
  }
  // The cpu collector goes off and on again, 16 times.
  for (int i = 1; i <= 32; ++i) {
    ASSERT_TRUE(file.Rewrite(ConfigText(1000 + i, i % 2 == 0, "cpu")));
    ASSERT_TRUE(app.Reload("test").ok()) << i;
    std::this_thread::sleep_for(60ms);
  }
  sleeping = false;
  scheduler.join();
  // Back on (reload 32): the profiler reads the whole (cumulative) total.
  const uint64_t total = kernel.ns;
  const std::string want =
      "/;entry_SYSCALL_64;do_nanosleep;schedule;__schedule " + std::to_string(total) + "\n";
  EXPECT_TRUE(Eventually([&] { return Fetch(port, "/debug/offcpu").body == want; })) << want;
  done = true;
  for (auto& t : threads) t.join();

  EXPECT_TRUE(scrapes.failures.empty()) << scrapes.failures.front();
  EXPECT_TRUE(offcpu_wrong.empty()) << offcpu_wrong.front();
  EXPECT_GT(offcpu_status[200], 0);
  for (const auto& [status, n] : offcpu_status) {
    EXPECT_TRUE(status == 200 || status == 404 || status == 503) << status << " x" << n;
  }
  EXPECT_EQ(cpu.starts, 17);
  EXPECT_EQ(cpu.stops, 16);
  EXPECT_EQ(tcp.configures, 33);
}

}  // namespace
}  // namespace kmon
