// Least privilege, for real: the exporter run with exactly the DaemonSet's
// capabilities (setpriv narrows root's bounding set, so the exec'd exporter holds
// only those) starts every default collector; once serving it holds only the
// capabilities it keeps (exporter/privileges.h), and a reload can still start a
// collector; without BPF permission it exits 2 saying what to grant.
#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <cap-ng.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "exporter/privileges.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::ExporterProcess;
using testing::SampleValue;

// The container's `capabilities.add` list of deploy/kubernetes/daemonset.yaml.
std::vector<std::string> DaemonSetCapabilities() {
  const std::string yaml = ReadTextFile(KMON_SOURCE_DIR "/deploy/kubernetes/daemonset.yaml");
  std::smatch m;
  if (!std::regex_search(yaml, m, std::regex(R"(\n\s+add: \[([A-Z_, ]+)\])"))) return {};
  std::vector<std::string> caps = absl::StrSplit(m[1].str(), ", ");
  return caps;
}

// setpriv's --bounding-set argument for exactly these capabilities.
std::string BoundingSet(const std::vector<std::string>& caps) {
  std::string arg = "--bounding-set=-all";
  for (const std::string& c : caps) absl::StrAppend(&arg, ",+", absl::AsciiStrToLower(c));
  return arg;
}

// The capability set `field` (CapEff, CapBnd, ...) of a process.
uint64_t CapMask(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0)
      return std::stoull(line.substr(field.size() + 1), nullptr, 16);
  }
  return ~0ull;
}

uint64_t KeptMask() {
  uint64_t mask = 0;
  for (const KeptCapability& k : KeptCapabilities()) mask |= 1ull << k.cap;
  return mask;
}

// The default collectors, and syscalls (off by default, turned on here with its
// flag: its fexit probe and tracepoint must load with these capabilities too).
const char* const kDefaultCollectors[] = {"tcp",      "topology", "drops", "blockio",
                                          "syscalls", "cpu",      "dns",   "pagecache"};

TEST(PrivilegesRootTest, TheDaemonSetsCapabilitiesStartEveryDefaultCollector) {
  KMON_REQUIRE_ROOT();
  const std::vector<std::string> caps = DaemonSetCapabilities();
  ASSERT_FALSE(caps.empty()) << "no capabilities.add list in daemonset.yaml";
  EXPECT_EQ(std::count(caps.begin(), caps.end(), "SYS_ADMIN"), 0) << absl::StrJoin(caps, ",");
  ExporterProcess kmon({"--collector.syscalls"}, {"setpriv", BoundingSet(caps)});
  ASSERT_TRUE(kmon.WaitReady());
  const std::string text = kmon.Scrape();
  for (const char* c : kDefaultCollectors) {
    EXPECT_EQ(SampleValue(text, "kmon_collector_up", {{"collector", c}}), 1) << c << "\n" << text;
  }
  // Serving, it holds what it keeps and nothing else: SYS_RESOURCE is gone. Without
  // CAP_SETPCAP (as in the container) the bounding set stays the container's.
  uint64_t given = 0;
  for (const std::string& c : caps) {
    const int n = capng_name_to_capability(absl::AsciiStrToLower(c).c_str());
    ASSERT_GE(n, 0) << c;
    given |= 1ull << n;
  }
  // What this test's own process may hand down (a sandbox may lack some, e.g. SYS_RESOURCE).
  given &= CapMask(getpid(), "CapBnd");
  EXPECT_EQ(CapMask(kmon.pid(), "CapEff"), KeptMask());
  EXPECT_EQ(CapMask(kmon.pid(), "CapPrm"), KeptMask());
  EXPECT_EQ(CapMask(kmon.pid(), "CapBnd"), given);
  EXPECT_EQ(CapMask(kmon.pid(), "CapAmb"), 0u);
  EXPECT_EQ(kmon.Terminate(), 0);
}

TEST(PrivilegesRootTest, StartedAsFullRootItKeepsOnlyWhatItNeedsAndReloadsStillStartCollectors) {
  KMON_REQUIRE_ROOT();
  TempFile config("collectors:\n  cpu: {enabled: false}\n");
  ExporterProcess kmon({"--config.file=" + config.path()});
  ASSERT_TRUE(kmon.WaitReady());
  EXPECT_EQ(CapMask(kmon.pid(), "CapEff"), KeptMask());
  EXPECT_EQ(CapMask(kmon.pid(), "CapPrm"), KeptMask());
  EXPECT_EQ(CapMask(kmon.pid(), "CapBnd"), KeptMask());
  EXPECT_EQ(CapMask(kmon.pid(), "CapInh"), 0u);
  // syscalls is off by default (SPEC): not even a kmon_collector_up series.
  EXPECT_EQ(SampleValue(kmon.Scrape(), "kmon_collector_up", {{"collector", "syscalls"}}),
            std::nullopt);
  // A collector started by a reload loads and attaches with the capabilities kept.
  ASSERT_TRUE(config.Rewrite("collectors:\n  cpu: {enabled: true}\n"));
  kmon.Signal(SIGHUP);
  EXPECT_TRUE(Eventually(
      [&] {
        return SampleValue(kmon.Scrape(), "kmon_collector_up", {{"collector", "cpu"}}) == 1;
      },
      std::chrono::seconds(10), std::chrono::milliseconds(100)))
      << kmon.Scrape();
  EXPECT_EQ(SampleValue(kmon.Scrape(), "kmon_config_last_reload_successful", {}), 1);
  EXPECT_EQ(kmon.Terminate(), 0);
}

TEST(PrivilegesRootTest, WithoutBpfPermissionItExitsTwoSayingWhatToGrant) {
  KMON_REQUIRE_ROOT();
  const CommandResult r = RunWithInput(
      absl::StrCat("setpriv --bounding-set=-all,+sys_ptrace,+dac_read_search ", KMON_EXPORTER_BIN,
                   " --web.listen-address=127.0.0.1:", testing::FreePort()),
      "");
  EXPECT_EQ(r.exit_status, 2) << r.output;
  EXPECT_NE(r.output.find("no collector could start"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("CAP_BPF and CAP_PERFMON"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kmon
