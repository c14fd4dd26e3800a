#include "collectors/offcpu/process.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#include <absl/strings/str_cat.h>

#include "collectors/proc_text.h"

namespace kmon {

uint64_t BootNsToTicks(uint64_t ns) {
  static const uint64_t ns_per_tick = [] {
    long hz = sysconf(_SC_CLK_TCK);
    return static_cast<uint64_t>(1000000000 / (hz > 0 ? hz : 100));
  }();
  return ns / ns_per_tick;
}

std::optional<uint64_t> ReadProcessStartTicks(const std::string& proc, uint32_t tgid) {
  // Asked every second for every process with stacks: one open and one read, no
  // stream. The line is well under 1 KiB (comm is at most 64 bytes).
  const std::string path = absl::StrCat(proc, "/", tgid, "/stat");
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[1024];
  const ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) return std::nullopt;
  const std::string_view stat(buf, static_cast<size_t>(n));
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are
  // counted from the last ')'. The state is field 3, starttime field 22.
  size_t paren = stat.rfind(')');
  if (paren == std::string_view::npos) return std::nullopt;
  std::string_view rest = stat.substr(paren + 1);
  std::string_view field;
  for (int i = 3; i <= 22; ++i) field = NextField(&rest);
  if (field.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : field) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

std::vector<MapEntry> ParseProcMaps(std::string_view text) {
  std::vector<MapEntry> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    std::string_view range = NextField(&line);
    std::string_view perms = NextField(&line);
    std::string_view offset = NextField(&line);
    std::string_view dev = NextField(&line);
    std::string_view inode = NextField(&line);
    size_t b = line.find_first_not_of(' ');
    std::string_view path = b == std::string_view::npos ? std::string_view() : line.substr(b);
    if (perms.size() < 3 || perms[2] != 'x') continue;
    size_t dash = range.find('-');
    if (dash == std::string_view::npos) continue;
    MapEntry m;
    if (!ParseHex(range.substr(0, dash), &m.start) || !ParseHex(range.substr(dash + 1), &m.end) ||
        !ParseHex(offset, &m.offset) || m.end <= m.start) {
      // An empty or reversed range is not a mapping (the fuzzer made one): its size
      // would wrap, and an address lookup would match far more than it holds.
      continue;
    }
    m.inode = std::strtoull(std::string(inode).c_str(), nullptr, 10);
    m.dev = std::string(dev);
    m.path = std::string(path);
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace kmon
