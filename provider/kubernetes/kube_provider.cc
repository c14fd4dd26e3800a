#include "provider/kubernetes/kube_provider.h"

#include <absl/strings/str_cat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <climits>

#include "base/log.h"

namespace kmon {

absl::StatusOr<KubeTarget> ResolveKubeTarget(const std::string& kubeconfig,
                                             const std::string& node_name, const EnvLookup& env) {
  KubeTarget t;
  absl::StatusOr<KubeEndpoint> ep =
      kubeconfig.empty() ? InClusterEndpoint(env) : KubeconfigEndpoint(kubeconfig);
  if (!ep.ok()) return ep.status();
  t.endpoint = *std::move(ep);
  t.node_name = node_name;
  if (t.node_name.empty()) {
    char host[HOST_NAME_MAX + 1] = {};
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') {
      return absl::FailedPreconditionError(
          "kubernetes.node_name is empty and this host has no name; set NODE_NAME from the "
          "downward API (spec.nodeName)");
    }
    t.node_name = host;
    // The kubelet registers a node under its host name, lower-cased.
    std::transform(t.node_name.begin(), t.node_name.end(), t.node_name.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    LogWarn("kubernetes.node_name is empty; watching the pods of the node named as this host",
            {{"node", t.node_name}});
  }
  return t;
}

KubeProvider::KubeProvider(KubeProviderOptions options)
    : options_(std::move(options)),
      client_(std::make_shared<KubeApiClient>(options_.endpoint)),
      node_pods_(
          std::chrono::duration_cast<std::chrono::steady_clock::duration>(options_.series_grace)) {
  PodWatcherOptions node;
  node.scope = "node";
  node.field_selector = absl::StrCat("spec.nodeName=", options_.node_name);
  node_watch_ = std::make_unique<PodWatcher>(client_, &node_pods_, node);
  if (options_.cluster_index) {
    PodWatcherOptions cluster;
    cluster.scope = "cluster";
    // Every pod of the cluster, ~7 KB of JSON each: a page is parsed whole, so smaller
    // pages keep the transient memory of a relist near 1 MB instead of 5.
    cluster.page_limit = 100;
    cluster_watch_ = std::make_unique<PodWatcher>(client_, &index_, cluster);
  }
}

KubeProvider::~KubeProvider() { Stop(); }

void KubeProvider::Start() {
  node_watch_->Start();
  if (cluster_watch_) cluster_watch_->Start();
}

void KubeProvider::Stop() {
  node_watch_->Stop();
  if (cluster_watch_) cluster_watch_->Stop();
}

void KubeProvider::SetOnChange(std::function<void()> fn) {
  node_pods_.SetOnChange(fn);
  index_.SetOnChange(std::move(fn));
}

std::vector<KubeWatchStatus> KubeProvider::Status() const {
  std::vector<KubeWatchStatus> out;
  out.push_back({"node", node_watch_->Up(), node_pods_.Size(), node_watch_->LastSyncUnix()});
  if (cluster_watch_) {
    out.push_back({"cluster", cluster_watch_->Up(), index_.Pods(), cluster_watch_->LastSyncUnix()});
  }
  return out;
}

}  // namespace kmon
