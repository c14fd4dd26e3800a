#include "provider/cgroup_identity.h"

#include <algorithm>
#include <cstddef>
#include <optional>
#include <vector>

#include "base/split.h"

namespace kmon {
namespace {

// Docker and containerd print the first 12 hex digits as the short ID; so do we.
constexpr size_t kShortIdLength = 12;
// runc, crun and every CRI runtime use 256-bit IDs printed as 64 lowercase hex digits.
constexpr size_t kFullIdLength = 64;

bool ConsumePrefix(std::string_view* s, std::string_view prefix) {
  if (!s->starts_with(prefix)) return false;
  s->remove_prefix(prefix.size());
  return true;
}

bool ConsumeSuffix(std::string_view* s, std::string_view suffix) {
  if (!s->ends_with(suffix)) return false;
  s->remove_suffix(suffix.size());
  return true;
}

// Requiring the full length keeps unit names that merely start like a runtime's
// ("docker-cafe.scope") from being taken for containers.
bool IsContainerId(std::string_view s) {
  return s.size() == kFullIdLength && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Pod UIDs are UUIDs (dashes) for API pods and 32 bare hex digits for static pods;
// the systemd driver writes the dashes as underscores because '-' means nesting in slice
// names. Accept exactly that alphabet so an arbitrary "pod..." directory is not a pod.
bool IsUidText(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '-' ||
           c == '_';
  });
}

struct PodMatch {
  std::string uid;
  std::string qos;
};

// systemd driver: "[<prefix>-]kubepods[-burstable|-besteffort]-pod<uid_with_underscores>.slice".
// The optional prefix is the node's own slice when kubelet runs with a nested cgroup root
// (kind: "kubelet-kubepods-burstable-pod<uid>.slice").
std::optional<PodMatch> MatchSystemdPodSlice(std::string_view name) {
  if (!ConsumeSuffix(&name, ".slice")) return std::nullopt;
  size_t at = name.find("kubepods");
  if (at == std::string_view::npos) return std::nullopt;
  if (at != 0 && name[at - 1] != '-') return std::nullopt;
  name.remove_prefix(at + std::string_view("kubepods").size());
  PodMatch match;
  if (ConsumePrefix(&name, "-burstable")) {
    match.qos = "burstable";
  } else if (ConsumePrefix(&name, "-besteffort")) {
    match.qos = "besteffort";
  } else {
    // Guaranteed pods have no QoS slice of their own: they sit directly in kubepods.slice.
    match.qos = "guaranteed";
  }
  if (!ConsumePrefix(&name, "-pod") || !IsUidText(name)) return std::nullopt;
  match.uid.assign(name);
  std::replace(match.uid.begin(), match.uid.end(), '_', '-');
  return match;
}

// cgroupfs driver: "kubepods/[burstable|besteffort/]pod<uid>"; `index` points at "pod<uid>".
std::optional<PodMatch> MatchCgroupfsPodDir(const std::vector<std::string_view>& parts,
                                            size_t index) {
  std::string_view name = parts[index];
  if (!ConsumePrefix(&name, "pod") || !IsUidText(name)) return std::nullopt;
  if (index < 1) return std::nullopt;
  PodMatch match;
  std::string_view parent = parts[index - 1];
  if (parent == "kubepods") {
    match.qos = "guaranteed";
  } else if ((parent == "burstable" || parent == "besteffort") && index >= 2 &&
             parts[index - 2] == "kubepods") {
    match.qos.assign(parent);
  } else {
    return std::nullopt;
  }
  match.uid.assign(name);
  return match;
}

struct ContainerMatch {
  std::string id;
  std::string runtime;
  std::string_view prefix;  // as written in the name, e.g. "cri-containerd-"
};

// A runtime's scope or directory name: "cri-containerd-<id>[.scope]", "crio-<id>[.scope]",
// "docker-<id>[.scope]". The cgroupfs driver drops ".scope"; CRI-O keeps its prefix there.
std::optional<ContainerMatch> MatchRuntimePrefixed(std::string_view name) {
  ConsumeSuffix(&name, ".scope");
  static constexpr std::pair<std::string_view, std::string_view> kPrefixes[] = {
      {"cri-containerd-", "containerd"},
      {"crio-", "cri-o"},
      {"docker-", "docker"},
  };
  for (const auto& [prefix, runtime] : kPrefixes) {
    std::string_view id = name;
    if (ConsumePrefix(&id, prefix) && IsContainerId(id)) {
      return ContainerMatch{std::string(id), std::string(runtime), prefix};
    }
  }
  return std::nullopt;
}

// The cgroup directly below a pod's cgroup. Anything deeper (a container that made its own
// sub-cgroups, CRI-O's "<scope>/container") still belongs to that container.
void FillContainer(std::string_view leaf, CgroupIdentity* out) {
  // conmon is CRI-O's per-container monitor. It runs in the pod's cgroup tree but is not a
  // container, so it is accounted to the pod (container_id stays empty).
  if (leaf.starts_with("crio-conmon-")) return;
  if (auto match = MatchRuntimePrefixed(leaf)) {
    out->container_id = std::move(match->id);
    out->runtime = std::move(match->runtime);
    return;
  }
  // containerd and Docker under the cgroupfs driver name the directory by the bare ID, which
  // does not say which runtime made it.
  if (IsContainerId(leaf)) {
    out->container_id.assign(leaf);
    return;
  }
  // An unrecognised leaf inside a pod: still the pod's, but not a container we can name.
}

// Host (non-pod) naming. The rule: the last path element that ends in ".service" or
// ".scope" names the workload, because systemd units are what operators know a host process
// by, and a unit may create sub-cgroups of its own ("/system.slice/foo.service/sub" is still
// foo.service). The innermost such unit wins so that a node running inside a container
// ("/system.slice/docker-<kind>.scope/system.slice/kubelet.service") reports kubelet.service.
// Without any unit the leaf names it ("/kmon-test-42"); the root cgroup is "/". A container
// runtime's scope is shortened to "<prefix><id12>" ("docker-0123456789ab"), as `docker ps` shows
// it, and so is Docker's cgroupfs layout "/docker/<id>".
void FillHost(const std::vector<std::string_view>& parts, CgroupIdentity* out) {
  if (parts.empty()) {
    out->host_name = "/";
    return;
  }
  std::string_view chosen = parts.back();
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (it->ends_with(".service") || it->ends_with(".scope")) {
      chosen = *it;
      break;
    }
  }
  std::optional<ContainerMatch> container;
  if (chosen.ends_with(".scope")) {
    container = MatchRuntimePrefixed(chosen);
  } else if (parts.size() >= 2 && parts[parts.size() - 2] == "docker" && IsContainerId(chosen)) {
    container = ContainerMatch{std::string(chosen), "docker", "docker-"};
  }
  if (container) {
    out->host_name = std::string(container->prefix) + container->id.substr(0, kShortIdLength);
    out->container_id = std::move(container->id);
    out->runtime = std::move(container->runtime);
    return;
  }
  out->host_name.assign(chosen);
}

}  // namespace

