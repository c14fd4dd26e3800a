#include "collectors/events.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <unordered_map>

#include "base/log.h"
#include "bpf/events.h"
#include "bpf/events.skel.h"
#include "bpf/kmon_common.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"

namespace kmon {

/// How one event is hooked; destroying it detaches just that event. Exactly one
/// of: a raw tracepoint link fd, a libbpf link, or (with either) a copy of the
/// object of its own.
class EventHook {
 public:
  EventHook(std::string how, events_bpf* own) : how_(std::move(how)), own_(own) {}
  ~EventHook() {
    if (link_ != nullptr) bpf_link__destroy(link_);
    if (link_fd_ >= 0) close(link_fd_);
    if (own_ != nullptr) events_bpf__destroy(own_);
  }
  EventHook(const EventHook&) = delete;
  EventHook& operator=(const EventHook&) = delete;

  const std::string& how() const { return how_; }
  void set_link_fd(int fd) { link_fd_ = fd; }
  void set_link(bpf_link* link) { link_ = link; }

 private:
  std::string how_;
  events_bpf* own_ = nullptr;
  int link_fd_ = -1;
  bpf_link* link_ = nullptr;
};

namespace {

constexpr char kName[] = "events";
// The maps a per-event copy shares with the collector's object.
constexpr const char* kSharedMaps[] = {"counts", "filter_config", "watched_cgroups", "lost"};

// BPF_RAW_TRACEPOINT_OPEN's attribute as of Linux 6.10, which added the cookie
// ("bpf: support BPF cookie in raw tracepoint (raw_tp, tp_btf) programs"). Written
// out because the build host's linux/bpf.h and libbpf 1.1 predate it; only used
// once the kernel's BTF shows the feature (bpf_raw_tp_link.cookie).
struct RawTpOpenAttr {
  uint64_t name;
  uint32_t prog_fd;
  uint32_t pad;
  uint64_t cookie;
};

// A raw tracepoint link fd, or -errno.
int RawTracepointOpenWithCookie(const std::string& name, int prog_fd, uint64_t cookie) {
  RawTpOpenAttr attr{};
  attr.name = reinterpret_cast<uintptr_t>(name.c_str());
  attr.prog_fd = static_cast<uint32_t>(prog_fd);
  attr.cookie = cookie;
  const long fd = syscall(__NR_bpf, BPF_RAW_TRACEPOINT_OPEN, &attr, sizeof attr);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

EventCount SumEventCount(const event_key& k, std::span<const event_value> per_cpu) {
  EventCount c{.cgroup_id = k.cgroup_id, .event = k.event};
  for (const auto& v : per_cpu) c.count += v.count;
  return c;
}

}  // namespace

std::vector<prometheus::MetricFamily> BuildEventFamilies(const std::vector<EventCount>& counts,
                                                         const std::vector<EventStatus>& events,
                                                         WorkloadLabeler* labeler) {
  FamilyBuilder total("kmon_kernel_events_total",
                      "Kernel events in the workload's tasks: hits of a tracepoint "
                      "(event=\"category:name\") or calls of a kernel function (its name).",
                      prometheus::MetricType::Counter, {"namespace", "pod", "container", "event"});
  FamilyBuilder attached(
      "kmon_kernel_event_attached",
      "1 when the configured event is hooked; 0 when this kernel has no such "
      "tracepoint or does not let BPF attach to the function (the log says why).",
      prometheus::MetricType::Gauge, {"event"});
  std::unordered_map<uint32_t, const std::string*> label_of;
  for (const EventStatus& e : events) {
    attached.AddGauge({e.label}, e.attached ? 1 : 0);
    label_of[e.event] = &e.label;
  }
  // One series per (workload, event); visit in a fixed order so the same
  // workloads win the budget on every scrape.
  std::vector<const EventCount*> sorted;
  std::unordered_map<uint64_t, int64_t> series_per_cgroup;
  for (const EventCount& c : counts) {
    if (!label_of.count(c.event)) continue;
    sorted.push_back(&c);
    ++series_per_cgroup[c.cgroup_id];
  }
  std::sort(sorted.begin(), sorted.end(), [](const EventCount* a, const EventCount* b) {
    return std::tie(a->cgroup_id, a->event) < std::tie(b->cgroup_id, b->event);
  });
  for (const EventCount* c : sorted) {
    std::optional<WorkloadLabels> l =
        labeler->LabelsFor(c->cgroup_id, series_per_cgroup[c->cgroup_id]);
    if (!l) continue;  // the cgroup is gone; its entries are dropped by the collector
    total.AddCounter({l->namespace_, l->pod, l->container, *label_of.at(c->event)},
                     static_cast<double>(c->count));
  }
  return {total.Build(), attached.Build()};
}

EventsCollector::EventsCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, events_bpf__create_skeleton,
                   {{"counts", sizeof(event_key), sizeof(event_value)}}) {}

EventsCollector::~EventsCollector() { Stop(); }

absl::Status EventsCollector::BeforeLoad(const CollectorConfig&) {
  // Which cookies the kernel has decides how tracepoints are told apart: by the
  // attachment's cookie (one program for all), or by a copy per event.
  absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
  const btf* types = vmlinux.ok() ? *vmlinux : nullptr;
  raw_tp_cookie_ = StructHasMember(types, "bpf_raw_tp_link", "cookie");  // Linux 6.10
  perf_tp_cookie_ = StructHasMember(types, "perf_event", "bpf_cookie");  // Linux 5.15
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel_->obj) {
    bpf_program__set_autoload(prog, false);
    bpf_program__set_autoattach(prog, false);  // Sync attaches each event itself
  }
  bpf_program__set_autoload(skel_->progs.kmon_ev_rawtp, raw_tp_cookie_);
  bpf_program__set_autoload(skel_->progs.kmon_ev_tp, perf_tp_cookie_);
  LogInfo("events: how tracepoints are hooked",
          {{"collector", kName},
           {"raw_tracepoints", raw_tp_cookie_ ? "one raw_tp program, a BPF cookie per event"
                                              : "a program copy per event (no raw_tp cookies)"},
           {"other_tracepoints", perf_tp_cookie_
                                     ? "one perf-event tracepoint program, a BPF cookie per event"
                                     : "a program copy per event (no perf-event cookies)"},
           {"functions", "a fentry program copy per function"}});
  return absl::OkStatus();
}

