// kmon_exporter: per-node Prometheus exporter of per-pod kernel metrics from eBPF.
#include <absl/strings/str_join.h>
#include <elf.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "base/buffer_pool.h"
#include "base/log.h"
#include "collectors/collector.h"
#include "exporter/app.h"
#include "exporter/config.h"
#include "exporter/flags.h"
#include "exporter/privileges.h"
#include "exporter/self_metrics.h"
#include "exporter/version.h"

namespace {

std::vector<std::string> CollectorNames() {
  std::vector<std::string> names;
  for (const auto& e : kmon::CollectorTable()) names.push_back(e.name);
  return names;
}

// --check-config: every problem on its own line, exit 0 when there are none.
int CheckConfig(const kmon::Flags& flags) {
  kmon::ConfigResult r;
  if (flags.config_file.empty()) {
    r.config = kmon::DefaultConfig();
  } else {
    r = kmon::LoadConfigFile(flags.config_file, kmon::ProcessEnv());
  }
  for (const auto& p : r.problems) {
    std::fprintf(stderr, "%s: %s\n", flags.config_file.c_str(), p.ToString().c_str());
  }
  if (!r.problems.empty()) return 1;
  std::printf("%s: config is valid\n",
              flags.config_file.empty() ? "built-in defaults" : flags.config_file.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const auto names = CollectorNames();
  kmon::FlagsResult fr = kmon::ParseFlags(args, names);
  if (!fr.problems.empty()) {
    for (const auto& p : fr.problems) std::fprintf(stderr, "kmon_exporter: %s\n", p.c_str());
    std::fprintf(stderr, "kmon_exporter: see --help\n");
    return 1;
  }
  const kmon::Flags& flags = fr.flags;
  if (flags.help) {
    std::fputs(kmon::UsageText(names).c_str(), stdout);
    return 0;
  }
  if (flags.version) {
    std::printf("kmon_exporter version %s (revision %s, libbpf %s)\n", kmon::kVersion,
                kmon::kRevision, kmon::LibbpfVersion().c_str());
    return 0;
  }
  if (flags.check_config) return CheckConfig(flags);

  kmon::ConfigureLogging(flags.log_level, flags.log_format);
  kmon::TuneMallocForExporter();  // before any thread: see base/buffer_pool.h
  // Signals are taken synchronously by App::Run; block them before any thread
  // starts so every thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  kmon::LogInfo("starting kmon_exporter", {{"version", kmon::kVersion},
                                           {"revision", kmon::kRevision},
                                           {"kernel", kmon::KernelRelease()}});
  kmon::App app(flags);
  int rc = app.Start();
  if (rc != 0) return rc;
  // Loaded, attached and bound: from here on kmon needs only what a reload or a scrape
  // may do (kmon::KeptCapabilities); whatever else it was started with goes.
  absl::StatusOr<std::vector<std::string>> kept = kmon::DropUnneededCapabilities();
  if (kept.ok()) {
    kmon::LogInfo("capabilities after start", {{"kept", absl::StrJoin(*kept, ",")}});
  } else {
    kmon::LogWarn("could not drop capabilities", {{"err", kept.status().ToString()}});
  }
  // Starting parsed the kernel's BTF for every BPF object: what the heap kept of it goes.
  kmon::ReturnFreeMemory();
  // libbpf read the BPF objects embedded in the binary once, to load them: their pages go.
  const kmon::EmbeddedObjectPages released = kmon::ReleaseEmbeddedObjectPages(EM_BPF);
  kmon::LogDebug("embedded BPF objects' pages released",
                 {{"objects", std::to_string(released.objects)},
                  {"bytes", std::to_string(released.bytes)}});
  return app.Run();
}
