#include "collectors/pagecache.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "bpf/pagecache.h"
#include "bpf/pagecache.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"

namespace kmon {
namespace {

constexpr char kName[] = "pagecache";

// The functions bcc's cachestat hooks, as v5.16+ kernels name them (mark_page_accessed
// became a wrapper of folio_mark_accessed; hooking both would count twice).
constexpr const char* kCachestatFunctions[] = {"folio_mark_accessed", "mark_buffer_dirty"};
// The tracepoints only the tracepoint hooks need (v6.11: "mm: add more filemap
// tracepoints"); add_to_page_cache and writeback_dirty_folio serve both.
constexpr const char* kAccessTracepoints[] = {"mm_filemap_get_pages", "mm_filemap_map_pages",
                                              "mm_filemap_fault"};

PagecacheCount SumPagecacheCount(const pc_key& k, std::span<const pc_value> per_cpu) {
  PagecacheCount c{.cgroup_id = k.cgroup_id};
  for (const auto& v : per_cpu) {
    c.read_pages += v.read_pages;
    c.mapped_pages += v.mapped_pages;
    c.added_pages += v.added_pages;
    c.dirtied_pages += v.dirtied_pages;
    c.accessed_pages += v.accessed_pages;
    c.buffers_dirtied += v.buffers_dirtied;
  }
  return c;
}

uint32_t PageShift() {
  const long size = sysconf(_SC_PAGESIZE);
  uint32_t shift = 0;
  while (size > 0 && (1L << shift) < size) ++shift;
  return shift;
}

// The programs of one set of hooks; `twin` ("fentry" or "kprobe") for kCachestat.
std::vector<bpf_program*> ProgramsOf(pagecache_bpf* s, PagecacheHooks hooks,
                                     const std::string& twin) {
  if (hooks == PagecacheHooks::kTracepoints) {
    return {s->progs.kmon_pc_read, s->progs.kmon_pc_map, s->progs.kmon_pc_fault,
            s->progs.kmon_pc_add, s->progs.kmon_pc_dirty};
  }
  if (twin == "fentry") {
    return {s->progs.kmon_pc_add, s->progs.kmon_pc_dirty, s->progs.kmon_pc_mpa_fe,
            s->progs.kmon_pc_mbd_fe};
  }
  return {s->progs.kmon_pc_add, s->progs.kmon_pc_dirty, s->progs.kmon_pc_mpa_kp,
          s->progs.kmon_pc_mbd_kp};
}

// Loads exactly `on` of the object's programs.
void SelectPrograms(const bpf_object* obj, const std::vector<bpf_program*>& on) {
  bpf_program* prog;
  bpf_object__for_each_program(prog, obj) {
    bpf_program__set_autoload(prog, std::find(on.begin(), on.end(), prog) != on.end());
  }
}

std::string HooksName(PagecacheHooks hooks) {
  return hooks == PagecacheHooks::kCachestat ? "cachestat" : "tracepoints";
}

}  // namespace

void ParsePagecacheSection(YamlParser& p, const YamlValue& v, PagecacheConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"hooks",
                [&](const YamlValue& f) {
                  std::string hooks;
                  if (!p.OneOf(f, {"tracepoints", "cachestat"}, &hooks)) return;
                  c->hooks = hooks == "cachestat" ? PagecacheHooks::kCachestat
                                                  : PagecacheHooks::kTracepoints;
                }},
           });
}

