// What a cgroup v2 path says about the workload in it: a Kubernetes pod and container
// (kubelet layouts of the systemd and cgroupfs drivers; containerd, CRI-O and Docker
// names), a systemd unit, or some other cgroup. Pure string work, no I/O.
#pragma once

#include <string>
#include <string_view>

namespace kmon {

struct CgroupIdentity {
  /// Pod UID with dashes ("0c4b8f6e-...") when the path is inside a kubelet pod cgroup.
  std::string pod_uid;
  /// Full container ID (64 hex) when the leaf is a container; empty for the pod's own cgroup.
  std::string container_id;
  /// "containerd" | "cri-o" | "docker" | "" (unknown or not a container).
  std::string runtime;
  /// QoS class from the path: "guaranteed" | "burstable" | "besteffort" | "".
  std::string qos;
  /// For a cgroup outside any pod: the systemd unit ("nginx.service"), the
  /// cgroup leaf name ("docker-<id12>" for Docker scopes, else the last path
  /// element), or "/" for the root cgroup. Empty for pod cgroups.
  std::string host_name;

  bool IsPod() const { return !pod_uid.empty(); }
};

/// Parses a path relative to the cgroup v2 root ("/", "/system.slice/nginx.service",
/// "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
/// cri-containerd-<id>.scope", "/kubepods/besteffort/pod<uid>/<id>", ...).
CgroupIdentity ParseCgroupPath(std::string_view path);

}  // namespace kmon
