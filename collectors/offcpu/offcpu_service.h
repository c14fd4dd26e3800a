// /debug/offcpu: the off-CPU profiler behind its HTTP handler, and the thread that
// reads the kernel's aggregates every second between queries. The cpu collector
// creates it over its BPF maps (see collectors/cpu.h).
#pragma once

#include <absl/status/status.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "base/http_types.h"
#include "collectors/offcpu/frame_resolver.h"
#include "collectors/offcpu/offcpu_profiler.h"
#include "collectors/offcpu/on_demand.h"
#include "provider/workload.h"

namespace kmon {

/// Parses a /debug/offcpu request into a query and a format ("folded", "svg",
/// "pprof"); an error names the bad parameter.
absl::Status ParseOffCpuRequest(const HttpRequest& req, OffCpuQuery* query, std::string* format);

/// Renders a result in `format`. Never throws.
HttpResponse RenderOffCpuResponse(const OffCpuResult& result, const OffCpuQuery& query,
                                  const std::string& format);

/// Frames named from this machine's /proc, the ELF files processes map, and the
/// kernel symbols every collector shares; when those are unavailable a warning says
/// so and kernel frames are "[unknown]".
std::unique_ptr<FrameResolver> NewProcFrameResolver();

/// Owns the profiler. The handler shares its state with the refresh thread and
/// outlives the service (the server keeps it): after Stop() it answers 503.
///
/// With `stacks: on_demand` a request switches capture on (CaptureSwitch), waits
/// out its window (`seconds`, default kDefaultWindow), switches capture off and
/// answers with what the window saw; the kernel's aggregates and stack map are
/// emptied before and after, so they stay empty while nobody asks. One window at a
/// time: a request arriving during one is answered 429 with Retry-After. With
/// `always` a request looks back over the last `seconds` (default: since start);
/// with `off` it is answered 503.
class OffCpuService {
 public:
  /// How often the off-CPU aggregates are read between queries (`always`), and
  /// during an on-demand window: new processes get their maps captured within this,
  /// so a process must live about this long after its first recorded episode for
  /// its user frames to be named.
  static constexpr std::chrono::seconds kRefreshPeriod{1};
  static constexpr std::chrono::milliseconds kWindowRefreshPeriod{250};
  /// An on-demand window without `seconds=`, as Go's /debug/pprof/profile.
  static constexpr std::chrono::seconds kDefaultWindow{30};

  /// Switches stack capture in the kernel on or off.
  using CaptureSwitch = std::function<absl::Status(bool on)>;

  OffCpuService(std::unique_ptr<OffCpuStackSource> stacks, std::unique_ptr<FrameResolver> frames,
                WorkloadResolver* workloads, CaptureSwitch capture = nullptr);
  ~OffCpuService();
  OffCpuService(const OffCpuService&) = delete;
  OffCpuService& operator=(const OffCpuService&) = delete;

  /// Starts the refresh thread.
  void Start();
  /// The handler for /debug/offcpu.
  HttpHandler Handler() const;
  /// collectors.cpu.stacks. Off: nothing is refreshed and queries get a 503. A change
  /// cuts an open window short (its request gets a 503); a change to `always`
  /// starts the look-back afresh.
  void SetStacks(OffCpuStacks mode);
  /// Ends an open on-demand window now: its request answers with what it has
  /// (for tests, which would otherwise wait out the 5 s minimum).
  void EndWindowNow();
  /// Exited processes' stacks with no room in user space (the profiler's
  /// RetiredDropped(), as of the last refresh).
  uint64_t StoreFull() const;
  /// Drops the profiler (the handler answers 503 from now on) and joins the thread.
  void Stop();

 private:
  struct Host;
  static HttpResponse Serve(const std::shared_ptr<Host>& host, const HttpRequest& req);
  static HttpResponse ServeOnDemand(const std::shared_ptr<Host>& host, const OffCpuQuery& query,
                                    const std::string& format);
  static void RefreshLoop(std::shared_ptr<Host> host);

  std::shared_ptr<Host> host_;
  std::thread refresh_thread_;
};

}  // namespace kmon