absl::Status EventsCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<PerCpuHashSource<event_key, event_value, EventCount>>(
      bpf_map__fd(skel_->maps.counts), SumEventCount);
  // The watched-cgroups filter is in place by now: hook the events.
  attaching_ = true;
  return Sync();
}

void EventsCollector::BeforeDestroy() {
  std::lock_guard<std::mutex> lock(mu_);
  events_.clear();  // detaches every event and frees the per-event copies
  slots_.clear();
  source_.reset();
  attaching_ = false;
}

absl::Status EventsCollector::Configure(const CollectorConfig& config) {
  const EventsConfig& ec = config.collectors.Get<EventsConfig>();
  std::vector<EventName> wanted;
  for (const std::string& t : ec.tracepoints) {
    std::optional<TracepointName> tp = SplitTracepoint(t);
    if (!tp) {
      return absl::InvalidArgumentError(
          absl::StrCat("collector=events: malformed tracepoint ", Quote(t)));
    }
    wanted.push_back({t, false, *tp});
  }
  for (const std::string& f : ec.functions) wanted.push_back({f, true, {}});
  if (wanted.size() > KMON_EVENTS_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("collector=events: ", wanted.size(), " events, at most ", KMON_EVENTS_MAX));
  }
  wanted_ = std::move(wanted);
  return attaching_ ? Sync() : absl::OkStatus();
}

