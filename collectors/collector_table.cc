// The one table of collectors. A row with a factory is built into this version;
// a row without one is a name the config and flags know, whose collector has not
// landed yet: it is skipped with a log line and reports no series.
#include "collectors/blockio.h"
#include "collectors/collector.h"
#include "collectors/cpu.h"
#include "collectors/drops.h"
#include "collectors/syscalls.h"
#include "collectors/tcp.h"
#include "collectors/topology.h"

namespace kmon {

const std::vector<CollectorEntry>& CollectorTable() {
  static const std::vector<CollectorEntry> table = {
      {"tcp", true, [](const CollectorDeps& d) { return std::make_unique<TcpCollector>(d); }},
      {"topology", true,
       [](const CollectorDeps& d) { return std::make_unique<TopologyCollector>(d); }},
      {"drops", true, [](const CollectorDeps& d) { return std::make_unique<DropsCollector>(d); }},
      {"blockio", true,
       [](const CollectorDeps& d) { return std::make_unique<BlockioCollector>(d); }},
      {"syscalls", true,
       [](const CollectorDeps& d) { return std::make_unique<SyscallsCollector>(d); }},
      {"cpu", true, [](const CollectorDeps& d) { return std::make_unique<CpuCollector>(d); }},
      {"dns", true, nullptr},
      {"pagecache", true, nullptr},
  };
  return table;
}

}  // namespace kmon
