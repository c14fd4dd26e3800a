#include "exporter/privileges.h"

#include <absl/strings/str_cat.h>
#include <cap-ng.h>
#include <linux/capability.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

namespace kmon {

const std::vector<KeptCapability>& KeptCapabilities() {
  // CAP_SYS_ADMIN is not kept: it only turns bpf_stats on at start (the fd taken then
  // keeps them on). CAP_SYS_RESOURCE is not kept: libbpf raises RLIMIT_MEMLOCK once, at
  // the first map, for kernels before 5.11 that charge maps to it; the limit stays raised.
  static const std::vector<KeptCapability> kept = {
      {CAP_BPF, "CAP_BPF",
       "load and attach BPF programs and maps; a reload may start a collector anew"},
      {CAP_PERFMON, "CAP_PERFMON",
       "tracing programs (tp_btf, raw_tp) and reading kernel memory through BPF"},
      {CAP_NET_ADMIN, "CAP_NET_ADMIN",
       "attach cgroup_skb programs to the cgroup root (the dns collector sees every "
       "workload's DNS packets there)"},
      {CAP_SYS_PTRACE, "CAP_SYS_PTRACE",
       "read other processes' /proc/<pid>/{maps,root,net/tcp*}: off-CPU user frames, "
       "listening ports of other network namespaces"},
      {CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH",
       "read other containers' binaries (through /proc/<pid>/root) for their symbols"},
      {CAP_SYSLOG, "CAP_SYSLOG",
       "real addresses in /proc/kallsyms: drop locations and kernel stack frames"},
  };
  return kept;
}

absl::StatusOr<std::vector<std::string>> DropUnneededCapabilities() {
  capng_get_caps_process();
  auto held = [] {
    std::vector<std::string> names;
    for (const KeptCapability& k : KeptCapabilities()) {
      if (capng_have_capability(CAPNG_EFFECTIVE, k.cap)) names.push_back(k.name);
    }
    return names;
  };
  // Narrowing the bounding set needs CAP_SETPCAP, which a container started with a
  // reduced set (the DaemonSet's) does not have: there only the process's own sets
  // shrink, and no_new_privs keeps an exec from regaining anything.
  const bool bounds = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP);
  const capng_select_t select =
      bounds ? CAPNG_SELECT_ALL
             : static_cast<capng_select_t>(CAPNG_SELECT_CAPS | CAPNG_SELECT_AMBIENT);
  std::vector<int> keep;
  for (const KeptCapability& k : KeptCapabilities()) {
    if (capng_have_capability(CAPNG_PERMITTED, k.cap)) keep.push_back(k.cap);
  }
  capng_clear(select);
  const int sets = CAPNG_EFFECTIVE | CAPNG_PERMITTED | (bounds ? CAPNG_BOUNDING_SET : 0);
  for (int cap : keep) {
    if (capng_update(CAPNG_ADD, static_cast<capng_type_t>(sets), static_cast<unsigned>(cap)) != 0) {
      return absl::InternalError(absl::StrCat("capng_update: capability ", cap));
    }
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return absl::InternalError(absl::StrCat("prctl(PR_SET_NO_NEW_PRIVS): ", std::strerror(errno)));
  }
  if (int rc = capng_apply(select); rc != 0) {
    return absl::InternalError(absl::StrCat("capng_apply: error ", rc));
  }
  capng_get_caps_process();
  return held();
}

bool BpfStatsEnabled() {
  std::ifstream in("/proc/sys/kernel/bpf_stats_enabled");
  int v = 0;
  return static_cast<bool>(in >> v) && v != 0;
}

std::string PermissionHint(int err) {
  if (err != EPERM && err != EACCES) return "";
  return "loading BPF needs CAP_BPF and CAP_PERFMON (kernel 5.8 or later; else CAP_SYS_ADMIN), "
         "or root; in Kubernetes add them to the container's securityContext.capabilities "
         "(deploy/kubernetes/daemonset.yaml)";
}

}  // namespace kmon
