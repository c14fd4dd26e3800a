#include "tests/root/root_util.h"

#include <absl/strings/str_split.h>
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "provider/workload.h"

namespace kmon::testing {

bool InCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

namespace {
std::atomic<int> g_cgroup_seq{0};

bool WriteString(const std::string& path, const std::string& s) {
  int fd = open(path.c_str(), O_WRONLY);
  if (fd < 0) return false;
  bool ok = write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size());
  close(fd);
  return ok;
}
}  // namespace

TestCgroup::TestCgroup() {
  root_ = DetectCgroup2Root().value_or("/sys/fs/cgroup");
  name_ = "kmon-test-" + std::to_string(getpid()) + "-" + std::to_string(g_cgroup_seq++);
  path_ = root_ + "/" + name_;
  if (mkdir(path_.c_str(), 0755) != 0) {
    ADD_FAILURE() << "mkdir " << path_ << ": " << std::strerror(errno);
    return;
  }
  struct stat sb {};
  if (stat(path_.c_str(), &sb) == 0) id_ = sb.st_ino;
}

TestCgroup::TestCgroup(const std::string& relative) {
  root_ = DetectCgroup2Root().value_or("/sys/fs/cgroup");
  name_ = relative;
  path_ = root_;
  std::vector<std::string> parts = absl::StrSplit(relative, '/', absl::SkipEmpty());
  for (size_t i = 0; i < parts.size(); ++i) {
    path_ += "/" + parts[i];
    if (i + 1 < parts.size()) made_parents_.push_back(path_);
    if (mkdir(path_.c_str(), 0755) != 0 && (errno != EEXIST || i + 1 == parts.size())) {
      ADD_FAILURE() << "mkdir " << path_ << ": " << std::strerror(errno);
      return;
    }
  }
  struct stat sb {};
  if (stat(path_.c_str(), &sb) == 0) id_ = sb.st_ino;
}

TestCgroup::~TestCgroup() {
  // Move stragglers out so rmdir succeeds even after a failed test.
  std::ifstream procs(path_ + "/cgroup.procs");
  std::string pid;
  while (std::getline(procs, pid)) {
    kill(std::stoi(pid), SIGKILL);
    WriteString(root_ + "/cgroup.procs", pid);
  }
  for (int i = 0; i < 50 && rmdir(path_.c_str()) != 0 && errno == EBUSY; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Parents that a sibling still uses stay (EBUSY); the last one out removes them
  // (rmdir of a cgroup only ever removes an empty one).
  for (auto it = made_parents_.rbegin(); it != made_parents_.rend(); ++it) rmdir(it->c_str());
}

int RunInCgroup(const TestCgroup& cg, const std::function<void()>& body) {
  int go[2];
  if (pipe(go) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    body();
    _exit(0);
  }
  close(go[0]);
  bool moved = WriteString(cg.path() + "/cgroup.procs", std::to_string(pid));
  if (!moved) ADD_FAILURE() << "could not move pid " << pid << " into " << cg.path();
  if (write(go[1], "g", 1) != 1) ADD_FAILURE() << "could not start child";
  close(go[1]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!moved) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

pid_t SpawnInCgroup(const TestCgroup& cg, const std::function<void()>& body,
                    const std::string& netns) {
  int go[2];
  if (pipe(go) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(3);
    if (!netns.empty()) {
      int fd = open(("/var/run/netns/" + netns).c_str(), O_RDONLY);
      if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) _exit(4);
      close(fd);
    }
    body();
    _exit(0);
  }
  close(go[0]);
  if (!WriteString(cg.path() + "/cgroup.procs", std::to_string(pid))) {
    ADD_FAILURE() << "could not move pid " << pid << " into " << cg.path();
  }
  if (write(go[1], "g", 1) != 1) ADD_FAILURE() << "could not start child";
  close(go[1]);
  return pid;
}

int WaitChild(pid_t pid, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

int Sh(const std::string& command) {
  int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

namespace {
std::atomic<int> g_netns_seq{0};
}  // namespace

TestNetns::TestNetns() {
  name_ = "kmon-" + std::to_string(getpid()) + "-" + std::to_string(g_netns_seq++);
  if (Sh("ip netns add " + name_) != 0) ADD_FAILURE() << "ip netns add " << name_;
  Sh("ip -n " + name_ + " link set lo up");
}

TestNetns::~TestNetns() { Sh("ip netns del " + name_ + " 2>/dev/null"); }

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

namespace {
size_t Append(char* p, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(p, size * n);
  return size * n;
}

HttpResult Request(const std::string& url, bool post) {
  HttpResult r;
  CURL* c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (post) curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  curl_easy_cleanup(c);
  return r;
}
}  // namespace

HttpResult HttpGet(const std::string& url) { return Request(url, false); }
HttpResult HttpPost(const std::string& url) { return Request(url, true); }

std::optional<double> SampleValue(const std::string& text, const std::string& name,
                                  const std::map<std::string, std::string>& labels) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string::npos || line.compare(0, name_end, name) != 0 ||
        name_end != name.size()) {
      continue;
    }
    bool all = true;
    for (const auto& [k, v] : labels) {
      if (line.find(k + "=\"" + v + "\"") == std::string::npos) all = false;
    }
    if (!all) continue;
    size_t sp = line.rfind(' ');
    return std::stod(line.substr(sp + 1));
  }
  return std::nullopt;
}

