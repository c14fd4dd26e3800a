#include "collectors/syscalls.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>
#include <seccomp.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <span>
#include <unordered_map>

#include "base/log.h"
#include "bpf/kmon_common.h"
#include "bpf/syscalls.h"
#include "bpf/syscalls.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"

namespace kmon {
namespace {

constexpr char kName[] = "syscalls";

enum class SyscallKind { kNative, kOtherArch, kUnknown };

// libseccomp's tables know every architecture's syscalls; for one this CPU lacks
// it returns a negative pseudo number (__PNR_*), distinct from the plain error.
SyscallKind ResolveSyscall(const std::string& name, int* nr) {
  *nr = seccomp_syscall_resolve_name(name.c_str());
  if (*nr == __NR_SCMP_ERROR) return SyscallKind::kUnknown;
  if (*nr < 0) return SyscallKind::kOtherArch;
  return SyscallKind::kNative;
}

// Syscall names, resolved to this architecture's numbers now so the syscalls
// collector only writes numbers into its control map.
void ParseSyscallList(YamlParser& p, const YamlValue& v, SyscallsConfig* out) {
  std::vector<std::string> names;
  if (!p.StringSet(v, "syscall", &names)) return;
  if (names.empty()) {
    // Unlike ports or devices, empty cannot sensibly mean "all" here: the
    // collector counts a chosen set. Rather than silently counting nothing,
    // say how to turn it off.
    p.Report(v.key, v.line, "must not be empty (set enabled: false to turn the collector off)");
    return;
  }
  std::vector<std::string> native;
  std::vector<int> numbers;
  std::vector<std::string> unavailable;
  const size_t before = p.ProblemCount();
  for (size_t i = 0; i < names.size(); ++i) {
    int nr = 0;
    switch (ResolveSyscall(names[i], &nr)) {
      case SyscallKind::kNative:
        native.push_back(names[i]);
        numbers.push_back(nr);
        break;
      case SyscallKind::kOtherArch:
        unavailable.push_back(names[i]);
        break;
      case SyscallKind::kUnknown: {
        const YAML::Node element = v.node[i];
        const int line = YamlLineOf(element);
        p.Report(absl::StrCat(v.key, "[", i, "]"), line > 0 ? line : v.line,
                 absl::StrCat("unknown syscall ", Quote(names[i])));
        break;
      }
    }
  }
  if (p.ProblemCount() != before) return;
  out->syscalls = std::move(native);
  out->numbers = std::move(numbers);
  out->unavailable = std::move(unavailable);
}

// Syscalls whose kernel function is not sys_<name>: the entry points of the
// architecture's syscall table (arch/x86/entry/syscalls/syscall_64.tbl; arm64 uses
// include/uapi/asm-generic/unistd.h) that differ from the name libseccomp knows.
// The BTF also holds the old variants under the plain names (__x64_sys_uname,
// __x64_sys_stat, __x64_sys_sendfile serve 32-bit tasks), so a guess is not enough.
struct SyscallAlias {
  const char* syscall;
  const char* function;
};
constexpr SyscallAlias kX64Aliases[] = {{"stat", "newstat"},        {"fstat", "newfstat"},
                                        {"lstat", "newlstat"},      {"uname", "newuname"},
                                        {"sendfile", "sendfile64"}, {"umount2", "umount"}};
constexpr SyscallAlias kArm64Aliases[] = {{"fstat", "newfstat"},
                                          {"uname", "newuname"},
                                          {"sendfile", "sendfile64"},
                                          {"umount2", "umount"},
                                          {"fadvise64", "fadvise64_64"}};

// A BTF FUNC taking one argument (the pt_regs of a syscall function): the fexit
// slots read the return value after it.
bool OneArgumentFunction(const btf* types, const std::string& name) {
  if (types == nullptr) return false;
  const int id = btf__find_by_name_kind(types, name.c_str(), BTF_KIND_FUNC);
  if (id <= 0) return false;
  const btf_type* proto = btf__type_by_id(types, btf__type_by_id(types, id)->type);
  return proto != nullptr && btf_is_func_proto(proto) && btf_vlen(proto) == 1;
}

std::string SlotName(size_t i) { return absl::StrCat("kmon_sc_fx", i); }

// The skeleton's link of the program called `name` (the base destroys it with the object).
bpf_link** LinkOf(const bpf_object_skeleton* s, const std::string& name) {
  for (int i = 0; i < s->prog_cnt; ++i) {
    const auto* p = reinterpret_cast<const bpf_prog_skeleton*>(
        reinterpret_cast<const char*>(s->progs) + static_cast<size_t>(i) * s->prog_skel_sz);
    if (name == p->name) return p->link;
  }
  return nullptr;
}

// Loads exactly the slots of `plan`, each on its function with its number.
absl::Status SelectSlots(bpf_object* obj, uint32_t* slot_nr, const FexitPlan* plan) {
  for (size_t i = 0; i < KMON_SYSCALL_FEXIT_SLOTS; ++i) {
    bpf_program* prog = bpf_object__find_program_by_name(obj, SlotName(i).c_str());
    if (prog == nullptr) return absl::InternalError(absl::StrCat("no program ", SlotName(i)));
    const bool used = plan != nullptr && i < plan->functions.size();
    bpf_program__set_autoload(prog, used);
    if (!used) continue;
    const int err = bpf_program__set_attach_target(prog, 0, plan->functions[i].c_str());
    if (err != 0) {
      return absl::NotFoundError(
          absl::StrCat("set target ", plan->functions[i], ": ", std::strerror(-err)));
    }
    slot_nr[i] = static_cast<uint32_t>(plan->numbers[i]);
  }
  return absl::OkStatus();
}

SyscallCount SumSyscallCount(const syscall_key& k, std::span<const syscall_value> per_cpu) {
  SyscallCount c{.cgroup_id = k.cgroup_id, .nr = static_cast<int>(k.nr)};
  for (const auto& v : per_cpu) {
    c.count += v.count;
    c.errors += v.errors;
  }
  return c;
}

}  // namespace

std::unique_ptr<SyscallsConfig> DefaultSyscallsSection() {
  auto s = std::make_unique<SyscallsConfig>();
  std::vector<std::string> names = std::move(s->syscalls);
  s->syscalls.clear();
  // The built-in names are all real syscalls somewhere, so each is either
  // native here or (epoll_wait on arm64) set aside exactly as the parser does.
  for (std::string& name : names) {
    int nr = 0;
    if (ResolveSyscall(name, &nr) == SyscallKind::kNative) {
      s->syscalls.push_back(std::move(name));
      s->numbers.push_back(nr);
    } else {
      s->unavailable.push_back(std::move(name));
    }
  }
  return s;
}

void ParseSyscallsSection(YamlParser& p, const YamlValue& v, SyscallsConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"syscalls", [&](const YamlValue& f) { ParseSyscallList(p, f, c); }},
               {"hook",
                [&](const YamlValue& f) {
                  std::string hook;
                  if (!p.OneOf(f, {"auto", "fexit", "tracepoint"}, &hook)) return;
                  c->hook = hook == "fexit"        ? SyscallHookMode::kFexit
                            : hook == "tracepoint" ? SyscallHookMode::kTracepoint
                                                   : SyscallHookMode::kAuto;
                }},
           });
}

