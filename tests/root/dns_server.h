// A DNS server for the dns collector's root tests: UDP and TCP on 127.0.0.1 and
// ::1 at one port, answering every query after a fixed delay with the rcode its
// name asks for. Runs as a child process (in a cgroup and, optionally, a network
// namespace of the test's own); killed and reaped on destruction, and killed by
// the kernel should the test process die first.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "tests/root/root_util.h"

namespace kmon::testing {

/// What the first label of a query's name asks of the server:
///   r<N>    answer with rcode N (r0 with an A record for an A query)
///   late    answer NOERROR after kDnsLateMs instead of the usual delay
///   silent  never answer
/// Anything else is answered like r0.
inline constexpr int kDnsDelayMs = 30;
inline constexpr int kDnsLateMs = 400;

class DnsServer {
 public:
  DnsServer(const TestCgroup& cg, uint16_t port, const std::string& netns = "");
  ~DnsServer();
  DnsServer(const DnsServer&) = delete;
  DnsServer& operator=(const DnsServer&) = delete;
  /// True once both addresses and both protocols are bound.
  bool ok() const { return ok_; }
  uint16_t port() const { return port_; }

 private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  bool ok_ = false;
};

}  // namespace kmon::testing
