// The HTTP server under connections that misbehave, over real sockets: idle and half-sent
// requests, stalled TLS handshakes, more scrapes than --web.max-requests, headers sent a
// byte at a time, more connections than the cap. Each test times what it promises.
#include <absl/strings/match.h>
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "exporter/exposition.h"
#include "exporter/http_server.h"
#include "tests/http_test_client.h"

namespace kmon {
namespace {

using Clock = std::chrono::steady_clock;

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A blocking TCP socket to 127.0.0.1:port; reads give up after `recv_timeout_ms`.
int Connect(int port, int recv_timeout_ms = 3000) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  timeval tv{recv_timeout_ms / 1000, (recv_timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  return ::send(fd, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
}

// Still open from the server's side: nothing to read, and no end of stream.
bool StillOpen(int fd) {
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

// Reads until the server closes (or the receive timeout); what it sent.
std::string ReadToClose(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, n);
  return out;
}

// One HTTP/1.1 response with a Content-Length body, read off a kept-alive connection.
std::string ReadResponse(int fd) {
  std::string out;
  char buf[4096];
  size_t want = std::string::npos;
  while (want == std::string::npos || out.size() < want) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, n);
    const size_t end = out.find("\r\n\r\n");
    if (want == std::string::npos && end != std::string::npos) {
      const size_t cl = out.find("Content-Length: ");
      want = end + 4 + (cl < end ? std::stoul(out.substr(cl + 16)) : 0);
    }
  }
  return out;
}

class Sockets {
 public:
  ~Sockets() {
    for (int fd : fds_) ::close(fd);
  }
  int Add(int fd) {
    if (fd >= 0) fds_.push_back(fd);
    return fd;
  }
  const std::vector<int>& fds() const { return fds_; }

 private:
  std::vector<int> fds_;
};

class HttpLoadTest : public HttpServerFixture {
 protected:
  // A scrape and a probe on fresh connections, each answered within `budget_ms`.
  void ExpectAnswersWithin(double budget_ms, Request req = {}) {
    for (const std::string path : {"/metrics", "/-/healthy"}) {
      const Clock::time_point start = Clock::now();
      const Response r = Fetch(port_, path, req);
      const double ms = MillisSince(start);
      EXPECT_EQ(r.status, 200) << path << ": " << r.curl_error;
      EXPECT_LT(ms, budget_ms) << path;
      std::printf("[ timing ] %s answered in %.1f ms\n", path.c_str(), ms);
    }
  }
};

// civetweb gave each connection one of its 4 worker threads until the request timed out:
// four idle sockets stopped every scrape and probe.
TEST_F(HttpLoadTest, IdleAndHalfSentRequestsDoNotStopScrapes) {
  StartServer();  // defaults: 1024 connections, 10 s for the headers
  Sockets flood;
  for (int i = 0; i < 500; ++i) ASSERT_GE(flood.Add(Connect(port_)), 0) << i;
  for (int i = 0; i < 50; ++i) {
    const int fd = flood.Add(Connect(port_));
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, "GET /metr"));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // all accepted by now
  ExpectAnswersWithin(1000);
  EXPECT_EQ(Fetch(port_, "/metrics").body, Serialize(TestFamilies(), ExpositionFormat::kText004));
  int open = 0;
  for (int fd : flood.fds()) open += StillOpen(fd) ? 1 : 0;
  EXPECT_EQ(open, 550) << "the flood was held open while the scrapes were served";
}

TEST_F(HttpLoadTest, StalledTlsHandshakesDoNotStopHttpsScrapes) {
  TestCertificates certs;
  HttpServerOptions o = LocalOptions();
  o.web = certs.ServerCert();
  StartServer(o);
  Sockets stalls;
  // Half say nothing; half send the start of a ClientHello (a record header promising 200
  // bytes, and 6 of them) and wait.
  const std::string partial_hello("\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03", 11);
  for (int i = 0; i < 50; ++i) {
    const int fd = stalls.Add(Connect(port_));
    ASSERT_GE(fd, 0);
    if (i % 2 == 1) {
      ASSERT_TRUE(SendAll(fd, partial_hello));
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Request tls;
  tls.tls = true;
  ExpectAnswersWithin(1000, tls);
  int open = 0;
  for (int fd : stalls.fds()) open += StillOpen(fd) ? 1 : 0;
  EXPECT_EQ(open, 50);
}

// A handler that holds its request until the test releases it.
struct Latch {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int waiting = 0;
  HttpHandler Handler() {
    return [this](const HttpRequest&) {
      std::unique_lock lock(mu);
      ++waiting;
      cv.notify_all();
      cv.wait(lock, [this] { return open; });
      return HttpResponse{.body = "done"};
    };
  }
  void WaitFor(int n) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return waiting >= n; });
  }
  void Release() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
};

