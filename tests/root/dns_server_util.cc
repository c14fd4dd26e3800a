#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tests/root/dns_server.h"

namespace kmon::testing {
namespace {

using Clock = std::chrono::steady_clock;

struct Due {
  Clock::time_point at;
  int fd;
  bool tcp;
  sockaddr_storage to;
  socklen_t to_len;
  std::string bytes;
};

int Bind(int family, int type, uint16_t port) {
  int fd = socket(family, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc;
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    rc = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    a.sin6_port = htons(port);
    rc = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  if (rc != 0 || (type == SOCK_STREAM && listen(fd, 16) != 0)) {
    close(fd);
    return -1;
  }
  return fd;
}

// The answer to `q` and when it is due; false for no answer (silent, or not a query).
bool Answer(const std::string& q, std::string* out, int* delay_ms) {
  if (q.size() < 12 || (q[2] & 0x80)) return false;
  // The question: the name's labels, then type and class.
  size_t i = 12;
  std::string first;
  while (i < q.size() && q[i] != 0) {
    const size_t n = static_cast<uint8_t>(q[i]);
    if (first.empty()) first = q.substr(i + 1, n);
    i += n + 1;
  }
  if (i + 5 > q.size()) return false;
  const uint16_t qtype =
      static_cast<uint16_t>(static_cast<uint8_t>(q[i + 1]) << 8 | static_cast<uint8_t>(q[i + 2]));
  int rcode = 0;
  *delay_ms = kDnsDelayMs;
  if (first == "silent") return false;
  if (first == "late") *delay_ms = kDnsLateMs;
  if (first.size() > 1 && first[0] == 'r') rcode = std::atoi(first.c_str() + 1) & 0xf;
  const bool with_a = rcode == 0 && qtype == 1;
  *out = q.substr(0, 2);
  out->push_back(static_cast<char>(0x80 | (q[2] & 0x01)));  // QR, RD echoed
  out->push_back(static_cast<char>(0x80 | rcode));          // RA, rcode
  const char counts[8] = {0, 1, 0, static_cast<char>(with_a ? 1 : 0), 0, 0, 0, 0};
  out->append(counts, sizeof counts);
  out->append(q, 12, i + 5 - 12);  // the question, without any EDNS record
  if (with_a) {
    const char rr[16] = {'\xc0', 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, '\xc0', 0, 2, 1};
    out->append(rr, sizeof rr);
  }
  return true;
}

[[noreturn]] void Serve(int pipe_fd, uint16_t port) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  const int udp4 = Bind(AF_INET, SOCK_DGRAM, port), udp6 = Bind(AF_INET6, SOCK_DGRAM, port);
  const int tcp4 = Bind(AF_INET, SOCK_STREAM, port), tcp6 = Bind(AF_INET6, SOCK_STREAM, port);
  const char ready = udp4 >= 0 && udp6 >= 0 && tcp4 >= 0 && tcp6 >= 0 ? 1 : 0;
  if (write(pipe_fd, &ready, 1) != 1 || !ready) _exit(1);
  close(pipe_fd);
  std::map<int, std::string> conns;  // TCP connection -> bytes not yet a whole message
  std::vector<Due> dues;
  while (true) {
    std::vector<pollfd> fds{
        {udp4, POLLIN, 0}, {udp6, POLLIN, 0}, {tcp4, POLLIN, 0}, {tcp6, POLLIN, 0}};
    for (const auto& [fd, buf] : conns) fds.push_back({fd, POLLIN, 0});
    int timeout = -1;
    const auto now = Clock::now();
    for (const Due& d : dues) {
      const int ms = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(d.at - now).count());
      timeout = timeout < 0 ? std::max(ms, 0) : std::min(timeout, std::max(ms, 0));
    }
    poll(fds.data(), fds.size(), timeout);
    for (size_t k = 0; k < dues.size();) {
      if (dues[k].at > Clock::now()) {
        ++k;
        continue;
      }
      const Due& d = dues[k];
      if (d.tcp) {
        send(d.fd, d.bytes.data(), d.bytes.size(), MSG_NOSIGNAL);
      } else {
        sendto(d.fd, d.bytes.data(), d.bytes.size(), 0, reinterpret_cast<const sockaddr*>(&d.to),
               d.to_len);
      }
      dues.erase(dues.begin() + static_cast<long>(k));
    }
    auto schedule = [&](int fd, bool tcp, const sockaddr_storage& to, socklen_t len,
                        const std::string& q) {
      std::string a;
      int delay = 0;
      if (!Answer(q, &a, &delay)) return;
      if (tcp) {  // the 2-byte length first (RFC 1035 section 4.2.2)
        const size_t n = a.size();
        a.insert(0, std::string{static_cast<char>(n >> 8), static_cast<char>(n & 0xff)});
      }
      dues.push_back({Clock::now() + std::chrono::milliseconds(delay), fd, tcp, to, len, a});
    };
    for (const pollfd& p : fds) {
      if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (p.fd == udp4 || p.fd == udp6) {
        char buf[4096];
        sockaddr_storage from{};
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(p.fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
        if (n > 0) schedule(p.fd, false, from, len, std::string(buf, static_cast<size_t>(n)));
      } else if (p.fd == tcp4 || p.fd == tcp6) {
        int c = accept4(p.fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) conns[c];
      } else {
        char buf[4096];
        ssize_t n = recv(p.fd, buf, sizeof buf, 0);
        if (n <= 0) {
          close(p.fd);
          conns.erase(p.fd);
          std::erase_if(dues, [&](const Due& d) { return d.tcp && d.fd == p.fd; });
          continue;
        }
        std::string& b = conns[p.fd];
        b.append(buf, static_cast<size_t>(n));
        while (b.size() >= 2) {
          const size_t len = static_cast<uint8_t>(b[0]) << 8 | static_cast<uint8_t>(b[1]);
          if (b.size() < 2 + len) break;
          schedule(p.fd, true, {}, 0, b.substr(2, len));
          b.erase(0, 2 + len);
        }
      }
    }
  }
}

}  // namespace

DnsServer::DnsServer(const TestCgroup& cg, uint16_t port, const std::string& netns) : port_(port) {
  int p[2];
  if (pipe(p) != 0) return;
  pid_ = SpawnInCgroup(
      cg,
      [&] {
        close(p[0]);
        Serve(p[1], port);
      },
      netns);
  close(p[1]);
  char ready = 0;
  ok_ = pid_ > 0 && read(p[0], &ready, 1) == 1 && ready == 1;
  close(p[0]);
}

DnsServer::~DnsServer() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
}

}  // namespace kmon::testing
