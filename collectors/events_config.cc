// collectors.events: the names of the events to count, checked against this
// kernel's tracefs.
//
// Why tracefs and not the kernel BTF's btf_trace_<name> typedefs: "category:name"
// is tracefs's namespace (what `perf list` and bpftrace show, the directory
// /sys/kernel/tracing/events/<category>/<name>). BTF knows a raw tracepoint only by
// its name, so it could not tell "sched:sched_process_exec" from
// "foo:sched_process_exec", and it lacks the events that are not raw tracepoints
// (syscalls:sys_enter_openat), which kmon still hooks (through perf-event links).
// The price: tracefs wants root. kmon runs as root; --check-config run by another
// user reports that it cannot check the names rather than pass them unchecked.
#include <absl/strings/str_cat.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "base/log.h"
#include "bpf/events.h"
#include "collectors/events.h"

namespace kmon {
namespace {

bool IsWordChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

bool IsWord(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsWordChar(c)) return false;
  }
  return true;
}

constexpr char kTracefs[] = "/sys/kernel/tracing";
constexpr char kDebugfsTracing[] = "/sys/kernel/debug/tracing";

bool IsDirectory(const std::string& path, int* err) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    *err = errno;
    return false;
  }
  *err = S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  return *err == 0;
}

// The running kernel's tracefs. Found once: /sys/kernel/tracing, else the old
// debugfs place; when neither has events, tracefs is mounted at
// /sys/kernel/tracing as scripts/test.sh does (kmon is root; a host booted
// without it mounted is common on minimal images).
class TracefsCatalog : public TracepointCatalog {
 public:
  absl::StatusOr<bool> Has(const TracepointName& tp) override {
    absl::StatusOr<std::string> events = EventsDir();
    if (!events.ok()) return events.status();
    int err = 0;
    if (IsDirectory(absl::StrCat(*events, "/", tp.category, "/", tp.name), &err)) return true;
    if (err == ENOENT || err == ENOTDIR) return false;
    return absl::FailedPreconditionError(
        absl::StrCat("cannot check tracepoint names in ", *events, ": ", std::strerror(err)));
  }

 private:
  absl::StatusOr<std::string> EventsDir() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!events_.empty()) return events_;
    int err = 0;
    for (const char* root : {kTracefs, kDebugfsTracing}) {
      if (IsDirectory(absl::StrCat(root, "/events"), &err))
        return events_ = absl::StrCat(root, "/events");
      if (err == EACCES) break;  // there, but not for us: mounting will not help
    }
    if (err != EACCES && !mount_tried_) {
      mount_tried_ = true;
      if (mount("tracefs", kTracefs, "tracefs", 0, nullptr) == 0) {
        LogInfo("mounted tracefs to check tracepoint names", {{"path", kTracefs}});
        if (IsDirectory(absl::StrCat(kTracefs, "/events"), &err)) {
          return events_ = absl::StrCat(kTracefs, "/events");
        }
      } else {
        err = errno;
      }
    }
    if (err == EACCES) {
      return absl::PermissionDeniedError(absl::StrCat("cannot check tracepoint names: ", kTracefs,
                                                      "/events: ", std::strerror(err),
                                                      " (tracefs is root's; run as root)"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot check tracepoint names: no tracefs at ", kTracefs, " (", std::strerror(err), ")"));
  }

  std::mutex mu_;
  std::string events_;  // found: "<tracefs>/events"
  bool mount_tried_ = false;
};

std::atomic<TracepointCatalog*> g_catalog{nullptr};

void ParseTracepoints(YamlParser& p, const YamlValue& v, std::vector<std::string>* out) {
  std::vector<std::string> names;
  if (!p.StringSet(v, "tracepoint", &names)) return;
  const size_t before = p.ProblemCount();
  p.List(v, [&](const YamlValue& e, size_t i) {
    const std::optional<TracepointName> tp = SplitTracepoint(names[i]);
    if (!tp) {
      p.Report(e.key, e.line,
               absl::StrCat("malformed tracepoint ", Quote(names[i]),
                            ": want \"category:name\", e.g. \"sched:sched_process_exec\""));
      return;
    }
    absl::StatusOr<bool> has = Tracepoints().Has(*tp);
    if (!has.ok()) {
      p.Report(e.key, e.line, std::string(has.status().message()));
    } else if (!*has) {
      p.Report(e.key, e.line, absl::StrCat("no tracepoint ", Quote(names[i]), " in this kernel"));
    }
  });
  if (p.ProblemCount() == before) *out = std::move(names);
}

void ParseFunctions(YamlParser& p, const YamlValue& v, std::vector<std::string>* out) {
  std::vector<std::string> names;
  if (!p.StringSet(v, "function", &names)) return;
  const size_t before = p.ProblemCount();
  // Only the spelling is checked: a kernel function is no ABI (one kernel inlines
  // what another exports), so one that this kernel lacks or refuses to hook is
  // reported by the collector (kmon_kernel_event_attached 0), not a config error
  // that would stop a fleet-wide config at the first odd kernel.
  p.List(v, [&](const YamlValue& e, size_t i) {
    if (!IsFunctionName(names[i])) {
      p.Report(e.key, e.line,
               absl::StrCat("malformed function name ", Quote(names[i]),
                            ": want a kernel function's name, e.g. \"tcp_connect\""));
    }
  });
  if (p.ProblemCount() == before) *out = std::move(names);
}

}  // namespace

std::optional<TracepointName> SplitTracepoint(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view category = text.substr(0, colon), name = text.substr(colon + 1);
  if (!IsWord(category) || !IsWord(name)) return std::nullopt;
  return TracepointName{std::string(category), std::string(name)};
}

bool IsFunctionName(std::string_view text) {
  return IsWord(text) && !(text[0] >= '0' && text[0] <= '9');
}

TracepointCatalog& Tracepoints() {
  if (TracepointCatalog* c = g_catalog.load()) return *c;
  static TracefsCatalog tracefs;
  return tracefs;
}

ScopedTracepointCatalog::ScopedTracepointCatalog(TracepointCatalog* catalog)
    : previous_(g_catalog.exchange(catalog)) {}

ScopedTracepointCatalog::~ScopedTracepointCatalog() { g_catalog.store(previous_); }

void ParseEventsSection(YamlParser& p, const YamlValue& v, EventsConfig* c) {
  p.Map(v,
        {
            {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
            {"tracepoints", [&](const YamlValue& f) { ParseTracepoints(p, f, &c->tracepoints); }},
            {"functions", [&](const YamlValue& f) { ParseFunctions(p, f, &c->functions); }},
        });
  const size_t n = c->tracepoints.size() + c->functions.size();
  if (n > KMON_EVENTS_MAX) {
    p.Report(v.key, v.line,
             absl::StrCat("names ", n, " events (tracepoints and functions together), at most ",
                          KMON_EVENTS_MAX));
  }
}

}  // namespace kmon