CgroupIdentity ParseCgroupPath(std::string_view path) {
  CgroupIdentity out;
  std::vector<std::string_view> parts = SplitNonEmpty(path, '/');
  // The kubepods subtree may sit anywhere (kind nodes, a kubelet with a custom cgroup root),
  // so look at every element. The outermost pod wins: that is the one the node's kubelet
  // manages, even when a nested cluster runs inside one of its containers.
  for (size_t i = 0; i < parts.size(); ++i) {
    // runc's systemd cgroup name "<pod slice>:<runtime prefix>:<id>" appears verbatim as one
    // directory when containerd uses the systemd driver but the cgroup is made without
    // systemd (kubelet on cgroupfs, or no systemd reachable): e.g.
    // "/system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>".
    std::string_view name = parts[i];
    std::string_view runc_leaf;
    if (size_t colon = name.find(':'); colon != std::string_view::npos) {
      runc_leaf = name.substr(colon + 1);
      name = name.substr(0, colon);
    }
    std::optional<PodMatch> pod = MatchSystemdPodSlice(name);
    if (!pod && runc_leaf.empty()) pod = MatchCgroupfsPodDir(parts, i);
    if (!pod) continue;
    out.pod_uid = std::move(pod->uid);
    out.qos = std::move(pod->qos);
    if (!runc_leaf.empty()) {
      std::string leaf(runc_leaf);
      std::replace(leaf.begin(), leaf.end(), ':', '-');
      FillContainer(leaf, &out);
    } else if (i + 1 < parts.size()) {
      FillContainer(parts[i + 1], &out);
    }
    return out;
  }
  FillHost(parts, &out);
  return out;
}

}  // namespace kmon
