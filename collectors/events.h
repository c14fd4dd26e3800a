// `events`: Kmon's function counter made general. The user names kernel events
// (tracepoints as "category:name", kernel functions by name) and kmon counts them
// per workload, with no BPF code to write: one precompiled program, attached once
// per event with the event's number as BPF cookie (bpf/events.bpf.c says which
// hook is used when). An event the kernel cannot hook is reported
// kmon_kernel_event_attached 0 with the reason in the log; the others count on.
#pragma once

#include <absl/status/statusor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "collectors/bpf_collector.h"
#include "collectors/data_source.h"

struct events_bpf;

namespace kmon {

/// collectors.events
struct EventsConfig : CollectorSectionOf<EventsConfig> {
  static constexpr char kName[] = "events";
  /// "category:name", each one in this kernel's tracefs (checked by the parser).
  std::vector<std::string> tracepoints;
  /// Kernel function names, hooked with fentry where the kernel allows it.
  std::vector<std::string> functions;
};
void ParseEventsSection(YamlParser& p, const YamlValue& v, EventsConfig* c);

/// A tracepoint name split at its colon: "sched:sched_process_exec" is category
/// "sched", name "sched_process_exec". Nullopt unless both parts are non-empty
/// and of letters, digits and '_' (what tracefs names are made of; it also keeps
/// a name from walking out of the tracefs directory).
struct TracepointName {
  std::string category;
  std::string name;
};
std::optional<TracepointName> SplitTracepoint(std::string_view text);
/// A C identifier: what BTF names a kernel function by.
bool IsFunctionName(std::string_view text);

/// Which tracepoints this kernel has: the parser asks it for every configured
/// tracepoint. A seam, so unit tests can say what "the kernel" has.
class TracepointCatalog {
 public:
  virtual ~TracepointCatalog() = default;
  /// Whether the kernel has the event; an error when that cannot be told.
  virtual absl::StatusOr<bool> Has(const TracepointName& tp) = 0;
};
/// The running kernel's tracefs (/sys/kernel/tracing, mounted when missing), or
/// the catalog a ScopedTracepointCatalog installed.
TracepointCatalog& Tracepoints();
/// Makes `catalog` the one Tracepoints() returns while this lives.
class ScopedTracepointCatalog {
 public:
  explicit ScopedTracepointCatalog(TracepointCatalog* catalog);
  ~ScopedTracepointCatalog();
  ScopedTracepointCatalog(const ScopedTracepointCatalog&) = delete;
  ScopedTracepointCatalog& operator=(const ScopedTracepointCatalog&) = delete;

 private:
  TracepointCatalog* previous_;
};

/// Aggregated count of one (cgroup, event number) pair, summed over CPUs.
struct EventCount {
  uint64_t cgroup_id = 0;
  uint32_t event = 0;
  uint64_t count = 0;
};
using EventCountSource = DataSource<EventCount>;

/// A configured event as the collector holds it.
struct EventStatus {
  std::string label;   // the `event` label: "category:name" or the function's name
  uint32_t event = 0;  // its number in the maps
  bool attached = false;
};

/// Turns counts into kmon_kernel_events_total and kmon_kernel_event_attached.
/// Counts of numbers no configured event has (removed events, whose counters are
/// kept for a re-add) are left out. Pure apart from the labeler.
std::vector<prometheus::MetricFamily> BuildEventFamilies(const std::vector<EventCount>& counts,
                                                         const std::vector<EventStatus>& events,
                                                         WorkloadLabeler* labeler);

class EventHook;

class EventsCollector : public BpfCollector {
 public:
  explicit EventsCollector(const CollectorDeps& deps);
  ~EventsCollector() override;

 private:
  /// An event as the config names it.
  struct EventName {
    std::string label;  // the `event` label
    bool function = false;
    TracepointName tp;  // for a tracepoint
  };
  /// One configured event: its number and, when the kernel let kmon hook it, the hook.
  struct Event {
    EventName name;
    uint32_t slot = 0;
    std::unique_ptr<EventHook> hook;  // null: not attached
  };
  /// Who holds an event number: a configured event, a removed one (counters
  /// kept; `retired` orders them, oldest first to be reused), or nobody.
  struct Slot {
    std::string label;
    bool configured = false;
    uint64_t retired = 0;
  };

  absl::Status BeforeLoad(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override;
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;

  /// Detaches removed events, attaches new ones and retries those that failed.
  absl::Status Sync();
  /// The number `label` gets: its old one if it still has it, else a free one,
  /// else the longest-removed event's, whose counters are deleted first.
  absl::StatusOr<uint32_t> TakeSlot(const std::string& label);
  absl::Status DeleteCounts(uint32_t slot);
  absl::StatusOr<std::unique_ptr<EventHook>> Attach(const Event& e);
  /// A copy of the object counting only `e`, sharing this one's maps.
  absl::StatusOr<std::unique_ptr<EventHook>> AttachOwnCopy(const Event& e, bool raw_tp);
  void DropStale(const std::vector<EventCount>& counts);

  events_bpf* skel_ = nullptr;
  std::unique_ptr<EventCountSource> source_;
  bool raw_tp_cookie_ = false;           // the kernel has raw tracepoint cookies (6.10)
  bool perf_tp_cookie_ = false;          // ... perf-event tracepoint cookies (5.15)
  bool attaching_ = false;               // after the first attach: Configure hooks events
  std::vector<EventName> wanted_;        // the config in force, in its order
  std::map<std::string, Event> events_;  // by label: what is configured now
  std::vector<Slot> slots_;
  uint64_t retired_seq_ = 0;
};

}  // namespace kmon
