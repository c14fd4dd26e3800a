#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "tests/root/req_resp.h"

namespace kmon::testing {

bool SendAll(int fd, const std::string& s) {
  return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

std::optional<std::string> ReadLine(int fd) {
  std::string line;
  char c;
  while (true) {
    ssize_t n = recv(fd, &c, 1, 0);
    if (n <= 0) return std::nullopt;
    if (c == '\n') return line;
    line.push_back(c);
  }
}

socklen_t MakeAddr(int family, const std::string& addr, uint16_t port, sockaddr_storage* ss) {
  *ss = {};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, addr.c_str(), &a->sin_addr);
    return sizeof *a;
  }
  auto* a = reinterpret_cast<sockaddr_in6*>(ss);
  a->sin6_family = AF_INET6;
  a->sin6_port = htons(port);
  inet_pton(AF_INET6, addr.c_str(), &a->sin6_addr);
  return sizeof *a;
}

uint16_t LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

int Listen(int family, const std::string& addr, uint16_t* port) {
  int fd = socket(family, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_storage ss;
  socklen_t len = MakeAddr(family, addr, 0, &ss);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 128) != 0) return -1;
  *port = LocalPort(fd);
  return fd;
}

int Connect(int family, const std::string& addr, uint16_t port) {
  int fd = socket(family, SOCK_STREAM, 0);
  sockaddr_storage ss;
  socklen_t len = MakeAddr(family, addr, port, &ss);
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

Server StartListener(const TestCgroup& cg, int family, const std::string& addr,
                     const std::function<void(int)>& run, const std::string& netns) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  Server s;
  s.pid = SpawnInCgroup(
      cg,
      [&] {
        close(p[0]);
        uint16_t port = 0;
        // The listener is made inside the cgroup: accepted sockets inherit its cgroup.
        int lfd = Listen(family, addr, &port);
        if (write(p[1], &port, sizeof port) != sizeof port) _exit(5);
        if (lfd < 0) _exit(6);
        run(lfd);
      },
      netns);
  close(p[1]);
  EXPECT_EQ(read(p[0], &s.port, sizeof s.port), static_cast<ssize_t>(sizeof s.port));
  close(p[0]);
  EXPECT_NE(s.port, 0);
  return s;
}

Server StartServer(const TestCgroup& cg, int family, const std::string& addr, int connections,
                   const std::function<void(int)>& serve, const std::string& netns) {
  return StartListener(
      cg, family, addr,
      [&](int lfd) {
        for (int c = 0; c < connections; ++c) {
          int fd = accept(lfd, nullptr, nullptr);
          if (fd < 0) _exit(7);
          serve(fd);
          close(fd);
        }
      },
      netns);
}

Server StartServer(const TestCgroup& cg, int family, const std::string& addr, int connections,
                   const std::string& netns) {
  return StartServer(
      cg, family, addr, connections,
      [](int fd) {
        while (auto line = ReadLine(fd)) {
          int ms = std::atoi(line->c_str());
          std::this_thread::sleep_for(std::chrono::milliseconds(ms));
          if (!SendAll(fd, "ok\n")) break;
        }
      },
      netns);
}

void Requests(int family, const std::string& addr, uint16_t port, int n, int ms) {
  int fd = Connect(family, addr, port);
  if (fd < 0) _exit(10);
  for (int i = 0; i < n; ++i) {
    if (!SendAll(fd, std::to_string(ms) + "\n") || !ReadLine(fd)) _exit(11);
  }
  close(fd);
}

}  // namespace kmon::testing