std::string SyscallFunction(std::string_view prefix, std::string_view name) {
  std::span<const SyscallAlias> aliases;
  if (prefix == "__x64_sys_") aliases = kX64Aliases;
  if (prefix == "__arm64_sys_") aliases = kArm64Aliases;
  for (const SyscallAlias& a : aliases) {
    if (name == a.syscall) return std::string(prefix) + a.function;
  }
  return std::string(prefix) + std::string(name);
}

std::string_view SyscallFunctionPrefix() {
#if defined(__x86_64__)
  return "__x64_sys_";
#elif defined(__aarch64__)
  return "__arm64_sys_";
#else
  return "";
#endif
}

FexitPlan PlanFexitSlots(const btf* vmlinux, std::string_view prefix,
                         const std::vector<std::string>& names, const std::vector<int>& numbers,
                         size_t slots) {
  FexitPlan plan;
  if (prefix.empty()) {
    plan.reason = "kmon knows no syscall function names for this CPU architecture";
    return plan;
  }
  if (names.size() != numbers.size()) {
    plan.reason = "internal: syscall names and numbers differ in length";
    return plan;
  }
  if (names.size() > slots) {
    plan.reason =
        absl::StrCat(names.size(), " syscalls chosen, more than the ", slots, " fexit slots");
    return plan;
  }
  for (size_t i = 0; i < names.size(); ++i) {
    std::string fn = SyscallFunction(prefix, names[i]);
    // x86's SYSCALL_DEFINE0 makes __x64_sys_X (and __ia32_sys_X) aliases of the
    // static __do_sys_X(const struct pt_regs *): pahole keeps one name per address,
    // so BTF has only that one (getppid, getpid, sync, fork, ...). Same argument,
    // same return value, and 32-bit tasks' calls count too.
    if (!BtfHasType(vmlinux, fn.c_str(), BTF_KIND_FUNC)) {
      const std::string alias = "__do_sys_" + fn.substr(prefix.size());
      if (OneArgumentFunction(vmlinux, alias)) fn = alias;
    }
    if (!BtfHasType(vmlinux, fn.c_str(), BTF_KIND_FUNC)) {
      plan.reason = absl::StrCat("the kernel has no function ", fn, " for syscall ", names[i]);
      plan.functions.clear();
      plan.numbers.clear();
      return plan;
    }
    plan.functions.push_back(std::move(fn));
    plan.numbers.push_back(numbers[i]);
  }
  plan.ok = true;
  return plan;
}