std::vector<PagecacheTotal> PagecacheTotals(const std::vector<PagecacheCount>& counts,
                                            PagecacheHooks hooks,
                                            std::map<uint64_t, PagecacheTotal>* held) {
  std::vector<PagecacheTotal> out;
  out.reserve(counts.size());
  for (const PagecacheCount& c : counts) {
    PagecacheTotal t{.cgroup_id = c.cgroup_id};
    if (hooks == PagecacheHooks::kTracepoints) {
      t.accesses = c.read_pages + c.mapped_pages + c.dirtied_pages;
      t.misses = c.added_pages;
    } else {
      // cachestat: total = mark_page_accessed - mark_buffer_dirty, misses =
      // add_to_page_cache - account_page_dirtied (bounded by 0 and the total).
      t.accesses = c.accessed_pages > c.buffers_dirtied ? c.accessed_pages - c.buffers_dirtied : 0;
      t.misses = c.added_pages > c.dirtied_pages ? c.added_pages - c.dirtied_pages : 0;
      t.misses = std::min(t.misses, t.accesses);
    }
    PagecacheTotal& last = (*held)[c.cgroup_id];
    last.cgroup_id = c.cgroup_id;
    last.accesses = t.accesses = std::max(t.accesses, last.accesses);
    last.misses = t.misses = std::max(t.misses, last.misses);
    out.push_back(t);
  }
  return out;
}

std::vector<prometheus::MetricFamily> BuildPagecacheFamilies(
    const std::vector<PagecacheTotal>& totals, WorkloadLabeler* labeler) {
  const std::vector<std::string> label_names{"namespace", "pod", "container"};
  FamilyBuilder accesses("kmon_page_cache_accesses_total",
                         "Pages the workload read, mapped or dirtied through the page cache.",
                         prometheus::MetricType::Counter, label_names);
  FamilyBuilder misses("kmon_page_cache_misses_total",
                       "Pages added to the page cache for the workload (readahead included).",
                       prometheus::MetricType::Counter, label_names);
  // Visit in a fixed order so the same workloads win the series budget every scrape.
  std::vector<const PagecacheTotal*> sorted;
  for (const auto& t : totals) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const PagecacheTotal* a, const PagecacheTotal* b) {
    return a->cgroup_id < b->cgroup_id;
  });
  for (const PagecacheTotal* t : sorted) {
    std::optional<WorkloadLabels> l = labeler->LabelsFor(t->cgroup_id, 2);
    if (!l) continue;  // the cgroup is gone; its entry is dropped by the collector
    std::vector<std::string> values{l->namespace_, l->pod, l->container};
    accesses.AddCounter(values, static_cast<double>(t->accesses));
    misses.AddCounter(values, static_cast<double>(t->misses));
  }
  return {accesses.Build(), misses.Build()};
}

PagecacheCollector::PagecacheCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, pagecache_bpf__create_skeleton,
                   {{"counts", sizeof(pc_key), sizeof(pc_value)}}) {}

PagecacheChoice PagecacheCollector::choice() const {
  std::lock_guard<std::mutex> lock(mu_);
  return choice_;
}

std::string PagecacheCollector::ProbeCachestatTwin(std::string* reason) {
  // The kernel's BTF says whether the functions exist (not inlined, not renamed);
  // whether BPF may attach to them only a load and an attach can tell: a locked-down
  // kernel refuses fentry ("kernel_lockdown(7)"), one without kprobe events refuses
  // the kprobe's attach. Each twin is tried in an object of its own, thrown away
  // after, so a refusal leaves the collector's own object untouched.
  absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
  if (!vmlinux.ok()) {
    *reason = std::string(vmlinux.status().message());
    return "";
  }
  for (const char* fn : kCachestatFunctions) {
    if (!BtfHasType(*vmlinux, fn, BTF_KIND_FUNC)) {
      *reason = absl::StrCat("the kernel has no function ", fn, " to hook");
      return "";
    }
  }
  std::vector<std::string> refusals;
  for (const std::string twin : {"fentry", "kprobe"}) {
    pagecache_bpf* trial = pagecache_bpf__open();
    if (trial == nullptr) {
      refusals.push_back(absl::StrCat(twin, ": open: ", std::strerror(errno)));
      continue;
    }
    SelectPrograms(trial->obj,
                   {twin == "fentry" ? trial->progs.kmon_pc_mpa_fe : trial->progs.kmon_pc_mpa_kp,
                    twin == "fentry" ? trial->progs.kmon_pc_mbd_fe : trial->progs.kmon_pc_mbd_kp});
    // Only the twin itself is on trial, with maps too small to cost anything.
    bpf_map__set_max_entries(trial->maps.counts, 1);
    bpf_map__set_max_entries(trial->maps.watched_cgroups, 1);
    int err = pagecache_bpf__load(trial);
    const char* step = "load";
    if (err == 0) {
      err = pagecache_bpf__attach(trial);
      step = "attach";
    }
    pagecache_bpf__destroy(trial);
    if (err == 0) return twin;
    refusals.push_back(absl::StrCat(twin, ": ", step, ": ", std::strerror(err < 0 ? -err : err)));
  }
  *reason = absl::StrCat("the kernel lets no BPF attach to ", kCachestatFunctions[0], " (",
                         refusals[0], "; ", refusals[1], ")");
  return "";
}