absl::Status EventsCollector::Sync() {
  // Removed events go first, so that their numbers are free for new ones.
  for (auto it = events_.begin(); it != events_.end();) {
    const bool kept = std::any_of(wanted_.begin(), wanted_.end(),
                                  [&](const EventName& w) { return w.label == it->first; });
    if (kept) {
      ++it;
      continue;
    }
    Slot& s = slots_[it->second.slot];
    s.configured = false;
    s.retired = ++retired_seq_;
    LogInfo("event removed; its counters are kept in case it comes back",
            {{"collector", kName}, {"event", it->first}});
    it = events_.erase(it);  // the hook's destructor detaches it
  }
  for (const EventName& w : wanted_) {
    auto it = events_.find(w.label);
    if (it == events_.end()) {
      absl::StatusOr<uint32_t> slot = TakeSlot(w.label);
      if (!slot.ok()) return slot.status();
      it = events_.emplace(w.label, Event{w, *slot, nullptr}).first;
    }
    Event& e = it->second;
    if (e.hook != nullptr) continue;  // attached: left exactly as it is
    // Not attached yet, or it failed before: a reload tries again (a module with
    // the tracepoint may have loaded since).
    absl::StatusOr<std::unique_ptr<EventHook>> hook = Attach(e);
    if (!hook.ok()) {
      LogWarn("event not attached; the other events count on",
              {{"collector", kName}, {"event", w.label}, {"err", hook.status().ToString()}});
      continue;
    }
    e.hook = std::move(*hook);
    LogInfo("event attached", {{"collector", kName},
                               {"event", w.label},
                               {"number", std::to_string(e.slot)},
                               {"hook", e.hook->how()}});
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> EventsCollector::TakeSlot(const std::string& label) {
  if (slots_.empty()) slots_.resize(KMON_EVENT_SLOTS);
  // Its own number, if it has kept it since it was removed: counting continues.
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].label == label) {
      slots_[i].configured = true;
      return i;
    }
  }
  int64_t pick = -1;
  for (uint32_t i = 0; i < slots_.size() && pick < 0; ++i) {
    if (slots_[i].label.empty()) pick = i;
  }
  if (pick < 0) {
    // No free number: the event removed longest ago gives up its counters.
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].configured && (pick < 0 || slots_[i].retired < slots_[pick].retired)) pick = i;
    }
    if (pick < 0) {
      return absl::ResourceExhaustedError("collector=events: no free event number");
    }
    absl::Status st = DeleteCounts(static_cast<uint32_t>(pick));
    if (!st.ok()) return st;
    LogInfo("counters of a removed event dropped to reuse its number",
            {{"collector", kName}, {"event", slots_[pick].label}});
  }
  slots_[pick] = Slot{label, true, 0};
  return static_cast<uint32_t>(pick);
}