std::string SyscallHookState::Describe() const {
  if (fexit) {
    return absl::StrCat("hook: fexit on ", hooked.size(), " syscall function",
                        hooked.size() == 1 ? "" : "s", " (", reason, ")");
  }
  return absl::StrCat("hook: tp_btf/sys_exit (", reason, ")");
}

std::vector<prometheus::MetricFamily> BuildSyscallFamilies(const std::vector<SyscallCount>& counts,
                                                           const std::map<int, std::string>& names,
                                                           WorkloadLabeler* labeler) {
  const std::vector<std::string> label_names{"namespace", "pod", "container", "syscall"};
  FamilyBuilder calls("kmon_syscalls_total", "Syscalls made, by workload and syscall.",
                      prometheus::MetricType::Counter, label_names);
  FamilyBuilder errors("kmon_syscall_errors_total",
                       "Syscalls that returned an error (-4095..-1), by workload and syscall.",
                       prometheus::MetricType::Counter, label_names);

  // Each workload costs two series per syscall it made; visit in a fixed order so
  // the same workloads win the budget on every scrape.
  std::vector<const SyscallCount*> sorted;
  std::unordered_map<uint64_t, int64_t> series_per_cgroup;
  for (const auto& c : counts) {
    if (!names.count(c.nr)) continue;
    sorted.push_back(&c);
    series_per_cgroup[c.cgroup_id] += 2;
  }
  std::sort(sorted.begin(), sorted.end(), [](const SyscallCount* a, const SyscallCount* b) {
    return std::tie(a->cgroup_id, a->nr) < std::tie(b->cgroup_id, b->nr);
  });
  for (const SyscallCount* c : sorted) {
    const WorkloadLabels* l = labeler->Labels(c->cgroup_id, series_per_cgroup[c->cgroup_id]);
    if (l == nullptr) continue;  // the cgroup is gone; its entries are dropped by the collector
    const LabelValues values{l->namespace_, l->pod, l->container, names.at(c->nr)};
    calls.AddCounter(values, static_cast<double>(c->count));
    errors.AddCounter(values, static_cast<double>(c->errors));
  }
  return BuildAll({&calls, &errors});
}

SyscallsCollector::SyscallsCollector(const CollectorDeps& deps)
    : BpfCollector(kName, deps, &skel_, syscalls_bpf__create_skeleton,
                   {{"counts", sizeof(syscall_key), sizeof(syscall_value)},
                    {"sc_config", sizeof(uint32_t), sizeof(syscall_config)},
                    {"sc_cache", sizeof(uint32_t), sizeof(syscall_cache)}}) {}

absl::Status SyscallsCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<PerCpuHashSource<syscall_key, syscall_value, SyscallCount>>(
      bpf_map__fd(skel_->maps.counts), SumSyscallCount);
  // Counts may wait in the per-CPU cache once the flush is known to run on every CPU.
  return cache_.Start(skel_->progs.kmon_sc_flush, [this](bool on) {
    config_.cache = on ? 1u : 0u;
    return WriteConfig();
  });
}

absl::Status SyscallsCollector::WriteConfig() {
  return WriteControlEntry(kName, skel_->maps.sc_config, &config_);
}

void SyscallsCollector::NextGeneration() {
  ++config_.generation;
  absl::Status st = WriteConfig();
  if (!st.ok()) LogWarn("syscalls: new cache generation", {{"err", st.ToString()}});
}

SyscallHookState SyscallsCollector::hook() const {
  std::lock_guard<std::mutex> lock(mu_);
  return hook_;
}

