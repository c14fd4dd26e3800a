#include "collectors/offcpu/offcpu_service.h"

#include <absl/status/statusor.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <utility>
#include <vector>

#include "base/http_params.h"
#include "base/log.h"
#include "collectors/kernel_symbols.h"
#include "collectors/offcpu/offcpu_render.h"
#include "collectors/offcpu/symbolizer.h"

namespace kmon {
namespace {

// The collector that serves /debug/offcpu, as logs name it.
constexpr char kCollector[] = "cpu";

HttpResponse Unavailable(const std::string& why) {
  HttpResponse resp;
  resp.status = 503;
  resp.body = why + "\n";
  return resp;
}

}  // namespace

absl::Status ParseOffCpuRequest(const HttpRequest& req, OffCpuQuery* query, std::string* format) {
  *format = "folded";
  for (const auto& [k, v] : req.query) {
    if (k == "format") {
      if (v != "folded" && v != "svg" && v != "pprof") {
        return absl::InvalidArgumentError(
            absl::StrCat("format: want folded, svg or pprof, got \"", v, "\""));
      }
      *format = v;
    } else if (k == "namespace") {
      query->namespace_ = v;
    } else if (k == "pod") {
      query->pod = v;
    } else if (k == "container") {
      query->container = v;
    } else if (k == "seconds") {
      // Windows are served from snapshots kSnapshotPeriod apart, kept for kRetention:
      // a window off that grid, or older, could only be answered as some other window.
      constexpr int64_t kStep = OffCpuProfiler::kSnapshotPeriod.count();
      absl::StatusOr<int64_t> s =
          ParseWholeNumberParam(k, v, {kStep, OffCpuProfiler::kRetention.count(), kStep});
      if (!s.ok()) return s.status();
      query->window = std::chrono::seconds(*s);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown parameter \"", k, "\" (known: format, namespace, pod, container, seconds)"));
    }
  }
  return absl::OkStatus();
}

HttpResponse RenderOffCpuResponse(const OffCpuResult& result, const OffCpuQuery& query,
                                  const std::string& format) {
  HttpResponse resp;
  try {
    const double covered = std::chrono::duration<double>(result.covered).count();
    resp.headers["X-Kmon-Window-Seconds"] = absl::StrCat(std::llround(covered));
    if (format == "svg") {
      std::vector<std::string> what;
      if (query.namespace_) what.push_back(absl::StrCat("namespace=", *query.namespace_));
      if (query.pod) what.push_back(absl::StrCat("pod=", *query.pod));
      if (query.container) what.push_back(absl::StrCat("container=", *query.container));
      const char* span = result.on_demand ? "profiled for "
                         : query.window   ? "last "
                                          : "since start, ";
      what.push_back(absl::StrCat(span, std::llround(covered),
                                  " s; width: time blocked (switch-out to wakeup)"));
      resp.content_type = "image/svg+xml";
      resp.body =
          RenderFlameGraphSvg(result.stacks, "Off-CPU Time Flame Graph", absl::StrJoin(what, ", "));
    } else if (format == "pprof") {
      const auto now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
      absl::StatusOr<std::string> body =
          RenderPprof(result.stacks, now_ns - result.covered.count(), result.covered.count());
      if (!body.ok()) {
        resp.status = 500;
        resp.body = absl::StrCat(body.status().ToString(), "\n");
        return resp;
      }
      resp.content_type = "application/octet-stream";
      resp.headers["Content-Disposition"] = "attachment; filename=\"offcpu.pb.gz\"";
      resp.body = std::move(*body);
    } else {
      resp.body = RenderFolded(result.stacks);
    }
  } catch (const std::exception& e) {
    resp = HttpResponse{};
    resp.status = 500;
    resp.body = absl::StrCat("rendering failed: ", e.what(), "\n");
  }
  return resp;
}

std::unique_ptr<FrameResolver> NewProcFrameResolver() {
  // Off-CPU stacks: kernel frames need /proc/kallsyms (the table drops shares); without
  // it they are "[unknown]". The symbolizer holds the shared table and asks for it
  // again at each kernel frame, so a table re-read after misses (modules loaded
  // since) replaces this one.
  absl::Status why;
  std::shared_ptr<const KernelSymbols> ksyms = KernelSymbols::Shared(&why);
  if (ksyms == nullptr) {
    LogWarn("kernel symbols unavailable; kernel frames will be [unknown]",
            {{"collector", kCollector}, {"err", why.ToString()}});
  }
  auto symbolizer = std::make_unique<Symbolizer>(
      "/proc", Symbolizer::KernelSource([] { return KernelSymbols::Shared(); }));
  return std::make_unique<ProcFrameResolver>(std::move(symbolizer));
}

