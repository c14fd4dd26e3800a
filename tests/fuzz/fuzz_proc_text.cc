// The /proc texts kmon reads: /proc/<pid>/net/tcp{,6} (listening ports) and
// /proc/<pid>/maps (off-CPU user frames).
#include "collectors/offcpu/process.h"
#include "collectors/tcp_listeners.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = kmon::fuzz::Text(data, size);
  kmon::ParseProcNetTcpListeners(text);
  for (const kmon::MapEntry& m : kmon::ParseProcMaps(text)) {
    if (m.end < m.start) __builtin_trap();
  }
  return 0;
}
