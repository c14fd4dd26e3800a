// A tiny request/response protocol for root tests: the request is "<think ms>\n",
// the server sleeps that long and answers "ok\n". kmon never looks at the bytes;
// the test knows exactly how many requests were made and how long each took.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "tests/root/root_util.h"

namespace kmon::testing {

bool SendAll(int fd, const std::string& s);
/// Reads until '\n'; the line without it, or nullopt at EOF/error.
std::optional<std::string> ReadLine(int fd);
/// addr:port as a sockaddr of `family`; its length.
socklen_t MakeAddr(int family, const std::string& addr, uint16_t port, sockaddr_storage* ss);
/// The local port of a socket, 0 on error.
uint16_t LocalPort(int fd);
int Listen(int family, const std::string& addr, uint16_t* port);
int Connect(int family, const std::string& addr, uint16_t port);

/// A server process that serves `connections` connections one after another, then exits.
struct Server {
  pid_t pid = -1;
  uint16_t port = 0;
};
/// Starts it in `cg` (and `netns`), listening on `addr` at a free port; it answers
/// each line (a number of ms) with "ok\n" after sleeping that long.
Server StartServer(const TestCgroup& cg, int family, const std::string& addr, int connections,
                   const std::string& netns = "");
/// The same, running `serve` on each accepted connection (closed after it returns).
Server StartServer(const TestCgroup& cg, int family, const std::string& addr, int connections,
                   const std::function<void(int)>& serve, const std::string& netns = "");
/// A server that listens on `addr` at a free port, then runs `run` on the listening
/// socket (what it accepts, and when, is up to `run`).
Server StartListener(const TestCgroup& cg, int family, const std::string& addr,
                     const std::function<void(int)>& run, const std::string& netns = "");
/// One keep-alive connection, `n` requests with think time `ms`; in a child process
/// (exits non-zero on error).
void Requests(int family, const std::string& addr, uint16_t port, int n, int ms);

}  // namespace kmon::testing