// What the HTTP handler and the refresh thread share.
struct OffCpuService::Host {
  std::mutex mu;
  std::condition_variable wake;
  bool stopping = false;
  OffCpuStacks mode = OffCpuStacks::kOnDemand;
  std::unique_ptr<OffCpuProfiler> profiler;  // null once stopped
  std::atomic<uint64_t> store_full{0};       // the profiler's RetiredDropped()
  CaptureSwitch capture;                     // null once stopped
  OnDemandWindow window;
  bool cut = false;  // the open window is to end now

  // Whether the refresh thread has anything to read.
  bool Refreshing() const { return profiler && (mode == OffCpuStacks::kAlways || window.open()); }
};

OffCpuService::OffCpuService(std::unique_ptr<OffCpuStackSource> stacks,
                             std::unique_ptr<FrameResolver> frames, WorkloadResolver* workloads,
                             CaptureSwitch capture)
    : host_(std::make_shared<Host>()) {
  host_->profiler = std::make_unique<OffCpuProfiler>(std::move(stacks), std::move(frames),
                                                     workloads, std::chrono::steady_clock::now());
  host_->capture = std::move(capture);
}

OffCpuService::~OffCpuService() { Stop(); }

void OffCpuService::Start() {
  if (!refresh_thread_.joinable()) refresh_thread_ = std::thread(RefreshLoop, host_);
}

HttpHandler OffCpuService::Handler() const {
  std::shared_ptr<Host> host = host_;
  return [host](const HttpRequest& req) { return Serve(host, req); };
}

void OffCpuService::SetStacks(OffCpuStacks mode) {
  {
    std::lock_guard<std::mutex> lock(host_->mu);
    if (mode == host_->mode) return;
    host_->mode = mode;
    // The look-back of `always` starts now, with nothing from before.
    if (mode == OffCpuStacks::kAlways && host_->profiler && !host_->window.open()) {
      host_->profiler->Reset(std::chrono::steady_clock::now());
    }
  }
  host_->wake.notify_all();  // an open window's request sees the change
}

void OffCpuService::EndWindowNow() {
  {
    std::lock_guard<std::mutex> lock(host_->mu);
    if (host_->window.open()) host_->cut = true;
  }
  host_->wake.notify_all();
}

uint64_t OffCpuService::StoreFull() const { return host_->store_full.load(); }

void OffCpuService::Stop() {
  {
    std::lock_guard<std::mutex> lock(host_->mu);
    host_->stopping = true;
    // An open window's request wakes to a stopped service: capture goes off here,
    // while the collector's maps still exist (a failure to write them is moot: the
    // object goes next).
    if (host_->window.open() && host_->capture) host_->capture(false).IgnoreError();
    host_->capture = nullptr;
    host_->profiler.reset();  // the handler answers 503 from now on
  }
  host_->wake.notify_all();
  if (refresh_thread_.joinable()) refresh_thread_.join();
}

void OffCpuService::RefreshLoop(std::shared_ptr<Host> host) {
  std::unique_lock<std::mutex> lock(host->mu);
  bool warned = false;
  while (!host->stopping) {
    if (host->Refreshing()) {
      try {
        absl::Status st = host->profiler->Refresh(std::chrono::steady_clock::now());
        host->store_full = host->profiler->RetiredDropped();
        if (!st.ok() && !warned) {
          LogWarn("reading off-CPU stacks failed",
                  {{"collector", kCollector}, {"err", st.ToString()}});
        }
        warned = !st.ok();
      } catch (const std::exception& e) {
        LogError("off-CPU refresh failed", {{"collector", kCollector}, {"err", e.what()}});
      }
    }
    // Faster during a window: its processes' maps are read while they live. A window
    // opening wakes the thread.
    const bool window = host->window.open();
    host->wake.wait_for(
        lock,
        window ? std::chrono::duration_cast<std::chrono::milliseconds>(kWindowRefreshPeriod)
               : std::chrono::milliseconds(kRefreshPeriod),
        [&] { return host->stopping || host->window.open() != window; });
  }
}