TEST_F(HttpLoadTest, BeyondMaxRequestsIs503AtOnceAndProbesStillAnswer) {
  HttpServerOptions o = LocalOptions();
  o.max_requests = 3;
  StartServer(o);
  Latch latch;
  server_->Handle("/slow", latch.Handler());
  std::vector<std::thread> slow;
  std::vector<Response> slow_results(3);
  for (int i = 0; i < 3; ++i) {
    slow.emplace_back([&, i] { slow_results[i] = Fetch(port_, "/slow"); });
  }
  latch.WaitFor(3);
  ASSERT_EQ(latch.waiting, 3);

  for (const std::string path : {"/slow", "/metrics"}) {
    const Clock::time_point start = Clock::now();
    const Response busy = Fetch(port_, path);
    const double ms = MillisSince(start);
    EXPECT_EQ(busy.status, 503) << path;
    EXPECT_EQ(busy.body, "Limit of concurrent requests reached (3), try again later.\n") << path;
    EXPECT_LT(ms, 100) << path;
  }
  // Probes have a reserve of their own: the kubelet does not restart a busy kmon.
  EXPECT_EQ(Fetch(port_, "/-/healthy").status, 200);
  EXPECT_EQ(Fetch(port_, "/-/ready").status, 200);
  EXPECT_EQ(fake_.gathers.load(), 0) << "the refused scrape never gathered";

  latch.Release();
  for (auto& t : slow) t.join();
  for (const Response& r : slow_results) {
    EXPECT_EQ(r.status, 200) << r.curl_error;
    EXPECT_EQ(r.body, "done");
  }
  EXPECT_EQ(Fetch(port_, "/slow").status, 200);
  EXPECT_EQ(Fetch(port_, "/metrics").status, 200);
}

TEST_F(HttpLoadTest, SlowHeadersAreCutAtTheHeaderTimeout) {
  HttpServerOptions o = LocalOptions();
  o.header_timeout = std::chrono::milliseconds(500);
  StartServer(o);
  Sockets s;
  const int dripping = s.Add(Connect(port_));
  const int silent = s.Add(Connect(port_));
  ASSERT_GE(dripping, 0);
  ASSERT_GE(silent, 0);
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(SendAll(dripping, "GET /-/healthy HTTP/1.1\r\nHost: kmon\r\n"));
  // One header every 100 ms: never idle, never finished.
  double cut_ms = -1;
  for (int i = 0; i < 30 && cut_ms < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!StillOpen(dripping) || !SendAll(dripping, "X-Slow: " + std::to_string(i) + "\r\n")) {
      cut_ms = MillisSince(start);
    }
  }
  EXPECT_GE(cut_ms, 450);
  EXPECT_LT(cut_ms, 1200);
  EXPECT_EQ(ReadToClose(dripping), "") << "cut without an answer";
  EXPECT_EQ(ReadToClose(silent), "");
  EXPECT_LT(MillisSince(start), 1500) << "the silent connection went the same way";
  EXPECT_EQ(Fetch(port_, "/-/healthy").status, 200);
}

