#include "collectors/tcp_listeners.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace kmon {

std::vector<Listener> ParseProcNetTcpListeners(std::string_view text) {
  // "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
  // timeout inode ..." then
  // "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
  // 0 12345 ..." (IPv6 has a 32-hex address).
  std::vector<Listener> out;
  std::istringstream in{std::string(text)};
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string sl, local, remote, st, queues, timer, retransmits, uid, timeout;
    uint64_t ino = 0;
    if (!(fields >> sl >> local >> remote >> st >> queues >> timer >> retransmits >> uid >>
          timeout >> ino)) {
      continue;
    }
    if (st != "0A") continue;
    size_t colon = local.rfind(':');
    if (colon == std::string::npos) continue;
    char* end = nullptr;
    unsigned long port = std::strtoul(local.c_str() + colon + 1, &end, 16);
    if (end == local.c_str() + colon + 1 || port > 65535) continue;
    out.push_back({.netns = 0, .port = static_cast<uint16_t>(port), .ino = ino});
  }
  return out;
}

std::set<Listener> ScanListeners(const std::string& proc) {
  std::set<Listener> out;
  std::set<uint64_t> seen_netns;
  DIR* d = opendir(proc.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string base = proc + "/" + e->d_name;
    struct stat sb {};
    if (stat((base + "/ns/net").c_str(), &sb) != 0) continue;  // exited, or a kernel thread
    if (!seen_netns.insert(sb.st_ino).second) continue;
    for (const char* f : {"/net/tcp", "/net/tcp6"}) {
      std::ifstream in(base + f);
      if (!in) continue;
      std::stringstream ss;
      ss << in.rdbuf();
      for (Listener l : ParseProcNetTcpListeners(ss.str())) {
        l.netns = static_cast<uint32_t>(sb.st_ino);
        out.insert(l);
      }
    }
  }
  closedir(d);
  return out;
}

}  // namespace kmon