HttpResponse OffCpuService::ServeOnDemand(const std::shared_ptr<Host>& host,
                                          const OffCpuQuery& query, const std::string& format) {
  using Clock = std::chrono::steady_clock;
  absl::StatusOr<OffCpuResult> result;
  {
    std::unique_lock<std::mutex> lock(host->mu);
    if (!host->profiler || !host->capture) return Unavailable("the cpu collector is not running");
    if (host->mode != OffCpuStacks::kOnDemand) return Unavailable("collectors.cpu.stacks changed");
    const Clock::duration length = query.window.value_or(kDefaultWindow);
    Clock::duration left{};
    if (!host->window.Begin(Clock::now(), length, &left)) {
      const int64_t secs = std::chrono::ceil<std::chrono::seconds>(left).count();
      HttpResponse resp;
      resp.status = 429;
      resp.headers["Retry-After"] = absl::StrCat(std::max<int64_t>(1, secs));
      resp.body = absl::StrCat("an off-CPU profile is being taken (", secs,
                               " s left): one at a time, try again then\n");
      return resp;
    }
    host->cut = false;
    // Empty before capture goes on: the window sees only its own stacks.
    host->profiler->Reset(Clock::now());
    absl::Status st = host->capture(true);
    if (st.ok()) {
      host->wake.notify_all();  // the refresh thread reads faster now
      host->wake.wait_until(lock, host->window.deadline(), [&] {
        return host->stopping || host->cut || host->mode != OffCpuStacks::kOnDemand;
      });
      if (host->capture) st = host->capture(false);
    }
    const bool cut_short =
        host->stopping || !host->profiler || host->mode != OffCpuStacks::kOnDemand;
    if (st.ok() && !cut_short) {
      result = host->profiler->Query(
          OffCpuQuery{query.namespace_, query.pod, query.container, std::nullopt}, Clock::now());
    }
    // Emptied again: nothing is kept while nobody asks (`always` keeps what it has).
    if (host->profiler && host->mode != OffCpuStacks::kAlways) {
      host->profiler->Reset(Clock::now());
    }
    host->window.End();
    host->cut = false;
    host->wake.notify_all();
    if (!st.ok()) {
      HttpResponse resp;
      resp.status = 500;
      resp.body = absl::StrCat("switching off-CPU stacks failed: ", st.ToString(), "\n");
      return resp;
    }
    if (cut_short) {
      return Unavailable(host->stopping || !host->profiler
                             ? "the cpu collector stopped during the profile"
                             : "collectors.cpu.stacks changed during the profile");
    }
  }
  if (!result.ok()) {
    HttpResponse resp;
    resp.status = 500;
    resp.body = absl::StrCat(result.status().ToString(), "\n");
    return resp;
  }
  result->on_demand = true;
  return RenderOffCpuResponse(*result, query, format);
}

HttpResponse OffCpuService::Serve(const std::shared_ptr<Host>& host, const HttpRequest& req) {
  HttpResponse resp;
  try {
    if (req.method != "GET" && req.method != "HEAD") {
      resp.status = 405;
      resp.headers["Allow"] = "GET, HEAD";
      resp.body = "Method Not Allowed\n";
      return resp;
    }
    OffCpuQuery query;
    std::string format;
    absl::Status st = ParseOffCpuRequest(req, &query, &format);
    if (!st.ok()) {
      resp.status = 400;
      resp.body = absl::StrCat(st.message(), "\n");
      return resp;
    }
    // The query's result is a copy taken under the lock; rendering it (an SVG or a
    // pprof of thousands of stacks) happens after, without holding up the refresh
    // thread or another request.
    absl::StatusOr<OffCpuResult> result;
    {
      std::unique_lock<std::mutex> lock(host->mu);
      if (!host->profiler) return Unavailable("the cpu collector is not running");
      if (host->mode == OffCpuStacks::kOff) {
        return Unavailable(
            "off-CPU stacks are off (collectors.cpu.stacks: off); set it to on_demand or always");
      }
      if (host->mode == OffCpuStacks::kOnDemand) {
        lock.unlock();
        return ServeOnDemand(host, query, format);
      }
      result = host->profiler->Query(query, std::chrono::steady_clock::now());
    }
    if (!result.ok()) {
      resp.status = 500;
      resp.body = absl::StrCat(result.status().ToString(), "\n");
      return resp;
    }
    return RenderOffCpuResponse(*result, query, format);
  } catch (const std::exception& e) {
    resp = HttpResponse{};
    resp.status = 500;
    resp.body = absl::StrCat("off-CPU query failed: ", e.what(), "\n");
    return resp;
  }
}

}  // namespace kmon