ExporterProcess::ExporterProcess(std::vector<std::string> args, std::vector<std::string> wrapper) {
  port_ = FreePort();
  args.insert(args.begin(), "--web.listen-address=127.0.0.1:" + std::to_string(port_));
  args.insert(args.begin(), KMON_EXPORTER_BIN);
  args.insert(args.begin(), wrapper.begin(), wrapper.end());
  pid_ = fork();
  if (pid_ == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    _exit(127);
  }
}

ExporterProcess::~ExporterProcess() {
  if (pid_ > 0) Terminate(5000);
}

bool ExporterProcess::WaitReady(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    if (HttpGet(Url("/-/ready")).status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::string ExporterProcess::Url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(port_) + path;
}

void ExporterProcess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int ExporterProcess::Terminate(int timeout_ms) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

uint32_t MaxBpfProgramId() {
  uint32_t id = 0, max = 0;
  while (bpf_prog_get_next_id(id, &id) == 0) max = id;
  return max;
}

std::vector<uint32_t> BpfProgramIds(const std::string& name, uint32_t min_id) {
  std::vector<uint32_t> ids;
  uint32_t id = min_id;
  while (bpf_prog_get_next_id(id, &id) == 0) {
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && name == info.name) ids.push_back(id);
    close(fd);
  }
  return ids;
}

void CollectorRootTest::SetUp() {
  KMON_REQUIRE_ROOT();
  auto root = DetectCgroup2Root();
  ASSERT_TRUE(root.has_value());
  workloads_ = std::make_unique<WorkloadResolver>(std::make_unique<CgroupFsPathSource>(*root),
                                                  nullptr, std::chrono::milliseconds(0));
  watched_ = std::make_unique<WatchedCgroups>(workloads_.get());
}

PinnedTo::PinnedTo(int cpu) {
  ok_ = sched_getaffinity(0, sizeof(saved_), &saved_) == 0;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  ok_ = ok_ && sched_setaffinity(0, sizeof(one), &one) == 0;
}

PinnedTo::~PinnedTo() { sched_setaffinity(0, sizeof(saved_), &saved_); }

FlushRuns RunOnCpuWhileAlive(const bpf_program* prog, int cpu, pid_t pid) {
  FlushRuns r;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      r.reaped = true;
      r.exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      return r;
    }
    LIBBPF_OPTS(bpf_test_run_opts, opts, .flags = BPF_F_TEST_RUN_ON_CPU,
                .cpu = static_cast<__u32>(cpu));
    if (bpf_prog_test_run_opts(bpf_program__fd(prog), &opts) != 0) return r;
    ++r.runs;
    r.busy += opts.retval != 0;
  }
}

FlushRuns FlushCpu1WhileChildWorks(const bpf_program* prog, const TestCgroup& cg,
                                   const std::function<void()>& work) {
  FlushRuns runs;
  const pid_t child = SpawnInCgroup(cg, [&] {
    PinnedTo cpu1(1);
    if (!cpu1.ok()) _exit(3);
    work();
  });
  if (child <= 0) {
    ADD_FAILURE() << "cannot start the working child";
    return runs;
  }
  {
    PinnedTo cpu0(0);  // so that every run on CPU 1 is an IPI
    if (cpu0.ok()) {
      runs = RunOnCpuWhileAlive(prog, 1, child);
    } else {
      ADD_FAILURE() << "cannot pin the test to CPU 0";
    }
  }
  if (!runs.reaped) {
    WaitChild(child);  // a failed run ended the loop
  } else if (!runs.exited_ok) {
    ADD_FAILURE() << "the working child failed";
  }
  return runs;
}

}  // namespace kmon::testing