absl::Status PagecacheCollector::BeforeLoad(const CollectorConfig& config) {
  const PagecacheConfig& pc = config.collectors.Get<PagecacheConfig>();
  PagecacheChoice choice{.requested = pc.hooks};
  if (pc.hooks == PagecacheHooks::kCachestat) {
    choice.twin = ProbeCachestatTwin(&choice.reason);
    if (!choice.twin.empty()) choice.hooks = PagecacheHooks::kCachestat;
  }
  if (choice.hooks == PagecacheHooks::kTracepoints) {
    absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
    for (const char* tp : kAccessTracepoints) {
      const std::string type = absl::StrCat("btf_trace_", tp);
      if (vmlinux.ok() && !BtfHasType(*vmlinux, type.c_str(), BTF_KIND_TYPEDEF)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "collector=pagecache: the kernel has no tracepoint filemap:", tp, " (Linux 6.11+)",
            choice.reason.empty() ? "" : "; cachestat hooks: ", choice.reason));
      }
    }
  }
  SelectPrograms(skel_->obj, ProgramsOf(skel_, choice.hooks, choice.twin));
  skel_->rodata->page_shift = PageShift();
  if (pc.hooks == PagecacheHooks::kCachestat && choice.hooks != pc.hooks) {
    LogWarn("cachestat hooks unavailable; counting on tracepoints",
            {{"collector", kName}, {"hooks", "tracepoints"}, {"reason", choice.reason}});
  } else {
    LogInfo("page cache hooks chosen",
            {{"collector", kName},
             {"hooks", HooksName(choice.hooks)},
             {"twin", choice.twin.empty() ? "-" : choice.twin},
             {"reason", absl::StrCat("collectors.pagecache.hooks: ", HooksName(pc.hooks))}});
  }
  held_.clear();  // a new object counts from zero
  choice_ = choice;
  return absl::OkStatus();
}

absl::Status PagecacheCollector::Configure(const CollectorConfig& config) {
  // The hooks are programs, chosen at start; a reload rewrites control maps only.
  const PagecacheHooks want = config.collectors.Get<PagecacheConfig>().hooks;
  if (want != choice_.requested) {
    LogWarn("collectors.pagecache.hooks takes effect when kmon restarts",
            {{"collector", kName}, {"hooks", HooksName(choice_.hooks)}, {"want", HooksName(want)}});
  }
  return absl::OkStatus();
}

absl::Status PagecacheCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<PerCpuHashSource<pc_key, pc_value, PagecacheCount>>(
      bpf_map__fd(skel_->maps.counts), SumPagecacheCount);
  return absl::OkStatus();
}

void PagecacheCollector::DropStale(const std::vector<PagecacheCount>& counts) {
  const int fd = bpf_map__fd(skel_->maps.counts);
  for (const auto& c : counts) {
    if (!labeler().Gone(c.cgroup_id)) continue;
    pc_key k{.cgroup_id = c.cgroup_id};
    bpf_map_delete_elem(fd, &k);
    held_.erase(c.cgroup_id);
  }
}

absl::Status PagecacheCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  std::vector<PagecacheCount> counts;
  absl::Status st = source_->Read(&counts);
  if (!st.ok()) return st;
  auto families =
      BuildPagecacheFamilies(PagecacheTotals(counts, choice_.hooks, &held_), &labeler());
  DropStale(counts);
  for (auto& f : families) out->push_back(std::move(f));
  return absl::OkStatus();
}

}  // namespace kmon