absl::Status EventsCollector::DeleteCounts(uint32_t slot) {
  std::vector<EventCount> counts;
  absl::Status st = source_->Read(&counts);
  if (!st.ok()) return st;
  const int fd = bpf_map__fd(skel_->maps.counts);
  for (const EventCount& c : counts) {
    if (c.event != slot) continue;
    event_key k{};
    k.cgroup_id = c.cgroup_id;
    k.event = c.event;
    bpf_map_delete_elem(fd, &k);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<EventHook>> EventsCollector::Attach(const Event& e) {
  absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
  const btf* types = vmlinux.ok() ? *vmlinux : nullptr;
  if (e.name.function) {
    if (types != nullptr &&
        btf__find_by_name_kind(types, e.name.label.c_str(), BTF_KIND_FUNC) <= 0) {
      return absl::NotFoundError(absl::StrCat("no function ", Quote(e.name.label),
                                              " in this kernel's BTF (not a kernel function, "
                                              "inlined, or in a module that is not loaded)"));
    }
    return AttachOwnCopy(e, false);
  }
  const std::string& tp = e.name.tp.name;
  // A raw tracepoint has a btf_trace_<name> typedef; tracefs events without one
  // (syscalls:sys_enter_*) exist only as perf-event tracepoints. Without BTF, try.
  const bool raw = types == nullptr ||
                   BtfHasType(types, absl::StrCat("btf_trace_", tp).c_str(), BTF_KIND_TYPEDEF);
  if (raw && raw_tp_cookie_) {
    auto hook = std::make_unique<EventHook>("raw_tp, BPF cookie", nullptr);
    const int fd =
        RawTracepointOpenWithCookie(tp, bpf_program__fd(skel_->progs.kmon_ev_rawtp), e.slot);
    if (fd < 0) return BpfError(kName, absl::StrCat("attach raw_tp/", tp), -fd);
    hook->set_link_fd(fd);
    return hook;
  }
  if (!raw && perf_tp_cookie_) {
    auto hook = std::make_unique<EventHook>("perf-event tracepoint, BPF cookie", nullptr);
    bpf_tracepoint_opts opts{};
    opts.sz = sizeof opts;
    opts.bpf_cookie = e.slot;
    bpf_link* link = bpf_program__attach_tracepoint_opts(
        skel_->progs.kmon_ev_tp, e.name.tp.category.c_str(), tp.c_str(), &opts);
    if (link == nullptr) {
      return BpfError(kName, absl::StrCat("attach tracepoint/", e.name.label), errno);
    }
    hook->set_link(link);
    return hook;
  }
  return AttachOwnCopy(e, raw);
}

absl::StatusOr<std::unique_ptr<EventHook>> EventsCollector::AttachOwnCopy(const Event& e,
                                                                          bool raw_tp) {
  events_bpf* copy = events_bpf__open();
  if (copy == nullptr) return BpfError(kName, "open a per-event copy", errno);
  bpf_program* prog = e.name.function ? copy->progs.kmon_ev1_fentry
                      : raw_tp        ? copy->progs.kmon_ev1_rawtp
                                      : copy->progs.kmon_ev1_tp;
  const std::string what = e.name.function ? absl::StrCat("fentry/", e.name.label)
                           : raw_tp        ? absl::StrCat("raw_tp/", e.name.tp.name)
                                           : absl::StrCat("tracepoint/", e.name.label);
  auto hook = std::make_unique<EventHook>(absl::StrCat("own program copy, ", what), copy);
  bpf_program* p;
  bpf_object__for_each_program(p, copy->obj) {
    bpf_program__set_autoload(p, p == prog);
    bpf_program__set_autoattach(p, false);
  }
  for (const char* name : kSharedMaps) {
    bpf_map* m = bpf_object__find_map_by_name(copy->obj, name);
    const int err = m == nullptr ? ENOENT : bpf_map__reuse_fd(m, MapFd(name));
    if (err != 0) return BpfError(kName, absl::StrCat("share map ", name), err);
  }
  copy->rodata->event_slot = e.slot;
  if (e.name.function) {
    const int err = bpf_program__set_attach_target(prog, 0, e.name.label.c_str());
    if (err != 0) return BpfError(kName, absl::StrCat("target ", what), err);
  }
  const int err = events_bpf__load(copy);
  if (err != 0) {
    absl::Status st = BpfError(kName, absl::StrCat("load ", what), err);
    if (e.name.function && (err == -EPERM || err == EPERM)) {
      // The kernel refuses fentry under lockdown and where it has no BPF
      // trampolines; libbpf's own hint about RLIMIT_MEMLOCK does not apply then.
      return absl::PermissionDeniedError(
          absl::StrCat(st.message(), " (this kernel does not let BPF attach to kernel functions: ",
                       "kernel lockdown, or no BPF trampolines)"));
    }
    return st;
  }
  if (raw_tp) {
    const int fd = bpf_raw_tracepoint_open(e.name.tp.name.c_str(), bpf_program__fd(prog));
    if (fd < 0) return BpfError(kName, absl::StrCat("attach ", what), errno);
    hook->set_link_fd(fd);
    return hook;
  }
  bpf_link* link = e.name.function ? bpf_program__attach_trace(prog)
                                   : bpf_program__attach_tracepoint(
                                         prog, e.name.tp.category.c_str(), e.name.tp.name.c_str());
  if (link == nullptr) return BpfError(kName, absl::StrCat("attach ", what), errno);
  hook->set_link(link);
  return hook;
}

void EventsCollector::DropStale(const std::vector<EventCount>& counts) {
  const int fd = bpf_map__fd(skel_->maps.counts);
  for (const EventCount& c : counts) {
    const bool held = c.event < slots_.size() && !slots_[c.event].label.empty();
    if (held && !labeler().Gone(c.cgroup_id)) continue;
    event_key k{};
    k.cgroup_id = c.cgroup_id;
    k.event = c.event;
    bpf_map_delete_elem(fd, &k);
  }
}

absl::Status EventsCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  std::vector<EventCount> counts;
  absl::Status st = source_->Read(&counts);
  if (!st.ok()) return st;
  std::vector<EventStatus> status;
  for (const auto& [label, e] : events_) status.push_back({label, e.slot, e.hook != nullptr});
  auto families = BuildEventFamilies(counts, status, &labeler());
  DropStale(counts);
  for (auto& f : families) out->push_back(std::move(f));
  return absl::OkStatus();
}

}  // namespace kmon