absl::Status SyscallsCollector::ProbeFexit(const FexitPlan& plan) {
  // The BTF says the functions exist; whether BPF may attach to them only a load
  // and an attach can tell (lockdown refuses the load, a kernel without
  // trampolines the attach). A refusal is an answer here, not a problem: libbpf's
  // warnings go to the debug log and the caller says it in one line.
  LibbpfWarningsAsDebug quiet;
  syscalls_bpf* trial = syscalls_bpf__open();
  if (trial == nullptr) return absl::InternalError(absl::StrCat("open: ", std::strerror(errno)));
  bpf_program__set_autoload(trial->progs.kmon_sys_exit, false);
  bpf_program__set_autoload(trial->progs.kmon_sc_flush, false);
  absl::Status st = SelectSlots(trial->obj, trial->rodata->slot_nr, &plan);
  // Only the slots are on trial, with maps too small to cost anything.
  bpf_map__set_max_entries(trial->maps.counts, 1);
  bpf_map__set_max_entries(trial->maps.watched_cgroups, 1);
  int err = 0;
  const char* step = "load";
  if (st.ok()) err = syscalls_bpf__load(trial);
  if (st.ok() && err == 0) {
    step = "attach";
    err = syscalls_bpf__attach(trial);
  }
  syscalls_bpf__destroy(trial);
  if (!st.ok()) return st;
  if (err != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat(step, ": ", std::strerror(err < 0 ? -err : err)));
  }
  return absl::OkStatus();
}

absl::Status SyscallsCollector::BeforeLoad(const CollectorConfig& config) {
  const SyscallsConfig& sc = config.collectors.Get<SyscallsConfig>();
  config_ = {};  // a new object: its cache is off until AfterAttach's first flush
  requested_ = sc.hook;
  FexitPlan plan;
  if (sc.hook == SyscallHookMode::kTracepoint) {
    plan.reason = "collectors.syscalls.hook: tracepoint";
  } else {
    absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
    if (vmlinux.ok()) {
      plan = PlanFexitSlots(*vmlinux, SyscallFunctionPrefix(), sc.syscalls, sc.numbers,
                            KMON_SYSCALL_FEXIT_SLOTS);
    } else {
      plan.reason = std::string(vmlinux.status().message());
    }
    if (plan.ok) {
      // The plan holds the names now: the parsed BTF (5.5 MB) goes before the trial
      // object's libbpf parses its own copy.
      Features().Release();
      absl::Status st = ProbeFexit(plan);
      if (!st.ok()) {
        plan.ok = false;
        plan.reason = absl::StrCat("fexit refused by this kernel: ", st.message());
      }
    }
    if (!plan.ok && sc.hook == SyscallHookMode::kFexit) {
      return absl::FailedPreconditionError(
          absl::StrCat("collector=syscalls: collectors.syscalls.hook is fexit, but ", plan.reason));
    }
  }
  absl::Status st = SelectSlots(skel_->obj, skel_->rodata->slot_nr, plan.ok ? &plan : nullptr);
  if (!st.ok()) return absl::InternalError(absl::StrCat("collector=syscalls: ", st.message()));
  // The tracepoint program loads either way, attached only without fexit: a reload
  // that asks for a syscall no slot hooks switches to it without a new object.
  bpf_program__set_autoattach(skel_->progs.kmon_sys_exit, !plan.ok);
  // Run from user space on each CPU before every read (cache_), never attached.
  bpf_program__set_autoattach(skel_->progs.kmon_sc_flush, false);
  SyscallHookState state;
  state.fexit = plan.ok;
  state.hooked = plan.numbers;
  state.reason = !plan.ok ? plan.reason
                 : sc.hook == SyscallHookMode::kFexit
                     ? "collectors.syscalls.hook: fexit"
                     : "the kernel lets BPF attach to each chosen syscall function";
  const std::string detail = state.Describe();
  if (!plan.ok && sc.hook == SyscallHookMode::kAuto) {
    // One line for the whole probe: this kernel's every syscall now pays.
    LogWarn("syscalls: counting on tp_btf/sys_exit",
            {{"collector", kName}, {"hook", "tp_btf/sys_exit"}, {"reason", plan.reason}});
  } else {
    LogInfo("syscalls hook chosen", {{"collector", kName},
                                     {"hook", plan.ok ? "fexit" : "tp_btf/sys_exit"},
                                     {"reason", state.reason}});
  }
  hook_ = std::move(state);
  SetDetail(detail);
  return absl::OkStatus();
}

