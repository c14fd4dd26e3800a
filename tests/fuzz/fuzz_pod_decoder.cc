// The Kubernetes pod decoder and the two stores fed from the API: any JSON an API
// server (or something posing as one) sends is decoded or refused, never a crash.
#include <nlohmann/json.hpp>

#include "provider/kubernetes/node_pods.h"
#include "provider/kubernetes/pod.h"
#include "provider/kubernetes/pod_ip_index.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json pod = nlohmann::json::parse(kmon::fuzz::Text(data, size), nullptr, false);
  if (pod.is_discarded()) return 0;
  absl::StatusOr<kmon::KubePod> decoded = kmon::DecodePod(pod);
  if (decoded.ok()) kmon::ToPodMeta(*decoded);
  kmon::PodUidOf(pod);
  static kmon::NodePods node(std::chrono::seconds(1));
  static kmon::PodIpIndex index;
  for (kmon::PodWatchSink* sink : {static_cast<kmon::PodWatchSink*>(&node),
                                   static_cast<kmon::PodWatchSink*>(&index)}) {
    sink->Apply(kmon::WatchEventType::kAdded, pod);
    sink->Apply(kmon::WatchEventType::kModified, pod);
    if (size % 2 == 0) sink->Apply(kmon::WatchEventType::kDeleted, pod);
  }
  return 0;
}
