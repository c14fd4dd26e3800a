// The three shapes /debug/offcpu serves aggregated off-CPU stacks in: Brendan Gregg's
// folded text, a self-contained SVG flame graph, and a gzipped pprof profile. Pure
// functions of their input, so tests render fixed stacks.
#pragma once

#include <absl/status/statusor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "provider/workload.h"

namespace kmon {

/// Off-CPU time of one workload spent blocked in one stack.
struct OffCpuStack {
  WorkloadLabels labels;
  std::string process;              // the process's name (comm); empty: not known
  std::vector<std::string> user;    // user frames, outermost (main) first
  std::vector<std::string> kernel;  // kernel frames, outermost (syscall entry) first
  uint64_t ns = 0;                  // blocked time: switch-out to wakeup
  uint64_t count = 0;               // episodes
};

/// The root frame of a workload: "namespace/pod/container" for a pod's container,
/// the container label alone for a host process ("nginx.service", "/").
std::string WorkloadFrame(const WorkloadLabels& labels);

/// One line per distinct stack, sorted:
/// `workload;process;user outermost;...;kernel innermost NS` with NS the blocked
/// nanoseconds (no process frame when its name is not known). Frame names have ';'
/// replaced by ':'.
std::string RenderFolded(const std::vector<OffCpuStack>& stacks);

/// A flame graph (root at the bottom, widths by off-CPU ns) as one SVG document with
/// an embedded script: click a frame to zoom into it, "Search" highlights the frames
/// matching a regular expression and shows their share. `subtitle` is shown under
/// the title (filters, window).
std::string RenderFlameGraphSvg(const std::vector<OffCpuStack>& stacks, const std::string& title,
                                const std::string& subtitle);

/// A pprof profile, gzipped: sample types [episodes/count, offcpu/nanoseconds], one
/// sample per stack labelled namespace/pod/container/process, its outermost frames
/// the workload and the process as in the other formats, kernel frames marked by a
/// "[kernel.kallsyms]" file name. `time_nanos`: start of the window (Unix ns).
absl::StatusOr<std::string> RenderPprof(const std::vector<OffCpuStack>& stacks, int64_t time_nanos,
                                        int64_t duration_nanos);

}  // namespace kmon
