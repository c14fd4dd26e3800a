// What the benchmarks share: the line format tests/bench/run collects, medians,
// nginx and wrk on loopback, and a scrape over HTTP.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace kmon::bench {

/// One figure for tests/bench/run, which collects every line of this shape from every
/// round and reports min/median/max per key: "BENCH <benchmark>.<figure> <value> <unit>".
inline void Report(const std::string& key, double value, const char* unit) {
  std::printf("BENCH %s %.6g %s\n", key.c_str(), value, unit);
  std::fflush(stdout);
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM, RssAnon, ...); 0 when absent.
inline long StatusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atol(line.c_str() + field.size() + 1);
  }
  return 0;
}

/// A command's stdout (popen).
inline std::string Run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  return out;
}

/// What wrk measured: requests/s and the 99th percentile of its latencies.
struct WrkResult {
  double rps = 0;
  double p99_ms = 0;
};

/// "1.23ms" -> 1.23, "850.00us" -> 0.85, "1.01s" -> 1010.
inline double WrkMs(const std::string& v) {
  const double x = std::atof(v.c_str());
  if (v.find("us") != std::string::npos) return x / 1000;
  if (v.find("ms") != std::string::npos) return x;
  if (v.find('s') != std::string::npos) return x * 1000;
  return x;
}

/// wrk with one thread and 16 connections, pinned to `cpu`, with its latency
/// distribution; `close_each` sends "Connection: close", so every request opens a
/// connection of its own. Zeros when wrk gave no summary.
inline WrkResult WrkLatency(int port, int seconds, bool close_each = false, int cpu = 0) {
  const std::string out =
      Run("taskset -c " + std::to_string(cpu) + " wrk -t1 -c16 --latency -d" +
          std::to_string(seconds) + "s " + (close_each ? "-H 'Connection: close' " : "") +
          "http://127.0.0.1:" + std::to_string(port) + "/ 2>&1");
  WrkResult r;
  const auto at = out.find("Requests/sec:");
  if (at == std::string::npos) {
    std::fprintf(stderr, "wrk: %s\n", out.c_str());
    return r;
  }
  r.rps = std::atof(out.c_str() + at + 13);
  const auto p99 = out.find(" 99%");
  if (p99 != std::string::npos) {
    char value[32] = {};
    if (std::sscanf(out.c_str() + p99 + 4, "%31s", value) == 1) r.p99_ms = WrkMs(value);
  }
  return r;
}

/// Requests/s from wrk's summary (WrkLatency's run), or 0.
inline double Wrk(int port, int seconds, int cpu = 0) {
  return WrkLatency(port, seconds, /*close_each=*/false, cpu).rps;
}

/// nginx on 127.0.0.1 answering "ok" to every request, one worker pinned to `cpu`,
/// its files in a temporary directory; stopped and removed on destruction.
class Nginx {
 public:
  explicit Nginx(int cpu = 1) {
    char dir_tmpl[] = "/tmp/kmon-nginx-XXXXXX";
    if (mkdtemp(dir_tmpl) == nullptr) return;
    dir_ = dir_tmpl;
    port_ = 18000 + getpid() % 1000;
    std::ofstream(dir_ + "/nginx.conf")
        << "daemon off;\nmaster_process off;\nworker_processes 1;\npid " << dir_
        << "/nginx.pid;\nerror_log " << dir_ << "/error.log;\nevents { worker_connections 1024; }\n"
        << "http { access_log off; client_body_temp_path " << dir_ << ";\n"
        << "  server { listen 127.0.0.1:" << port_ << "; keepalive_requests 1000000;\n"
        << "    location / { return 200 \"ok\\n\"; } } }\n";
    pid_ = fork();
    if (pid_ == 0) {
      // Dies with the benchmark, whatever ends it (a signal, a crash, exit()).
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      const std::string conf = dir_ + "/nginx.conf";
      execlp("taskset", "taskset", "-c", std::to_string(cpu).c_str(), "nginx", "-p", dir_.c_str(),
             "-c", conf.c_str(), nullptr);
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ok_ = Wrk(port_, 1) > 0;
    if (!ok_) {
      std::fprintf(stderr, "nginx did not answer on port %d (see %s/error.log)\n", port_,
                   dir_.c_str());
    }
  }
  ~Nginx() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (ok_ && !dir_.empty()) Run("rm -rf " + dir_);
  }
  Nginx(const Nginx&) = delete;
  Nginx& operator=(const Nginx&) = delete;
  bool ok() const { return ok_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  bool ok_ = false;
};

/// What a scrape got.
struct Reply {
  bool ok = false;        // 200, and Content-Encoding: gzip when it was asked for
  size_t body_bytes = 0;  // as sent (compressed when gzipped)
  size_t samples = 0;     // lines that are not comments (plain text only)
  double ms = 0;          // connect to last byte
};

/// GET `path` from 127.0.0.1:`port` with a fresh connection (Connection: close) and
/// `headers` ("Name: value"), read to the end like a scraper; the body is counted,
/// not kept.
inline Reply HttpGet(int port, const std::string& path, const std::vector<std::string>& headers) {
  Reply r;
  const auto t0 = std::chrono::steady_clock::now();
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return r;
  }
  bool gzip = false;
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
  for (const std::string& h : headers) {
    req += h + "\r\n";
    gzip = gzip || h.find("gzip") != std::string::npos;
  }
  req += "\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return r;
  }
  std::string head;
  bool in_body = false;
  char buf[65536];
  char last = '\n';
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    size_t from = 0;
    if (!in_body) {
      head.append(buf, n);
      const size_t end = head.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      in_body = true;
      from = static_cast<size_t>(n) - (head.size() - (end + 4));
      head.resize(end);
    }
    r.body_bytes += static_cast<size_t>(n) - from;
    if (gzip) continue;
    for (size_t i = from; i < static_cast<size_t>(n); ++i) {
      if (last == '\n' && buf[i] != '#') ++r.samples;
      last = buf[i];
    }
  }
  close(fd);
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const size_t length_at = head.find("Content-Length: ");
  const bool complete = length_at != std::string::npos &&
                        std::strtoull(head.c_str() + length_at + 16, nullptr, 10) == r.body_bytes;
  r.ok = head.rfind("HTTP/1.1 200", 0) == 0 && complete &&
         (!gzip || head.find("Content-Encoding: gzip") != std::string::npos);
  return r;
}

/// The real kmon_exporter as a child process on 127.0.0.1:`port` with `flags`
/// (stdout to /dev/null), waited for until /-/ready answers (up to 30 s); stopped with
/// SIGTERM and reaped by Stop() or on destruction.
class ExporterProcess {
 public:
  ExporterProcess(const std::string& binary, int port, const std::vector<std::string>& flags)
      : port_(port) {
    std::vector<std::string> args = {binary,
                                     "--web.listen-address=127.0.0.1:" + std::to_string(port)};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      const int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    for (int i = 0; i < 300 && pid_ > 0 && !ready_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ready_ = HttpGet(port, "/-/ready", {}).ok;
    }
    if (!ready_) {
      std::fprintf(stderr, "%s did not become ready on port %d\n", binary.c_str(), port);
    }
  }
  ~ExporterProcess() { Stop(); }
  ExporterProcess(const ExporterProcess&) = delete;
  ExporterProcess& operator=(const ExporterProcess&) = delete;
  bool ready() const { return ready_; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  /// The exit status (waitpid's), -1 when it was not running.
  int Stop() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  int port_;
  pid_t pid_ = -1;
  bool ready_ = false;
};

}  // namespace kmon::bench
