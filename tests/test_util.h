// Helpers shared by the unit and root tests: temporary files, running a command
// on some input (promtool), finding a sample among collected families.
#pragma once

#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "provider/workload.h"

namespace kmon {

/// Cgroup paths of a fixed node: the root, a systemd unit (id 100) and a containerd
/// container of a burstable pod (id 200).
class FixedCgroupPaths : public CgroupPathSource {
 public:
  std::unordered_map<uint64_t, std::string> Scan() override {
    return {
        {1, "/"},
        {100, "/system.slice/nginx.service"},
        {200,
         "/kubepods.slice/kubepods-burstable.slice/"
         "kubepods-burstable-pod0c4b8f6e_1d2a_4c3b_9e8f_123456789abc.slice/"
         "cri-containerd-4f2a9c1b7d3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8.scope"}};
  }
};

/// Polls `pred` every `poll` until it holds or `timeout` passes; its last answer.
inline bool Eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(10000),
                       std::chrono::milliseconds poll = std::chrono::milliseconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(poll);
  }
  return pred();
}

/// A file for one test, removed when it goes out of scope: also when an ASSERT
/// returns from the test early.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/kmon-test-XXXXXX";
    const int fd = mkstemp(tmpl);
    if (fd < 0) return;
    path_ = tmpl;
    ok_ = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    close(fd);
  }
  ~TempFile() {
    if (!path_.empty()) unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  bool ok() const { return ok_; }
  const std::string& path() const { return path_; }
  /// Replaces the file's text.
  bool Rewrite(const std::string& text) {
    std::ofstream out(path_, std::ios::trunc);
    out << text;
    return static_cast<bool>(out);
  }

 private:
  std::string path_;
  bool ok_ = false;
};

struct CommandResult {
  int exit_status = -1;  // -1: could not run, or killed by a signal
  std::string output;    // stdout and stderr
};

/// Runs `command` through the shell with `input` on stdin.
inline CommandResult RunWithInput(const std::string& command, const std::string& input) {
  CommandResult r;
  TempFile in(input);
  if (!in.ok()) return r;
  FILE* p = popen((command + " < " + in.path() + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

/// A whole file's text; "" when it cannot be read.
inline std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// The data of a gzip member (a test failure when it is not one).
inline std::string Gunzip(const std::string& gz) {
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, 15 + 16), Z_OK);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  zs.avail_in = static_cast<uInt>(gz.size());
  std::string out;
  char buf[16384];
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
  } while (rc == Z_OK);
  inflateEnd(&zs);
  EXPECT_EQ(rc, Z_STREAM_END);
  return out;
}

/// Expects `text` to be tests/golden/`name` exactly and `promtool check metrics` to
/// pass it without a word (names, types, units, help). KMON_UPDATE_GOLDEN=1
/// rewrites the file instead: review the diff before committing it.
inline void ExpectGoldenMetrics(const std::string& text, const std::string& name) {
  const std::string path = std::string(KMON_SOURCE_DIR) + "/tests/golden/" + name;
  if (const char* u = std::getenv("KMON_UPDATE_GOLDEN"); u && std::string(u) == "1") {
    std::ofstream(path) << text;
  }
  EXPECT_EQ(text, ReadTextFile(path));
  const CommandResult promtool = RunWithInput("promtool check metrics", text);
  EXPECT_EQ(promtool.exit_status, 0) << promtool.output;
  EXPECT_EQ(promtool.output, "") << promtool.output;
}

/// The first sample of family `name` carrying every label in `labels`, or null.
inline const prometheus::ClientMetric* FindSample(
    const std::vector<prometheus::MetricFamily>& fams, const std::string& name,
    const std::map<std::string, std::string>& labels) {
  for (const auto& f : fams) {
    if (f.name != name) continue;
    for (const auto& m : f.metric) {
      bool all = true;
      for (const auto& [k, v] : labels) {
        bool found = false;
        for (const auto& l : m.label) found |= l.name == k && l.value == v;
        all &= found;
      }
      if (all) return &m;
    }
  }
  return nullptr;
}

}  // namespace kmon
