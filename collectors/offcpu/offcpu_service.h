// /debug/offcpu: the off-CPU profiler behind its HTTP handler, and the thread that
// reads the kernel's aggregates every second between queries. The cpu collector
// creates it over its BPF maps (see collectors/cpu.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <absl/status/status.h>

#include "base/http_types.h"
#include "collectors/offcpu/frame_resolver.h"
#include "collectors/offcpu/offcpu_profiler.h"
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
class OffCpuService {
 public:
  /// How often the off-CPU aggregates are read between queries: new processes get
  /// their maps captured within this, so a process must live about this long after
  /// its first recorded episode for its user frames to be named.
  static constexpr std::chrono::seconds kRefreshPeriod{1};

  OffCpuService(std::unique_ptr<OffCpuStackSource> stacks, std::unique_ptr<FrameResolver> frames,
                WorkloadResolver* workloads);
  ~OffCpuService();
  OffCpuService(const OffCpuService&) = delete;
  OffCpuService& operator=(const OffCpuService&) = delete;

  /// Starts the refresh thread.
  void Start();
  /// The handler for /debug/offcpu.
  HttpHandler Handler() const;
  /// collectors.cpu.stacks: while off, nothing is refreshed and queries get a 503.
  void SetStacks(bool on);
  /// Exited processes' stacks with no room in user space (the profiler's
  /// RetiredDropped(), as of the last refresh).
  uint64_t StoreFull() const;
  /// Drops the profiler (the handler answers 503 from now on) and joins the thread.
  void Stop();

 private:
  struct Host;
  static HttpResponse Serve(const std::shared_ptr<Host>& host, const HttpRequest& req);
  static void RefreshLoop(std::shared_ptr<Host> host);

  std::shared_ptr<Host> host_;
  std::thread refresh_thread_;
};

}  // namespace kmon
