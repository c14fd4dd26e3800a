// The one table of collectors. A row with a factory is built into this version;
// a row without one would be a name the config and flags know, whose collector has
// not landed yet: it is skipped with a log line and reports no series. Each row
// carries the collector's config section (defaults and parser), so a collector is
// added here and nowhere in exporter/.
#include "collectors/blockio.h"
#include "collectors/collector.h"
#include "collectors/cpu.h"
#include "collectors/dns.h"
#include "collectors/drops.h"
#include "collectors/events.h"
#include "collectors/pagecache.h"
#include "collectors/syscalls.h"
#include "collectors/tcp.h"
#include "collectors/topology.h"

namespace kmon {
namespace {

template <typename T>
CollectorFactory Make() {
  return [](const CollectorDeps& d) { return std::make_unique<T>(d); };
}

}  // namespace

const std::vector<CollectorEntry>& CollectorTable() {
  static const std::vector<CollectorEntry> table = {
      {"tcp", true, Make<TcpCollector>(), SectionOf(ParseTcpSection)},
      {"topology", true, Make<TopologyCollector>(), SectionOf(ParseTopologySection)},
      {"drops", true, Make<DropsCollector>(), SectionOf(ParseDropsSection)},
      {"blockio", true, Make<BlockioCollector>(), SectionOf(ParseBlockioSection)},
      // Off by default (SPEC): where the kernel refuses fexit its one hook is the exit
      // of every syscall on the node.
      {"syscalls", false, Make<SyscallsCollector>(),
       SectionOf(ParseSyscallsSection, DefaultSyscallsSection)},
      {"cpu", true, Make<CpuCollector>(), SectionOf(ParseCpuSection)},
      {"dns", true, Make<DnsCollector>(), SectionOf(ParseDnsSection)},
      {"pagecache", true, Make<PagecacheCollector>(), SectionOf(ParsePagecacheSection)},
      // Off by default: it counts only what the user names.
      {"events", false, Make<EventsCollector>(), SectionOf(ParseEventsSection)},
  };
  return table;
}

}  // namespace kmon
