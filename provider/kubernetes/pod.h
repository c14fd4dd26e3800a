// What kmon takes from a v1.Pod API object: the names its series carry (namespace, pod,
// containers, the top-owner workload), the UID its cgroups carry, and its IPs for the
// cluster-wide pod-IP index. Pure decoding, no I/O.
#pragma once

#include <absl/status/statusor.h>

#include <array>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "provider/workload.h"

namespace kmon {

/// An IP address as 16 bytes: IPv6 as is, IPv4 as the v4-mapped ::ffff:a.b.c.d.
using IpAddress = std::array<uint8_t, 16>;

/// The decoded part of a v1.Pod.
struct KubePod {
  /// What the pod's cgroup path carries: metadata.uid, or for a mirror pod (the API's copy
  /// of a static pod) the value of annotation "kubernetes.io/config.mirror", which is the
  /// UID the kubelet itself runs the static pod under.
  std::string uid;
  std::string namespace_;
  std::string name;
  /// spec.nodeName; empty while the pod is not scheduled.
  std::string node_name;
  std::map<std::string, std::string> labels;
  /// Container ID (64 hex, runtime prefix such as "containerd://" stripped) -> container
  /// name, from status.containerStatuses, initContainerStatuses and
  /// ephemeralContainerStatuses. A container without an ID yet (being created) is absent.
  std::map<std::string, std::string> containers;
  /// The pod's top owner (see DecodePod): "Deployment", "ReplicaSet", "StatefulSet",
  /// "DaemonSet", "Job", "CronJob", any other owner kind, or "Pod" for the pod itself.
  std::string workload_kind;
  std::string workload_name;
  /// status.podIPs[].ip, else status.podIP; at most one per family in a valid pod.
  std::vector<IpAddress> ips;
  /// spec.hostNetwork: the pod's IPs are its node's.
  bool host_network = false;
  /// status.phase ("Pending", "Running", "Succeeded", "Failed", "Unknown"); may be empty.
  std::string phase;
  /// metadata.creationTimestamp as Unix seconds; 0 when absent. Orders pods that claim the
  /// same IP (the newer one holds it).
  int64_t creation_seconds = 0;
};

/// Decodes a v1.Pod JSON object. The workload is the top owner, after SPEC:
///  - the controller ownerReference (controller: true), else the first ownerReference;
///  - a ReplicaSet named "<deployment>-<hash>" whose pod carries label pod-template-hash =
///    <hash> is its Deployment's (that is how the Deployment controller names them);
///    another ReplicaSet is the workload itself;
///  - a Job named like the CronJob controller names its Jobs is its CronJob's (see
///    pod.cc for the exact rule); another Job is itself;
///  - any other owner (StatefulSet, DaemonSet, a custom controller) is itself;
///  - no owner, or a mirror pod (owned by its Node): the pod itself, kind "Pod".
/// An error names what is missing or of the wrong type (no metadata.uid, labels that are
/// not strings, an unparsable IP...). Never throws.
absl::StatusOr<KubePod> DecodePod(const nlohmann::json& pod);

/// The UID DecodePod gives `pod` (the mirror annotation, else metadata.uid), read even from
/// an object DecodePod rejects, so that what is known of that pod can be found; "" when it
/// cannot be read. Never throws.
std::string PodUidOf(const nlohmann::json& pod);

/// The names the workload labeler needs: namespace, name, workload (its name), labels and
/// containers.
PodMeta ToPodMeta(const KubePod& pod);

/// Parses an IPv4 ("10.1.2.3", returned v4-mapped) or IPv6 ("fd00::5") address.
std::optional<IpAddress> ParseIpAddress(std::string_view text);

}  // namespace kmon
