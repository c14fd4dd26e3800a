// The Grafana dashboard against a real Prometheus scraping a real kmon: every query of
// grafana/kmon-overview.json must run, and on a workload of known size in cgroups of
// the test's own, the TCP, topology, syscall and page-cache panels must show that workload.
//
// Exactness through rate(): Prometheus extrapolates rate()/increase() to the ends of
// the window, by up to ~1.1 scrape intervals at each end, so a window set by wall-clock
// time would only be right to within a few percent. Here the window is placed on the
// scrape timestamps themselves: it ends on a scrape taken after the workload and starts
// 1 ms before a scrape taken before it. Every sample in it is then on one of two
// plateaus (before / after) and Prometheus extrapolates over that 1 ms only, so
// rate() * window = N * W / (W - 1 ms): N to within 0.1 % for any window over 1 s.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/root/dns_server.h"
#include "tests/root/root_util.h"

namespace kmon {
namespace {

using nlohmann::json;
using testing::ExporterProcess;
using testing::RunInCgroup;
using testing::SpawnInCgroup;
using testing::TestCgroup;

// ---- the known workload

constexpr int kConnections = 5;  // phase 2: connections from the client
constexpr int kRequestsPerConnection = 10;
constexpr int kThinkMs = 15;         // server-side latency: 15 ms and a little
constexpr int kGetppid = 1000;       // phase 2: getppid calls
constexpr int kFailingOpenat = 100;  // phase 2: openat calls that fail with ENOENT
constexpr int kDnsAnswered = 20;     // phase 2: DNS queries answered NOERROR
constexpr int kDnsFailed = 5;        // phase 2: DNS queries answered SERVFAIL
constexpr int kExecs = 12;           // phase 2: children exec'ing /bin/true
// The test's latency_buckets put every request in (0.01, 0.5]: wide enough that a
// scheduling hiccup on a busy machine keeps a request in it (one in 50 went past 25 ms
// on a shared 2-CPU machine), so the quantiles are exact. Bucket precision itself is
// tcp_root_test's business.
constexpr double kBucketLow = 0.01, kBucketHigh = 0.5;

bool SendAll(int fd, const std::string& s) {
  return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

bool ReadLine(int fd) {
  char c;
  while (true) {
    if (recv(fd, &c, 1, 0) != 1) return false;
    if (c == '\n') return true;
  }
}

// A loopback server that answers "<ms>\n" with "ok\n" after sleeping ms, one
// connection at a time, until killed. Killed and reaped on destruction.
class Server {
 public:
  explicit Server(const TestCgroup& cg) {
    int p[2];
    if (pipe(p) != 0) return;
    pid_ = SpawnInCgroup(cg, [&] {
      close(p[0]);
      int lfd = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof a;
      if (bind(lfd, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(lfd, 64) != 0) _exit(5);
      getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
      uint16_t port = ntohs(a.sin_port);
      if (write(p[1], &port, sizeof port) != sizeof port) _exit(6);
      while (true) {
        int fd = accept(lfd, nullptr, nullptr);
        if (fd < 0) _exit(7);
        std::string line;
        char c;
        while (recv(fd, &c, 1, 0) == 1) {
          if (c != '\n') {
            line.push_back(c);
            continue;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(line.c_str())));
          line.clear();
          if (!SendAll(fd, "ok\n")) break;
        }
        close(fd);
      }
    });
    close(p[1]);
    if (read(p[0], &port_, sizeof port_) != sizeof port_) port_ = 0;
    close(p[0]);
  }
  ~Server() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  uint16_t port() const { return port_; }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

// `connections` keep-alive connections of `requests` requests each; exits non-zero on error.
void Requests(uint16_t port, int connections, int requests) {
  for (int c = 0; c < connections; ++c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(10);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 0; i < requests; ++i) {
      if (!SendAll(fd, std::to_string(kThinkMs) + "\n") || !ReadLine(fd)) _exit(11);
    }
    close(fd);
  }
}

// `n` DNS queries for <label>.kmon.test over one connected UDP socket to
// 127.0.0.1:port, each waiting for its answer (tests/root/dns_server.h answers
// "r2" with SERVFAIL); exits non-zero on error.
void DnsQueries(uint16_t port, int n, const std::string& label) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(20);
  timeval tv{.tv_sec = 3, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  for (int i = 1; i <= n; ++i) {
    std::string q{static_cast<char>(i >> 8), static_cast<char>(i), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    for (const std::string& l : {label, std::string("kmon"), std::string("test")}) {
      q += static_cast<char>(l.size()) + l;
    }
    q += std::string{0, 0, 1, 0, 1};  // the root, type A, class IN
    char r[512];
    if (send(fd, q.data(), q.size(), 0) != static_cast<ssize_t>(q.size())) _exit(21);
    if (recv(fd, r, sizeof r, 0) < 4 || r[0] != q[0] || r[1] != q[1]) _exit(22);
  }
  close(fd);
}

void Syscalls(int getppid, int failing_openat) {
  for (int i = 0; i < getppid; ++i) syscall(SYS_getppid);
  for (int i = 0; i < failing_openat; ++i) {
    syscall(SYS_openat, AT_FDCWD, "/nonexistent/kmon-dashboard-test", O_RDONLY);
  }
}

// Page cache: an 8 MiB file on the build directory's disk (tmpfs reads bypass the
// page-cache tracepoints), read whole with read(2); removed on destruction.
constexpr int64_t kCachePages = 2048;

class CachedFile {
 public:
  CachedFile()
      : path_(std::string(KMON_BINARY_DIR) + "/kmon-dash-pagecache-" + std::to_string(getpid())) {
    std::ofstream(path_) << std::string(kCachePages * 4096, 'k');
  }
  ~CachedFile() { unlink(path_.c_str()); }
  CachedFile(const CachedFile&) = delete;
  CachedFile& operator=(const CachedFile&) = delete;
  void Read() const {
    int fd = open(path_.c_str(), O_RDONLY);
    std::vector<char> buf(1 << 20);
    while (fd >= 0 && read(fd, buf.data(), buf.size()) > 0) {
    }
    close(fd);
  }
  /// Out of the page cache (the pages are clean once synced), for this file only.
  bool Drop() const {
    int fd = open(path_.c_str(), O_RDONLY);
    bool ok = fd >= 0 && fsync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    close(fd);
    return ok;
  }

 private:
  std::string path_;
};
// `n` children, one after the other, each spawned as /bin/true: n sched_process_exec.
void Execs(int n) {
  for (int i = 0; i < n; ++i) {
    char name[] = "true";
    char* argv[] = {name, nullptr};
    pid_t pid = 0;
    int status = 0;
    if (posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0 ||
        waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      _exit(12);
    }
  }
}

// ---- Prometheus

/// A directory under /tmp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/kmon-dash-XXXXXX";
    if (mkdtemp(tmpl) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::optional<std::string> FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string p = dir + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return std::nullopt;
}

std::string UrlEncode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string FormatTime(double unix_seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", unix_seconds);
  return buf;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// `prometheus` scraping one target every second, with its storage and config in `dir`.
/// SIGTERM (then SIGKILL) and reaped on destruction; `dir` is the caller's to remove.
class PrometheusProcess {
 public:
  PrometheusProcess(const std::string& binary, const std::string& dir, int target_port) {
    dir_ = dir;
    port_ = testing::FreePort();
    std::ofstream(dir + "/prometheus.yml") << "global:\n"
                                              "  scrape_interval: 1s\n"
                                              "  scrape_timeout: 1s\n"
                                              "  evaluation_interval: 1s\n"
                                              "scrape_configs:\n"
                                              "  - job_name: kmon\n"
                                              "    static_configs:\n"
                                              "      - targets: ['127.0.0.1:"
                                           << target_port << "']\n";
    std::vector<std::string> args = {binary,
                                     "--config.file=" + dir + "/prometheus.yml",
                                     "--storage.tsdb.path=" + dir + "/data",
                                     "--storage.tsdb.retention.time=1h",
                                     "--web.listen-address=127.0.0.1:" + std::to_string(port_),
                                     "--log.level=warn"};
    pid_ = fork();
    if (pid_ == 0) {
      int log = open((dir + "/prometheus.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (log >= 0) {
        dup2(log, 1);
        dup2(log, 2);
      }
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~PrometheusProcess() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 500; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  PrometheusProcess(const PrometheusProcess&) = delete;
  PrometheusProcess& operator=(const PrometheusProcess&) = delete;

  bool WaitReady(int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (testing::HttpGet(Url("/-/ready")).status == 200) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::string Log() const {
    std::ifstream in(dir_ + "/prometheus.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  /// GET /api/v1/<api>?<params>; the parsed body ({} when it is not JSON).
  json Api(const std::string& api, const std::vector<std::pair<std::string, std::string>>& params) {
    std::string url = Url("/api/v1/" + api) + "?";
    for (const auto& [k, v] : params) url += k + "=" + UrlEncode(v) + "&";
    auto r = testing::HttpGet(url);
    json j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    return j.is_discarded() ? json::object() : j;
  }
  json Query(const std::string& expr, std::optional<double> at = std::nullopt) {
    std::vector<std::pair<std::string, std::string>> params{{"query", expr}};
    if (at) params.emplace_back("time", FormatTime(*at));
    return Api("query", params);
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

/// The value of the one series of an instant vector, or nullopt.
std::optional<double> OnlyValue(const json& r) {
  if (r.value("status", "") != "success") return std::nullopt;
  const auto& v = r["data"]["result"];
  if (!v.is_array() || v.size() != 1) return std::nullopt;
  return std::stod(v[0]["value"][1].get<std::string>());
}

/// Values of an instant-vector result keyed by the value of `label` (or of all labels).
std::map<std::string, double> ByLabel(const json& r, const std::string& label) {
  std::map<std::string, double> out;
  if (r.value("status", "") != "success" || r["data"]["resultType"] != "vector") return out;
  for (const auto& s : r["data"]["result"]) {
    std::string key = s["metric"].value(label, "");
    out[key] = std::stod(s["value"][1].get<std::string>());
  }
  return out;
}

// ---- the dashboard

struct PanelQuery {
  std::string panel, ref, expr;
};

json LoadDashboard() {
  std::ifstream in(std::string(KMON_SOURCE_DIR) + "/grafana/kmon-overview.json");
  return json::parse(in, nullptr, /*allow_exceptions=*/false);
}

std::vector<PanelQuery> PanelQueries(const json& d) {
  std::vector<PanelQuery> out;
  std::function<void(const json&)> walk = [&](const json& panels) {
    for (const auto& p : panels) {
      if (p.contains("panels")) walk(p["panels"]);
      for (const auto& t : p.value("targets", json::array())) {
        out.push_back({p.value("title", ""), t.value("refId", ""), t.value("expr", "")});
      }
    }
  };
  walk(d["panels"]);
  return out;
}

/// Replaces Grafana variables ($x, ${x}, ${x:fmt}, [[x]]); "$1" (label_replace) stays.
/// An unknown variable is a test failure: the dashboard would send it to Prometheus as is.
std::string Substitute(const std::string& expr, const std::map<std::string, std::string>& vars,
                       const std::string& where) {
  static const std::regex var(R"(\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\])");
  std::string out;
  size_t last = 0;
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), var); it != std::sregex_iterator();
       ++it) {
    const auto& m = *it;
    std::string name = m[1].matched ? m[1].str() : m[2].matched ? m[2].str() : m[3].str();
    out += expr.substr(last, m.position() - last);
    last = m.position() + m.length();
    if (std::all_of(name.begin(), name.end(), ::isdigit)) {
      out += m.str();
    } else if (auto v = vars.find(name); v != vars.end()) {
      out += v->second;
    } else {
      ADD_FAILURE() << where << ": unknown variable $" << name << " in " << expr;
      out += m.str();
    }
  }
  return out + expr.substr(last);
}

const PanelQuery* FindQuery(const std::vector<PanelQuery>& qs, const std::string& panel,
                            const std::string& ref = "A") {
  for (const auto& q : qs) {
    if (q.panel == panel && q.ref == ref) return &q;
  }
  ADD_FAILURE() << "the dashboard has no panel " << panel << " with query " << ref;
  return nullptr;
}

TEST(DashboardRootTest, EveryQueryRunsAndPanelsShowTheKnownWorkload) {
  KMON_REQUIRE_ROOT();
  auto prom_bin = FindInPath("prometheus");
  ASSERT_TRUE(prom_bin.has_value())
      << "prometheus not found in PATH: install the Debian package prometheus "
         "(scripts/deps.sh does)";
  json dashboard = LoadDashboard();
  ASSERT_FALSE(dashboard.is_discarded()) << "grafana/kmon-overview.json is not JSON";
  const std::vector<PanelQuery> queries = PanelQueries(dashboard);
  ASSERT_GE(queries.size(), 30u);

  // The DNS server on a port of the test's own (its answers take 30 ms).
  TestCgroup dns_server_cg, dns_cg;
  const uint16_t dns_port = static_cast<uint16_t>(testing::FreePort());
  testing::DnsServer dns_server(dns_server_cg, dns_port);
  ASSERT_TRUE(dns_server.ok()) << "the DNS server could not bind " << dns_port;

  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::ofstream(dir.path() + "/kmon.yaml")
      << "interval: 1s\n"
         "collectors:\n"
         "  tcp:\n"
         "    latency_buckets: [0.005, 0.01, 0.5, 1]\n"
         "  syscalls:\n"
         "    enabled: true\n"
         "    syscalls: [getppid, openat, read, write, close, futex, accept4, connect]\n"
         "  dns:\n"
         "    latency_buckets: [0.01, 0.5, 1]\n"
         "    ports: ["
      << dns_port
      << "]\n"
         "  events:\n"
         "    enabled: true\n"
         "    tracepoints: [\"sched:sched_process_exec\"]\n";
  ExporterProcess exporter({"--config.file=" + dir.path() + "/kmon.yaml"});
  ASSERT_TRUE(exporter.WaitReady()) << "kmon_exporter did not get ready; landing page:\n"
                                    << testing::HttpGet(exporter.Url("/")).body;
  PrometheusProcess prom(*prom_bin, dir.path(), exporter.port());
  ASSERT_TRUE(prom.WaitReady(30000)) << "prometheus did not start:\n" << prom.Log();

  TestCgroup server_cg, client_cg, sys_cg, cold_cg, hot_cg, exec_cg;
  const CachedFile cached;
  Server server(server_cg);
  ASSERT_NE(server.port(), 0);
  const std::string port = std::to_string(server.port());

  // The series the truth is read from. Each must exist before the window starts, or
  // Prometheus would see it appear inside the window and count nothing for its first value.
  const std::map<std::string, std::string> probes{
      {"requests", "kmon_tcp_request_duration_seconds_count{container=\"" + server_cg.name() +
                       "\",port=\"" + port + "\"}"},
      {"accepted", "kmon_tcp_connections_opened_total{container=\"" + server_cg.name() +
                       "\",direction=\"inbound\"}"},
      {"edge", "kmon_topology_requests_total{client=\"" + client_cg.name() + "\",server=\"" +
                   server_cg.name() + "\"}"},
      {"getppid", "kmon_syscalls_total{container=\"" + sys_cg.name() + "\",syscall=\"getppid\"}"},
      {"openat",
       "kmon_syscall_errors_total{container=\"" + sys_cg.name() + "\",syscall=\"openat\"}"},
      {"dns_ok", "kmon_dns_request_duration_seconds_count{container=\"" + dns_cg.name() +
                     "\",rcode=\"NOERROR\"}"},
      {"dns_fail", "kmon_dns_request_duration_seconds_count{container=\"" + dns_cg.name() +
                       "\",rcode=\"SERVFAIL\"}"},
      // The cold reader's misses are exact (every page of the file added once, none
      // of its code: cached); its accesses and the hot reader's also count the code
      // its child faults in, so they are checked with bounds below.
      {"cold_misses", "kmon_page_cache_misses_total{container=\"" + cold_cg.name() + "\"}"},
      {"execs", "kmon_kernel_events_total{container=\"" + exec_cg.name() +
                    "\",event=\"sched:sched_process_exec\"}"},
  };
  const std::map<std::string, double> phase2{{"requests", kConnections * kRequestsPerConnection},
                                             {"accepted", kConnections},
                                             {"edge", kConnections * kRequestsPerConnection},
                                             {"getppid", kGetppid},
                                             {"openat", kFailingOpenat},
                                             {"dns_ok", kDnsAnswered},
                                             {"dns_fail", kDnsFailed},
                                             {"cold_misses", kCachePages},
                                             {"execs", kExecs}};

  // Phase 1, warm-up: small workloads until Prometheus has scraped every probe series
  // (a new cgroup is watched within kmon's 1 s interval).
  bool all = false;
  for (int i = 0; i < 30 && !all; ++i) {
    ASSERT_EQ(RunInCgroup(client_cg, [&] { Requests(server.port(), 1, 2); }), 0);
    ASSERT_EQ(RunInCgroup(sys_cg, [] { Syscalls(3, 3); }), 0);
    ASSERT_EQ(RunInCgroup(dns_cg,
                          [&] {
                            DnsQueries(dns_port, 1, "r0");
                            DnsQueries(dns_port, 1, "r2");
                          }),
              0);
    ASSERT_EQ(RunInCgroup(cold_cg, [&] { cached.Read(); }), 0);  // hot still: no misses
    ASSERT_EQ(RunInCgroup(hot_cg, [&] { cached.Read(); }), 0);
    ASSERT_EQ(RunInCgroup(exec_cg, [] { Execs(1); }), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    all = true;
    for (const auto& [name, sel] : probes) all &= OnlyValue(prom.Query(sel)).has_value();
  }
  ASSERT_TRUE(all) << "Prometheus never saw the warm-up series; kmon said:\n" << exporter.Scrape();
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // >= 2 scrapes of the plateau

  // Phase 2, the workload whose numbers are checked.
  ASSERT_TRUE(cached.Drop());
  const double phase2_start = Now();
  ASSERT_EQ(RunInCgroup(client_cg,
                        [&] { Requests(server.port(), kConnections, kRequestsPerConnection); }),
            0);
  ASSERT_EQ(RunInCgroup(sys_cg, [] { Syscalls(kGetppid, kFailingOpenat); }), 0);
  ASSERT_EQ(RunInCgroup(dns_cg,
                        [&] {
                          DnsQueries(dns_port, kDnsAnswered, "r0");
                          DnsQueries(dns_port, kDnsFailed, "r2");
                        }),
            0);
  ASSERT_EQ(RunInCgroup(cold_cg, [&] { cached.Read(); }), 0);
  ASSERT_EQ(RunInCgroup(hot_cg, [&] { cached.Read(); }), 0);
  ASSERT_EQ(RunInCgroup(exec_cg, [] { Execs(kExecs); }), 0);

  // Window start: the last scrape that began at least 300 ms before phase 2 (its drain of
  // the kernel maps was over long before the first request).
  json ups = prom.Query("up{job=\"kmon\"}[30s]");
  ASSERT_EQ(ups.value("status", ""), "success") << ups.dump();
  ASSERT_EQ(ups["data"]["result"].size(), 1u) << ups.dump();
  double window_start_sample = 0;
  for (const auto& v : ups["data"]["result"][0]["values"]) {
    double ts = v[0].get<double>();
    if (ts <= phase2_start - 0.3) window_start_sample = std::max(window_start_sample, ts);
  }
  ASSERT_GT(window_start_sample, 0) << ups.dump();
  std::map<std::string, double> before;
  for (const auto& [name, sel] : probes) {
    auto v = OnlyValue(prom.Query(sel, window_start_sample));
    ASSERT_TRUE(v.has_value()) << sel << " at the window start";
    before[name] = *v;
  }

  // Window end: a scrape after Prometheus has seen all of phase 2.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (all = false; !all && std::chrono::steady_clock::now() < deadline;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    all = true;
    for (const auto& [name, sel] : probes) {
      auto v = OnlyValue(prom.Query(sel));
      all &= v.has_value() && *v >= before[name] + phase2.at(name);
    }
  }
  ASSERT_TRUE(all) << "Prometheus never saw all of phase 2; kmon said:\n" << exporter.Scrape();
  for (const auto& [name, sel] : probes) {
    // Exactly phase 2 and nothing else happened in these cgroups.
    EXPECT_EQ(OnlyValue(prom.Query(sel)).value_or(-1), before[name] + phase2.at(name)) << sel;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  ups = prom.Query("up{job=\"kmon\"}[5s]");
  ASSERT_EQ(ups["data"]["result"].size(), 1u) << ups.dump();
  const double window_end = ups["data"]["result"][0]["values"].back()[0].get<double>();
  const long long window_ms = std::llround((window_end - window_start_sample) * 1000) + 1;
  const double window_s = window_ms / 1000.0;
  ASSERT_GT(window_s, 2.0);

  // 1. Every query of every panel runs, for "All" of every variable.
  const std::map<std::string, std::string> all_vars{
      {"__rate_interval", "1m"}, {"__interval", "15s"}, {"__range", "5m"},   {"instance", ".*"},
      {"namespace", ".*"},       {"pod", ".*"},         {"container", ".*"}, {"device", ".*"}};
  std::map<std::string, json> results;  // "panel/ref" -> result
  for (const auto& q : queries) {
    const std::string where = "panel \"" + q.panel + "\" query " + q.ref;
    json r = prom.Query(Substitute(q.expr, all_vars, where), window_end);
    EXPECT_EQ(r.value("status", ""), "success") << where << ": " << r.dump() << "\n" << q.expr;
    EXPECT_FALSE(r.contains("error")) << where << ": " << r.dump();
    EXPECT_FALSE(r.contains("warnings")) << where << ": " << r.dump();
    results[q.panel + "/" + q.ref] = r;
  }
  // Panels that must show data now: our workload made TCP requests and syscalls, and
  // kmon always reports on itself.
  for (const std::string key : {"Request rate/A",
                                "Request latency p50 / p95 / p99/B",
                                "Mean request latency/A",
                                "Connections opened/A",
                                "Network bytes/A",
                                "Service map/edges",
                                "Service map/nodes",
                                "Edges/A",
                                "Edges/B",
                                "On-CPU/A",
                                "Context switches/A",
                                "Syscall rate by syscall/A",
                                "Syscall errors by syscall/A",
                                "Syscall error ratio/A",
                                "Syscall rate by workload (top 10)/A",
                                "Page cache hit ratio by pod/A",
                                "Page cache accesses and misses by workload/A",
                                "Page cache accesses and misses by workload/B",
                                "Event rates/A",
                                "Events attached/A",
                                "Collectors up/A",
                                "Config reload/A",
                                "Watched cgroups/A",
                                "Build/A",
                                "Scrape duration by collector/A",
                                "BPF run time per run/A",
                                "BPF CPU by collector/A",
                                "BPF map fill/A",
                                "DNS queries by rcode/A",
                                "DNS latency p95 by pod/A",
                                "DNS errors by pod/A"}) {
    ASSERT_TRUE(results.count(key)) << "no query " << key;
    EXPECT_FALSE(results[key]["data"]["result"].empty()) << key << " shows nothing";
  }
  for (const auto& [collector, up] : ByLabel(results["Collectors up/A"], "collector")) {
    EXPECT_EQ(up, 1) << "collector " << collector;
  }
  EXPECT_EQ(ByLabel(results["Collectors up/A"], "collector").size(), 9u);
  EXPECT_EQ(ByLabel(results["Events attached/A"], "event"),
            (std::map<std::string, double>{{"sched:sched_process_exec", 1}}));
  EXPECT_EQ(OnlyValue(results["Config reload/A"]), 1);
  for (const auto& [map, fill] : ByLabel(results["BPF map fill/A"], "map")) {
    EXPECT_GE(fill, 0) << map;
    EXPECT_LE(fill, 1) << map;
  }

  // 2. The variables' label_values() queries list our cgroups.
  for (const auto& v : dashboard["templating"]["list"]) {
    if (v.value("type", "") != "query") continue;
    std::string q = v["query"].is_object() ? v["query"].value("query", "") : v.value("query", "");
    static const std::regex label_values(R"(label_values\((.*),\s*(\w+)\))");
    std::smatch m;
    ASSERT_TRUE(std::regex_match(q, m, label_values)) << q;
    std::string selector = Substitute(m[1].str(), all_vars, "variable " + v.value("name", ""));
    json r = prom.Api("label/" + m[2].str() + "/values", {{"match[]", selector}});
    ASSERT_EQ(r.value("status", ""), "success") << q << ": " << r.dump();
    if (m[2].str() == "container") {
      std::set<std::string> values(r["data"].begin(), r["data"].end());
      for (const auto* cg : {&server_cg, &client_cg, &sys_cg, &cold_cg, &hot_cg}) {
        EXPECT_TRUE(values.count(cg->name())) << "the container variable lacks " << cg->name();
      }
    }
    if (m[2].str() == "instance") {
      EXPECT_EQ(r["data"], json::array({"127.0.0.1:" + std::to_string(exporter.port())}));
    }
  }

  // 3. The known workload, through the panels' own queries over the aligned window.
  auto vars_for = [&](const TestCgroup& cg) {
    auto vars = all_vars;
    vars["container"] = cg.name();  // [a-z0-9-]: the same as a regex
    vars["__rate_interval"] = std::to_string(window_ms) + "ms";
    return vars;
  };
  auto run = [&](const std::string& panel, const std::string& ref, const TestCgroup& cg) {
    const PanelQuery* q = FindQuery(queries, panel, ref);
    if (q == nullptr) return json::object();
    json r = prom.Query(Substitute(q->expr, vars_for(cg), panel), window_end);
    EXPECT_EQ(r.value("status", ""), "success") << panel << ": " << r.dump();
    return r;
  };
  // rate() * window = N * W / (W - 1 ms): N to within 0.1 %, see the top of the file.
  auto expect_count = [&](double rate, double n, const std::string& what) {
    EXPECT_GE(rate * window_s, n * (1 - 1e-9)) << what << " over " << window_s << " s";
    EXPECT_LE(rate * window_s, n * window_s / (window_s - 0.0011))
        << what << " over " << window_s << " s";
  };
  const double n_requests = kConnections * kRequestsPerConnection;

  auto rates = ByLabel(run("Request rate", "A", server_cg), "port");
  ASSERT_TRUE(rates.count(port)) << "Request rate: no series for port " << port;
  EXPECT_EQ(rates.size(), 1u);
  expect_count(rates[port], n_requests, "requests served");

  // Every request took 15 ms + a little: all in the (0.01, 0.5] bucket, so each quantile
  // is that bucket's linear interpolation, whatever the extrapolation factor.
  for (const auto& [ref, q] : std::map<std::string, double>{{"A", 0.5}, {"B", 0.95}, {"C", 0.99}}) {
    auto p = ByLabel(run("Request latency p50 / p95 / p99", ref, server_cg), "port");
    ASSERT_TRUE(p.count(port)) << "latency quantile " << q;
    EXPECT_NEAR(p[port], kBucketLow + (kBucketHigh - kBucketLow) * q, 1e-9) << "quantile " << q;
  }
  auto mean = ByLabel(run("Mean request latency", "A", server_cg), "port");
  // The think time plus at most 15 ms of scheduling and loopback on average.
  EXPECT_GE(mean[port], kThinkMs / 1000.0);
  EXPECT_LE(mean[port], 0.030);

  auto opened = ByLabel(run("Connections opened", "A", server_cg), "direction");
  expect_count(opened["inbound"], kConnections, "connections accepted");
  EXPECT_EQ(opened.count("outbound") ? opened["outbound"] : 0, 0) << "the server connects nowhere";

  // Topology: the node graph's edge frame and node frame, and the edges table.
  json edges = run("Service map", "edges", server_cg);
  const json* edge = nullptr;
  for (const auto& s : edges["data"]["result"]) {
    if (s["metric"].value("source", "") == client_cg.name() &&
        s["metric"].value("target", "") == server_cg.name()) {
      edge = &s;
    }
  }
  ASSERT_NE(edge, nullptr) << edges.dump();
  EXPECT_EQ((*edge)["metric"].value("id", ""), client_cg.name() + "->" + server_cg.name());
  expect_count(std::stod((*edge)["value"][1].get<std::string>()), n_requests, "edge requests");
  auto nodes = ByLabel(run("Service map", "nodes", server_cg), "id");
  ASSERT_TRUE(nodes.count(server_cg.name())) << "no node for the server";
  ASSERT_TRUE(nodes.count(client_cg.name())) << "no node for the client";
  expect_count(nodes[server_cg.name()], n_requests, "server node requests");
  EXPECT_EQ(nodes[client_cg.name()], 0) << "the client served nothing";
  auto edge_rows = ByLabel(run("Edges", "A", server_cg), "client");
  expect_count(edge_rows[client_cg.name()], n_requests, "edges table requests");

  // Syscalls: the getppid and failing openat calls of phase 2, nothing else counted.
  auto calls = ByLabel(run("Syscall rate by syscall", "A", sys_cg), "syscall");
  expect_count(calls["getppid"], kGetppid, "getppid calls");
  expect_count(calls["openat"], kFailingOpenat, "openat calls");
  auto errors = ByLabel(run("Syscall errors by syscall", "A", sys_cg), "syscall");
  expect_count(errors["openat"], kFailingOpenat, "openat errors");
  EXPECT_EQ(errors.count("getppid") ? errors["getppid"] : 0, 0) << "getppid never fails";
  auto ratio = ByLabel(run("Syscall error ratio", "A", sys_cg), "syscall");
  EXPECT_DOUBLE_EQ(ratio["openat"], 1.0) << "every openat failed";
  EXPECT_DOUBLE_EQ(ratio["getppid"], 0.0);
  auto top = run("Syscall rate by workload (top 10)", "A", sys_cg);
  ASSERT_EQ(top["data"]["result"].size(), 1u) << top.dump();
  EXPECT_EQ(top["data"]["result"][0]["metric"].value("container", ""), sys_cg.name());

  // DNS: the queries of phase 2 by rcode, every answer in (0.01, 0.5], none timed out.
  auto rcodes = ByLabel(run("DNS queries by rcode", "A", dns_cg), "rcode");
  EXPECT_EQ(rcodes.size(), 2u);
  expect_count(rcodes["NOERROR"], kDnsAnswered, "DNS answers NOERROR");
  expect_count(rcodes["SERVFAIL"], kDnsFailed, "DNS answers SERVFAIL");
  EXPECT_EQ(OnlyValue(run("DNS queries by rcode", "B", dns_cg)).value_or(-1), 0) << "timeouts";
  auto dns_p95 = ByLabel(run("DNS latency p95 by pod", "A", dns_cg), "container");
  ASSERT_TRUE(dns_p95.count(dns_cg.name())) << "DNS latency p95: no series";
  EXPECT_NEAR(dns_p95[dns_cg.name()], kBucketLow + (kBucketHigh - kBucketLow) * 0.95, 1e-9);
  auto dns_errors = ByLabel(run("DNS errors by pod", "A", dns_cg), "rcode");
  EXPECT_EQ(dns_errors.size(), 1u) << "NOERROR is no error";
  expect_count(dns_errors["SERVFAIL"], kDnsFailed, "DNS errors");
  EXPECT_EQ(OnlyValue(run("DNS errors by pod", "B", dns_cg)).value_or(-1), 0) << "timeouts";
  // Page cache: the cold reader missed every page of the file, the hot one none. Both
  // accessed the file's 2048 pages and, being forked children, the pages of code and
  // libraries they first ran (fault-around windows: about 300 pages, measured), which
  // were cached and hit. So the hot ratio is exactly 1 and the cold one is those hits
  // over all its accesses: under 0.25 while they stay under 680 pages.
  auto cold_rates = run("Page cache accesses and misses by workload", "B", cold_cg);
  expect_count(ByLabel(cold_rates, "container")[cold_cg.name()], kCachePages, "cold misses");
  auto hot_misses =
      ByLabel(run("Page cache accesses and misses by workload", "B", hot_cg), "container");
  EXPECT_EQ(hot_misses[hot_cg.name()], 0) << "the hot reader missed";
  auto hot_accesses =
      ByLabel(run("Page cache accesses and misses by workload", "A", hot_cg), "container");
  EXPECT_GE(hot_accesses[hot_cg.name()] * window_s, kCachePages * (1 - 1e-9));
  EXPECT_LE(hot_accesses[hot_cg.name()] * window_s, (kCachePages + 1024) * 1.001);
  auto hot_ratio = ByLabel(run("Page cache hit ratio by pod", "A", hot_cg), "container");
  ASSERT_TRUE(hot_ratio.count(hot_cg.name())) << "no hit ratio for the hot reader";
  EXPECT_EQ(hot_ratio[hot_cg.name()], 1);
  auto cold_ratio = ByLabel(run("Page cache hit ratio by pod", "A", cold_cg), "container");
  ASSERT_TRUE(cold_ratio.count(cold_cg.name())) << "no hit ratio for the cold reader";
  EXPECT_GE(cold_ratio[cold_cg.name()], 0);
  EXPECT_LT(cold_ratio[cold_cg.name()], 0.25);
  // Kernel events: the execs of phase 2 in their cgroup, nothing else configured.
  auto events = ByLabel(run("Event rates", "A", exec_cg), "event");
  EXPECT_EQ(events.size(), 1u);
  expect_count(events["sched:sched_process_exec"], kExecs, "execs");
}

}  // namespace
}  // namespace kmon