// No handler takes a body: one is read and dropped, within the header timeout again and
// up to 64 KiB.
TEST_F(HttpLoadTest, BodiesAreBoundedInTimeAndSize) {
  HttpServerOptions o = LocalOptions();
  o.header_timeout = std::chrono::milliseconds(500);
  o.enable_lifecycle = true;
  StartServer(o);
  Sockets s;
  const int slow = s.Add(Connect(port_));
  ASSERT_GE(slow, 0);
  ASSERT_TRUE(
      SendAll(slow, "POST /-/reload HTTP/1.1\r\nHost: kmon\r\nContent-Length: 1000\r\n\r\n"));
  const Clock::time_point start = Clock::now();
  double cut_ms = -1;
  for (int i = 0; i < 30 && cut_ms < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!StillOpen(slow) || !SendAll(slow, "0123456789")) cut_ms = MillisSince(start);
  }
  EXPECT_GE(cut_ms, 450);
  EXPECT_LT(cut_ms, 1200);
  EXPECT_EQ(ReadToClose(slow), "");
  EXPECT_EQ(fake_.reloads.load(), 0) << "a request whose body never came never ran";

  // Too large a declared body is refused before it is sent; one that grows too large as it
  // comes (chunked) is cut.
  const int big = s.Add(Connect(port_));
  ASSERT_GE(big, 0);
  ASSERT_TRUE(
      SendAll(big, "POST /-/reload HTTP/1.1\r\nHost: kmon\r\nContent-Length: 100000\r\n\r\n"));
  const std::string r = ReadToClose(big);
  EXPECT_EQ(r.substr(0, 12), "HTTP/1.1 413") << r;
  EXPECT_TRUE(absl::EndsWith(r, "\r\n\r\nRequest body too large")) << r;
  const int chunked = s.Add(Connect(port_));
  ASSERT_GE(chunked, 0);
  ASSERT_TRUE(SendAll(
      chunked, "POST /-/reload HTTP/1.1\r\nHost: kmon\r\nTransfer-Encoding: chunked\r\n\r\n"));
  for (int i = 0; i < 20 && SendAll(chunked, "1000\r\n" + std::string(4096, 'x') + "\r\n"); ++i) {
  }
  EXPECT_EQ(ReadToClose(chunked), "");
  EXPECT_EQ(fake_.reloads.load(), 0);

  const int fine = s.Add(Connect(port_));
  ASSERT_TRUE(
      SendAll(fine, "POST /-/reload HTTP/1.1\r\nHost: kmon\r\nContent-Length: 5\r\n\r\nhello"));
  EXPECT_EQ(ReadResponse(fine).substr(0, 15), "HTTP/1.1 200 OK");
  EXPECT_EQ(fake_.reloads.load(), 1);
}

TEST_F(HttpLoadTest, KeepAliveServesTwoRequestsOnOneConnection) {
  StartServer();
  Sockets s;
  const int fd = s.Add(Connect(port_));
  ASSERT_GE(fd, 0);
  for (const std::string path : {"/-/healthy", "/metrics"}) {
    ASSERT_TRUE(SendAll(fd, "GET " + path + " HTTP/1.1\r\nHost: kmon\r\n\r\n")) << path;
    const std::string r = ReadResponse(fd);
    EXPECT_EQ(r.substr(0, 15), "HTTP/1.1 200 OK") << path;
    EXPECT_EQ(r.find("Connection: close"), std::string::npos) << r;
    const std::string body = r.substr(r.find("\r\n\r\n") + 4);
    EXPECT_EQ(body, path == "/metrics" ? Serialize(TestFamilies(), ExpositionFormat::kText004)
                                       : std::string("OK"));
  }
  EXPECT_TRUE(StillOpen(fd));
  EXPECT_EQ(fake_.gathers.load(), 1);
}

TEST_F(HttpLoadTest, ConnectionsBeyondTheCapAreClosedWhileOthersAreServed) {
  HttpServerOptions o = LocalOptions();
  o.max_connections = 5;
  StartServer(o);
  Sockets s;
  for (int i = 0; i < 4; ++i) ASSERT_GE(s.Add(Connect(port_)), 0);
  const int client = s.Add(Connect(port_));
  ASSERT_GE(client, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the five are accepted

  const Clock::time_point start = Clock::now();
  const int sixth = s.Add(Connect(port_));
  ASSERT_GE(sixth, 0) << "the kernel completes the handshake; the server then closes it";
  EXPECT_EQ(ReadToClose(sixth), "");
  EXPECT_LT(MillisSince(start), 500) << "closed at once, not left waiting";
  EXPECT_EQ(Fetch(port_, "/-/healthy").status, 0) << "a new client is refused the same way";

  ASSERT_TRUE(SendAll(client, "GET /-/healthy HTTP/1.1\r\nHost: kmon\r\n\r\n"));
  const std::string r = ReadResponse(client);
  EXPECT_EQ(r.substr(0, 15), "HTTP/1.1 200 OK");
  EXPECT_EQ(r.substr(r.size() - 2), "OK");
}

}  // namespace
}  // namespace kmon
