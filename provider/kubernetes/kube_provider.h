// The Kubernetes side of the Provider: this node's pods (names, owners, labels,
// container IDs) for the labels and the targets, and the cluster-wide pod-IP index
// for naming clients on other nodes. Two watches of their own threads; nothing here
// ever blocks a scrape, and an API outage keeps the last known pods.
#pragma once

#include <absl/status/statusor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/strict_yaml.h"
#include "provider/kubernetes/api_client.h"
#include "provider/kubernetes/node_pods.h"
#include "provider/kubernetes/pod_ip_index.h"
#include "provider/kubernetes/pod_watcher.h"
#include "provider/peer_names.h"
#include "provider/workload.h"

namespace kmon {

struct KubeProviderOptions {
  KubeEndpoint endpoint;
  std::string node_name;
  /// How long a deleted pod keeps answering with its names.
  std::chrono::nanoseconds series_grace = std::chrono::minutes(5);
  /// Also watch every pod of the cluster for the pod-IP index.
  bool cluster_index = true;
};

/// One watch's state, for kmon_kubernetes_* self-metrics.
struct KubeWatchStatus {
  std::string scope;  // "node" | "cluster"
  bool up = false;
  size_t pods = 0;
  double last_sync_unix = 0;
};

/// Where the API is, from `kubernetes.kubeconfig` (when set) or the in-cluster
/// service account; and the node's name (`node_name`, else this host's name, which
/// is what the kubelet registers by default).
struct KubeTarget {
  KubeEndpoint endpoint;
  std::string node_name;
};
absl::StatusOr<KubeTarget> ResolveKubeTarget(const std::string& kubeconfig,
                                             const std::string& node_name, const EnvLookup& env);

class KubeProvider {
 public:
  explicit KubeProvider(KubeProviderOptions options);
  ~KubeProvider();
  KubeProvider(const KubeProvider&) = delete;
  KubeProvider& operator=(const KubeProvider&) = delete;

  /// Starts both watches; returns at once (the first list arrives in the background).
  void Start();
  void Stop();

  const PodMetadataSource* Pods() const { return &node_pods_; }
  const PeerNames* Peers() const { return options_.cluster_index ? &index_ : nullptr; }
  /// Called from a watch thread after any change of either store (keep it short).
  void SetOnChange(std::function<void()> fn);
  std::vector<KubeWatchStatus> Status() const;

 private:
  KubeProviderOptions options_;
  std::shared_ptr<KubeApiClient> client_;
  NodePods node_pods_;
  PodIpIndex index_;
  std::unique_ptr<PodWatcher> node_watch_;
  std::unique_ptr<PodWatcher> cluster_watch_;
};

}  // namespace kmon
