// The one table of collectors. A row with a factory is built into this version;
// a row without one would be a name the config and flags know, whose collector has
// not landed yet: it is skipped with a log line and reports no series. Each row
// carries the collector's config section (defaults and parser), so a collector is
// added here and nowhere in exporter/.
#include "bpf/blockio.h"
#include "bpf/cpu.h"
#include "bpf/dns.h"
#include "bpf/drops.h"
#include "bpf/events.h"
#include "bpf/pagecache.h"
#include "bpf/syscalls.h"
#include "bpf/tcp.h"
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
      {"tcp",
       true,
       Make<TcpCollector>(),
       SectionOf(ParseTcpSection),
       {{"listen_ports", KMON_TCP_LISTEN_MAX},
        {"listen_socks", KMON_TCP_LISTEN_SOCKS_MAX},
        {"peer_addrs", KMON_TCP_PEERS_MAX},
        {"client_socks", KMON_TCP_CLIENTS_MAX},
        {"req_hist", KMON_TCP_REQ_MAX},
        {"edges", KMON_TCP_EDGES_MAX},
        {"connect_hist", KMON_TCP_HIST_MAX},
        {"stats", KMON_TCP_STATS_MAX}}},
      {"topology", true, Make<TopologyCollector>(), SectionOf(ParseTopologySection)},
      {"drops",
       true,
       Make<DropsCollector>(),
       SectionOf(ParseDropsSection),
       {{"counts", KMON_DROP_COUNTS_MAX}}},
      {"blockio",
       true,
       Make<BlockioCollector>(),
       SectionOf(ParseBlockioSection),
       {{"io_counts", KMON_BLK_COUNTS_MAX}, {"io_latency", KMON_BLK_LATENCY_MAX}}},
      // Off by default (SPEC): where the kernel refuses fexit its one hook is the exit
      // of every syscall on the node.
      {"syscalls",
       false,
       Make<SyscallsCollector>(),
       SectionOf(ParseSyscallsSection, DefaultSyscallsSection),
       {{"counts", KMON_SYSCALL_COUNTS_MAX}}},
      {"cpu",
       true,
       Make<CpuCollector>(),
       SectionOf(ParseCpuSection),
       {{"cg_counters", KMON_CPU_CGROUPS_MAX},
        {"cg_hists", KMON_CPU_HISTS_MAX},
        {"offcpu_stacks", KMON_CPU_OFFCPU_STACKS_MAX}}},
      {"dns",
       true,
       Make<DnsCollector>(),
       SectionOf(ParseDnsSection),
       {{"pending", KMON_DNS_PENDING_MAX},
        {"hists", KMON_DNS_HIST_MAX},
        {"stats", KMON_DNS_STATS_MAX},
        {"tcp_state", KMON_DNS_TCP_MAX}}},
      {"pagecache",
       true,
       Make<PagecacheCollector>(),
       SectionOf(ParsePagecacheSection),
       {{"counts", KMON_PC_COUNTS_MAX}}},
      // Off by default: it counts only what the user names.
      {"events",
       false,
       Make<EventsCollector>(),
       SectionOf(ParseEventsSection),
       {{"counts", KMON_EVENT_COUNTS_MAX}}},
  };
  return table;
}

}  // namespace kmon