absl::Status SyscallsCollector::SwitchToTracepoint(const std::vector<int>& numbers,
                                                   const std::string& why) {
  // Exact through the switch: the tracepoint counts only numbers marked for it, so
  // it is attached first, then each number flips from fexit to it (one atomic
  // update each), then the fexit links go.
  bpf_link* link = bpf_program__attach(skel_->progs.kmon_sys_exit);
  if (link == nullptr) return BpfError(kName, "attach tp_btf/sys_exit", errno);
  skel_->links.kmon_sys_exit = link;
  absl::Status st = WriteSyscallSet(numbers, KMON_SYSCALL_BY_TRACEPOINT);
  if (!st.ok()) return st;
  for (size_t i = 0; i < KMON_SYSCALL_FEXIT_SLOTS; ++i) {
    bpf_link** l = LinkOf(skel_->skeleton, SlotName(i));
    if (l == nullptr || *l == nullptr) continue;
    bpf_link__destroy(*l);
    *l = nullptr;
  }
  hook_ = SyscallHookState{.fexit = false, .reason = why};
  SetDetail(hook_.Describe());
  LogWarn("syscalls: switched to tp_btf/sys_exit", {{"collector", kName}, {"reason", why}});
  return absl::OkStatus();
}

absl::Status SyscallsCollector::WriteSyscallSet(const std::vector<int>& numbers, uint8_t hook) {
  // Rewrite the whole array: mark the wanted numbers, clear the rest. Each update is
  // atomic per slot, so a syscall kept across a reload is never missed.
  int fd = bpf_map__fd(skel_->maps.syscall_set);
  std::vector<uint8_t> want(KMON_MAX_SYSCALL_NR, KMON_SYSCALL_OFF);
  for (int nr : numbers) {
    if (nr < 0 || nr >= KMON_MAX_SYSCALL_NR) {
      return absl::InvalidArgumentError(
          absl::StrCat("collector=syscalls: syscall number ", nr, " is beyond the map"));
    }
    want[nr] = hook;
  }
  for (uint32_t i = 0; i < KMON_MAX_SYSCALL_NR; ++i) {
    if (bpf_map_update_elem(fd, &i, &want[i], BPF_ANY) != 0) {
      return BpfError(kName, "map=syscall_set: update", errno);
    }
  }
  return absl::OkStatus();
}

absl::Status SyscallsCollector::Configure(const CollectorConfig& config) {
  const SyscallsConfig& sc = config.collectors.Get<SyscallsConfig>();
  for (const auto& name : sc.unavailable) {
    LogWarn("syscall does not exist on this architecture; not counted",
            {{"collector", kName}, {"syscall", name}});
  }
  if (sc.hook != requested_) {
    LogWarn("collectors.syscalls.hook takes effect when the collector starts again",
            {{"collector", kName}, {"hook", hook_.fexit ? "fexit" : "tp_btf/sys_exit"}});
  }
  absl::Status st;
  if (hook_.fexit) {
    // The slots were given their functions at load; a syscall none hooks can only
    // be counted by the tracepoint, which then counts them all.
    std::string unhooked;
    for (size_t i = 0; i < sc.numbers.size() && unhooked.empty(); ++i) {
      const auto& h = hook_.hooked;
      if (std::find(h.begin(), h.end(), sc.numbers[i]) == h.end()) unhooked = sc.syscalls[i];
    }
    st = unhooked.empty()
             ? WriteSyscallSet(sc.numbers, KMON_SYSCALL_BY_FEXIT)
             : SwitchToTracepoint(sc.numbers, absl::StrCat("a reload chose ", unhooked,
                                                           ", which no fexit slot hooks; fexit "
                                                           "again when the collector restarts"));
  } else {
    st = WriteSyscallSet(sc.numbers, KMON_SYSCALL_BY_TRACEPOINT);
  }
  if (!st.ok()) return st;
  names_.clear();
  for (size_t i = 0; i < sc.numbers.size() && i < sc.syscalls.size(); ++i) {
    names_[sc.numbers[i]] = sc.syscalls[i];
  }
  return absl::OkStatus();
}

bool SyscallsCollector::DropStale(const std::vector<SyscallCount>& counts) {
  int fd = bpf_map__fd(skel_->maps.counts);
  bool deleted = false;
  for (const auto& c : counts) {
    if (names_.count(c.nr) && !labeler().Gone(c.cgroup_id)) continue;
    syscall_key k{};
    k.cgroup_id = c.cgroup_id;
    k.nr = static_cast<uint32_t>(c.nr);
    deleted = bpf_map_delete_elem(fd, &k) == 0 || deleted;
  }
  return deleted;
}

absl::Status SyscallsCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  cache_.Flush();
  std::vector<SyscallCount> counts;
  absl::Status st = source_->Read(&counts);
  if (!st.ok()) return st;
  auto families = BuildSyscallFamilies(counts, names_, &labeler());
  // A way may hold a deleted key: were it to come back (a syscall chosen again), its
  // counts would wait in the way with no entry to go to.
  if (DropStale(counts)) NextGeneration();
  for (auto& f : families) out->push_back(std::move(f));
  return absl::OkStatus();
}

}  // namespace kmon
