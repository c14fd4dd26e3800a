#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "provider/kubernetes/node_pods.h"
#include "provider/kubernetes/pod.h"
#include "provider/kubernetes/pod_ip_index.h"

namespace kmon {
namespace {

using nlohmann::json;
using std::chrono::seconds;
using std::chrono::steady_clock;

// Shaped like `kubectl get pod -o json` output (managedFields trimmed to one entry).
constexpr char kDeploymentPod[] = R"json({
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "annotations": {
      "kubectl.kubernetes.io/restartedAt": "2024-05-01T09:58:12Z",
      "prometheus.io/scrape": "true"
    },
    "creationTimestamp": "2024-05-01T10:00:00Z",
    "generateName": "checkout-7d9c8b6f5-",
    "labels": {
      "app.kubernetes.io/name": "checkout",
      "pod-template-hash": "7d9c8b6f5"
    },
    "managedFields": [
      {
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}}}},
        "manager": "kube-controller-manager",
        "operation": "Update",
        "time": "2024-05-01T10:00:00Z"
      }
    ],
    "name": "checkout-7d9c8b6f5-x2x9z",
    "namespace": "shop",
    "ownerReferences": [
      {
        "apiVersion": "apps/v1",
        "blockOwnerDeletion": true,
        "controller": true,
        "kind": "ReplicaSet",
        "name": "checkout-7d9c8b6f5",
        "uid": "d0bb66c2-99d4-43c2-a2e1-e5e59b0b8f17"
      }
    ],
    "resourceVersion": "48213",
    "uid": "037b9338-3b92-4e59-91eb-fe6a8d20e977"
  },
  "spec": {
    "containers": [
      {"image": "registry.example.com/shop/checkout:1.14.2", "name": "checkout",
       "ports": [{"containerPort": 8080, "protocol": "TCP"}]},
      {"image": "envoyproxy/envoy:v1.29.1", "name": "envoy"}
    ],
    "initContainers": [{"image": "busybox:1.36", "name": "wait-db"}],
    "nodeName": "node-a",
    "restartPolicy": "Always",
    "serviceAccountName": "checkout"
  },
  "status": {
    "conditions": [{"lastTransitionTime": "2024-05-01T10:00:04Z", "status": "True", "type": "Ready"}],
    "containerStatuses": [
      {"containerID": "containerd://5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9",
       "image": "registry.example.com/shop/checkout:1.14.2", "name": "checkout", "ready": true,
       "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2024-05-01T10:00:03Z"}}},
      {"containerID": "containerd://6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
       "image": "docker.io/envoyproxy/envoy:v1.29.1", "name": "envoy", "ready": true,
       "restartCount": 1, "started": true, "state": {"running": {"startedAt": "2024-05-01T10:00:03Z"}}}
    ],
    "hostIP": "192.168.10.11",
    "hostIPs": [{"ip": "192.168.10.11"}],
    "initContainerStatuses": [
      {"containerID": "containerd://d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35",
       "name": "wait-db", "ready": true, "restartCount": 0,
       "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    ],
    "phase": "Running",
    "podIP": "10.244.1.17",
    "podIPs": [{"ip": "10.244.1.17"}],
    "qosClass": "Burstable",
    "startTime": "2024-05-01T10:00:00Z"
  }
})json";

// A StatefulSet pod on a dual-stack cluster running CRI-O, with an ephemeral debug
// container (kubectl debug) and one container still being created (no containerID yet).
constexpr char kStatefulSetPod[] = R"json({
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "creationTimestamp": "2024-05-02T08:30:00Z",
    "generateName": "web-",
    "labels": {"app": "web", "apps.kubernetes.io/pod-index": "0",
               "controller-revision-hash": "web-6d4cf56db6",
               "statefulset.kubernetes.io/pod-name": "web-0"},
    "name": "web-0",
    "namespace": "frontend",
    "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
                         "kind": "StatefulSet", "name": "web",
                         "uid": "e02d04a5-2637-4d00-8595-a6357ba7ea9c"}],
    "uid": "bf356683-c1cc-4af1-b8a6-849b0d83f1ed"
  },
  "spec": {
    "containers": [{"image": "nginx:1.25", "name": "nginx"}, {"image": "fluent-bit:3.0", "name": "logs"}],
    "ephemeralContainers": [{"image": "busybox:1.36", "name": "debugger-7x2lq", "targetContainerName": "nginx"}],
    "hostname": "web-0",
    "nodeName": "node-b",
    "subdomain": "web"
  },
  "status": {
    "containerStatuses": [
      {"containerID": "cri-o://4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce",
       "name": "nginx", "ready": true, "restartCount": 0},
      {"containerID": "", "name": "logs", "ready": false, "restartCount": 0,
       "state": {"waiting": {"reason": "ContainerCreating"}}}
    ],
    "ephemeralContainerStatuses": [
      {"containerID": "cri-o://4b227777d4dd1fc61c6f884f48641d02b4d121d3fd328cb08b5531fcacdabf8a",
       "name": "debugger-7x2lq", "ready": false, "restartCount": 0}
    ],
    "hostIP": "192.168.10.12",
    "phase": "Running",
    "podIP": "10.244.2.5",
    "podIPs": [{"ip": "10.244.2.5"}, {"ip": "fd00:10:244:2::5"}]
  }
})json";

// A DaemonSet pod on the host network, on a Docker (cri-dockerd) node.
constexpr char kDaemonSetPod[] = R"json({
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "creationTimestamp": "2024-04-20T12:00:00Z",
    "labels": {"app.kubernetes.io/name": "node-exporter", "controller-revision-hash": "5b9f7c8d4",
               "pod-template-generation": "3"},
    "name": "node-exporter-8kq2m",
    "namespace": "monitoring",
    "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
                         "kind": "DaemonSet", "name": "node-exporter",
                         "uid": "514515d2-2f2a-44e9-8fe7-24a691a290c5"}],
    "uid": "be17ff8c-38ca-4b4b-bb30-60adf3e23852"
  },
  "spec": {
    "containers": [{"image": "quay.io/prometheus/node-exporter:v1.8.0", "name": "node-exporter"}],
    "hostNetwork": true,
    "hostPID": true,
    "nodeName": "node-a"
  },
  "status": {
    "containerStatuses": [
      {"containerID": "docker://ef2d127de37b942baad06145e54b0c619a1f22327b2ebbcfbec78f5564afe39d",
       "name": "node-exporter", "ready": true, "restartCount": 0}
    ],
    "hostIP": "192.168.10.11",
    "phase": "Running",
    "podIP": "192.168.10.11",
    "podIPs": [{"ip": "192.168.10.11"}]
  }
})json";

// The API's mirror of a static pod: the kubelet runs it under the UID in the
// config.mirror annotation, and the Node owns the mirror.
constexpr char kMirrorPod[] = R"json({
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "annotations": {
      "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": "192.168.10.11:6443",
      "kubernetes.io/config.hash": "9dd4e461268c8034f5c8564e155c67a6",
      "kubernetes.io/config.mirror": "9dd4e461268c8034f5c8564e155c67a6",
      "kubernetes.io/config.seen": "2024-04-20T11:58:40.123456789Z",
      "kubernetes.io/config.source": "file"
    },
    "creationTimestamp": "2024-04-20T11:59:00Z",
    "labels": {"component": "kube-apiserver", "tier": "control-plane"},
    "name": "kube-apiserver-node-a",
    "namespace": "kube-system",
    "ownerReferences": [{"apiVersion": "v1", "controller": true, "kind": "Node", "name": "node-a",
                         "uid": "2c64f1b1-9a95-4800-8cf6-2d6620134a80"}],
    "uid": "84ba58ed-aa58-4a1c-a282-c43af6d0ddd1"
  },
  "spec": {
    "containers": [{"image": "registry.k8s.io/kube-apiserver:v1.30.0", "name": "kube-apiserver"}],
    "hostNetwork": true,
    "nodeName": "node-a",
    "priorityClassName": "system-node-critical"
  },
  "status": {
    "containerStatuses": [
      {"containerID": "containerd://e7f6c011776e8db7cd330b54174fd76f7d0216b612387a5ffcfb81e6f0919683",
       "name": "kube-apiserver", "ready": true, "restartCount": 2}
    ],
    "phase": "Running",
    "podIP": "192.168.10.11",
    "podIPs": [{"ip": "192.168.10.11"}]
  }
})json";

// A pod some CronJob's Job ran, done; IPv6 single-stack cluster.
constexpr char kCronJobPod[] = R"json({
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "creationTimestamp": "2024-05-01T11:00:00Z",
    "generateName": "nightly-report-28574700-",
    "labels": {"batch.kubernetes.io/controller-uid": "7902699b-e42c-4a8e-8e46-fbbb45017265",
               "batch.kubernetes.io/job-name": "nightly-report-28574700",
               "controller-uid": "7902699b-e42c-4a8e-8e46-fbbb45017265",
               "job-name": "nightly-report-28574700"},
    "name": "nightly-report-28574700-q7x2k",
    "namespace": "reports",
    "ownerReferences": [{"apiVersion": "batch/v1", "blockOwnerDeletion": true, "controller": true,
                         "kind": "Job", "name": "nightly-report-28574700",
                         "uid": "7902699b-e42c-4a8e-8e46-fbbb45017265"}],
    "uid": "2c624232-cdd2-4217-8129-4dfbb310aca0"
  },
  "spec": {
    "containers": [{"image": "reports:2.3", "name": "report"}],
    "nodeName": "node-c",
    "restartPolicy": "OnFailure"
  },
  "status": {
    "containerStatuses": [
      {"containerID": "containerd://19581e27de7ced00ff1ce50b2047e7a567c76b1cbaebabe5ef03f7c3017bb5b7",
       "name": "report", "ready": false, "restartCount": 0,
       "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    ],
    "phase": "Running",
    "podIP": "fd00:10:244:3::1a",
    "podIPs": [{"ip": "fd00:10:244:3::1a"}]
  }
})json";

KubePod MustDecode(const json& pod) {
  absl::StatusOr<KubePod> decoded = DecodePod(pod);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  return decoded.ok() ? *decoded : KubePod{};
}

KubePod MustDecode(const char* text) { return MustDecode(json::parse(text)); }

IpAddress Ip(const char* text) {
  std::optional<IpAddress> ip = ParseIpAddress(text);
  EXPECT_TRUE(ip.has_value()) << text;
  return ip.value_or(IpAddress{});
}

std::string DecodeError(const json& pod) {
  absl::StatusOr<KubePod> decoded = DecodePod(pod);
  EXPECT_FALSE(decoded.ok());
  return decoded.ok() ? "" : std::string(decoded.status().message());
}

TEST(KubePodTest, DeploymentPodThroughItsReplicaSet) {
  KubePod pod = MustDecode(kDeploymentPod);
  EXPECT_EQ(pod.uid, "037b9338-3b92-4e59-91eb-fe6a8d20e977");
  EXPECT_EQ(pod.namespace_, "shop");
  EXPECT_EQ(pod.name, "checkout-7d9c8b6f5-x2x9z");
  EXPECT_EQ(pod.node_name, "node-a");
  EXPECT_EQ(pod.workload_kind, "Deployment");
  EXPECT_EQ(pod.workload_name, "checkout");
  EXPECT_EQ(pod.labels, (std::map<std::string, std::string>{{"app.kubernetes.io/name", "checkout"},
                                                            {"pod-template-hash", "7d9c8b6f5"}}));
  EXPECT_EQ(pod.containers,
            (std::map<std::string, std::string>{
                {"5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9", "checkout"},
                {"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b", "envoy"},
                {"d4735e3a265e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35", "wait-db"}}));
  ASSERT_EQ(pod.ips.size(), 1u);
  EXPECT_EQ(pod.ips[0], (IpAddress{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 1, 17}));
  EXPECT_FALSE(pod.host_network);
  EXPECT_EQ(pod.phase, "Running");
  EXPECT_EQ(pod.creation_seconds, 1714557600);  // 2024-05-01T10:00:00Z

  PodMeta meta = ToPodMeta(pod);
  EXPECT_EQ(meta.namespace_, "shop");
  EXPECT_EQ(meta.name, "checkout-7d9c8b6f5-x2x9z");
  EXPECT_EQ(meta.workload, "checkout");
  EXPECT_EQ(meta.labels, pod.labels);
  EXPECT_EQ(meta.containers, pod.containers);
}

TEST(KubePodTest, ReplicaSetNotNamedByADeploymentIsItsOwnWorkload) {
  json pod = json::parse(kDeploymentPod);
  // Hash label and name suffix differ: made by hand, or by something else than a Deployment.
  pod["metadata"]["labels"]["pod-template-hash"] = "5c8f9d7b4";
  KubePod decoded = MustDecode(pod);
  EXPECT_EQ(decoded.workload_kind, "ReplicaSet");
  EXPECT_EQ(decoded.workload_name, "checkout-7d9c8b6f5");

  pod["metadata"]["labels"].erase("pod-template-hash");
  decoded = MustDecode(pod);
  EXPECT_EQ(decoded.workload_kind, "ReplicaSet");
  EXPECT_EQ(decoded.workload_name, "checkout-7d9c8b6f5");

  // The whole name is the hash: no Deployment name left.
  pod["metadata"]["labels"]["pod-template-hash"] = "checkout-7d9c8b6f5";
  EXPECT_EQ(MustDecode(pod).workload_kind, "ReplicaSet");
}

TEST(KubePodTest, ControllerOwnerIsPreferredOverTheFirst) {
  json pod = json::parse(kDeploymentPod);
  pod["metadata"]["ownerReferences"].insert(
      pod["metadata"]["ownerReferences"].begin(),
      json{{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"name", "checkout-lock"}, {"uid", "x"}});
  EXPECT_EQ(MustDecode(pod).workload_name, "checkout");
  // Without a controller reference the first one counts.
  pod["metadata"]["ownerReferences"][1].erase("controller");
  KubePod decoded = MustDecode(pod);
  EXPECT_EQ(decoded.workload_kind, "ConfigMap");
  EXPECT_EQ(decoded.workload_name, "checkout-lock");
}

TEST(KubePodTest, StatefulSetDualStackEphemeralAndCreatingContainers) {
  KubePod pod = MustDecode(kStatefulSetPod);
  EXPECT_EQ(pod.workload_kind, "StatefulSet");
  EXPECT_EQ(pod.workload_name, "web");
  // "logs" has no container ID yet: absent until it has one.
  EXPECT_EQ(
      pod.containers,
      (std::map<std::string, std::string>{
          {"4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce", "nginx"},
          {"4b227777d4dd1fc61c6f884f48641d02b4d121d3fd328cb08b5531fcacdabf8a", "debugger-7x2lq"}}));
  ASSERT_EQ(pod.ips.size(), 2u);
  EXPECT_EQ(pod.ips[0], Ip("::ffff:10.244.2.5"));
  EXPECT_EQ(pod.ips[1], (IpAddress{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 5}));
}

TEST(KubePodTest, DaemonSetOnTheHostNetworkWithDockerIds) {
  KubePod pod = MustDecode(kDaemonSetPod);
  EXPECT_EQ(pod.workload_kind, "DaemonSet");
  EXPECT_EQ(pod.workload_name, "node-exporter");
  EXPECT_TRUE(pod.host_network);
  EXPECT_EQ(
      pod.containers,
      (std::map<std::string, std::string>{
          {"ef2d127de37b942baad06145e54b0c619a1f22327b2ebbcfbec78f5564afe39d", "node-exporter"}}));
}

TEST(KubePodTest, MirrorPodIsKnownByTheKubeletsUidAndIsItsOwnWorkload) {
  KubePod pod = MustDecode(kMirrorPod);
  EXPECT_EQ(pod.uid, "9dd4e461268c8034f5c8564e155c67a6");
  EXPECT_EQ(pod.workload_kind, "Pod");
  EXPECT_EQ(pod.workload_name, "kube-apiserver-node-a");
  EXPECT_EQ(PodUidOf(json::parse(kMirrorPod)), "9dd4e461268c8034f5c8564e155c67a6");
  // A Node owner without the annotation is no workload either.
  json pod_json = json::parse(kMirrorPod);
  pod_json["metadata"].erase("annotations");
  KubePod plain = MustDecode(pod_json);
  EXPECT_EQ(plain.uid, "84ba58ed-aa58-4a1c-a282-c43af6d0ddd1");
  EXPECT_EQ(plain.workload_kind, "Pod");
  EXPECT_EQ(plain.workload_name, "kube-apiserver-node-a");
}

TEST(KubePodTest, CronJobThroughItsScheduledJobIpv6) {
  KubePod pod = MustDecode(kCronJobPod);
  EXPECT_EQ(pod.workload_kind, "CronJob");
  EXPECT_EQ(pod.workload_name, "nightly-report");
  ASSERT_EQ(pod.ips.size(), 1u);
  EXPECT_EQ(pod.ips[0], Ip("fd00:10:244:3::1a"));
  // The controller before Kubernetes 1.21 suffixed Unix seconds.
  json old = json::parse(kCronJobPod);
  old["metadata"]["ownerReferences"][0]["name"] = "nightly-report-1714561200";
  EXPECT_EQ(MustDecode(old).workload_name, "nightly-report");
}

TEST(KubePodTest, HandMadeJobStaysAJob) {
  json pod = json::parse(kCronJobPod);
  for (const char* job : {"db-migrate", "migrate-2", "backup-20240", "-28574700",
                          "report-28574700x", "report-12345678901"}) {
    pod["metadata"]["ownerReferences"][0]["name"] = job;
    KubePod decoded = MustDecode(pod);
    EXPECT_EQ(decoded.workload_kind, "Job") << job;
    EXPECT_EQ(decoded.workload_name, job);
  }
  // A Job of another API group (a custom resource) is not batch's.
  pod["metadata"]["ownerReferences"][0]["apiVersion"] = "batch.volcano.sh/v1alpha1";
  pod["metadata"]["ownerReferences"][0]["name"] = "train-28574700";
  EXPECT_EQ(MustDecode(pod).workload_name, "train-28574700");
}

TEST(KubePodTest, BarePodIsItsOwnWorkload) {
  json pod = json::parse(kDeploymentPod);
  pod["metadata"].erase("ownerReferences");
  pod["metadata"]["name"] = "debug-shell";
  KubePod decoded = MustDecode(pod);
  EXPECT_EQ(decoded.workload_kind, "Pod");
  EXPECT_EQ(decoded.workload_name, "debug-shell");
  // An empty list, or null, is no owner either.
  pod["metadata"]["ownerReferences"] = json::array();
  EXPECT_EQ(MustDecode(pod).workload_name, "debug-shell");
  pod["metadata"]["ownerReferences"] = nullptr;
  EXPECT_EQ(MustDecode(pod).workload_name, "debug-shell");
}

TEST(KubePodTest, PendingPodHasNoIpsNorContainers) {
  json pod = json::parse(kDeploymentPod);
  pod["spec"].erase("nodeName");
  pod["status"] = json{{"phase", "Pending"}, {"qosClass", "Burstable"}};
  KubePod decoded = MustDecode(pod);
  EXPECT_TRUE(decoded.ips.empty());
  EXPECT_TRUE(decoded.containers.empty());
  EXPECT_EQ(decoded.node_name, "");
  // Only podIP (a server older than dual-stack).
  pod["status"]["podIP"] = "10.244.1.99";
  decoded = MustDecode(pod);
  ASSERT_EQ(decoded.ips.size(), 1u);
  EXPECT_EQ(decoded.ips[0], Ip("10.244.1.99"));
}

TEST(KubePodTest, WrongTypesAreErrorsNotExceptions) {
  json base = json::parse(kDeploymentPod);
  EXPECT_EQ(DecodeError(json::array()), "pod is not an object");
  EXPECT_EQ(DecodeError(json{{"kind", "Pod"}}), "metadata is missing");
  json pod = base;
  pod["metadata"].erase("uid");
  EXPECT_EQ(DecodeError(pod), "metadata.uid is missing");
  pod["metadata"]["uid"] = 42;
  EXPECT_EQ(DecodeError(pod), "metadata.uid is not a string");
  pod = base;
  pod["metadata"] = "shop/checkout";
  EXPECT_EQ(DecodeError(pod), "metadata is not an object");
  pod = base;
  pod["metadata"]["labels"]["replicas"] = 3;
  EXPECT_EQ(DecodeError(pod), "metadata.labels[\"replicas\"] is not a string");
  pod = base;
  pod["metadata"]["labels"] = json::array({"app"});
  EXPECT_EQ(DecodeError(pod), "metadata.labels is not an object");
  pod = base;
  pod["metadata"]["ownerReferences"][0]["controller"] = "true";
  EXPECT_EQ(DecodeError(pod), "metadata.ownerReferences[0].controller is not a boolean");
  pod = base;
  pod["metadata"]["ownerReferences"][0].erase("kind");
  EXPECT_EQ(DecodeError(pod), "metadata.ownerReferences[0].kind is missing");
  pod = base;
  pod["metadata"]["creationTimestamp"] = "yesterday";
  EXPECT_EQ(DecodeError(pod), "metadata.creationTimestamp \"yesterday\" is not an RFC 3339 time");
  pod = base;
  pod["spec"]["hostNetwork"] = "false";
  EXPECT_EQ(DecodeError(pod), "spec.hostNetwork is not a boolean");
  pod = base;
  pod["status"]["podIPs"] = "10.244.1.17";
  EXPECT_EQ(DecodeError(pod), "status.podIPs is not an array");
  pod = base;
  pod["status"]["podIPs"][0]["ip"] = "10.244.1";
  EXPECT_EQ(DecodeError(pod), "status.podIPs[0].ip \"10.244.1\" is not an IP address");
  pod = base;
  pod["status"]["containerStatuses"][1] = "envoy";
  EXPECT_EQ(DecodeError(pod), "status.containerStatuses[1] is not an object");
  pod = base;
  pod["status"]["initContainerStatuses"][0]["containerID"] = 7;
  EXPECT_EQ(DecodeError(pod), "status.initContainerStatuses[0].containerID is not a string");
  pod = base;
  pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] = true;
  EXPECT_EQ(DecodeError(pod), "metadata.annotations.kubernetes.io/config.mirror is not a string");
  EXPECT_EQ(PodUidOf(pod), "037b9338-3b92-4e59-91eb-fe6a8d20e977");
  EXPECT_EQ(PodUidOf(json(5)), "");
}

TEST(KubePodTest, ParseIpAddress) {
  EXPECT_EQ(ParseIpAddress("10.1.2.3"),
            (IpAddress{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3}));
  EXPECT_EQ(ParseIpAddress("::ffff:10.1.2.3"), ParseIpAddress("10.1.2.3"));
  EXPECT_EQ(ParseIpAddress("fd00::1"),
            (IpAddress{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  EXPECT_EQ(ParseIpAddress(""), std::nullopt);
  EXPECT_EQ(ParseIpAddress("10.1.2"), std::nullopt);
  EXPECT_EQ(ParseIpAddress("fd00::1 "), std::nullopt);
  EXPECT_EQ(ParseIpAddress(std::string(60, '1')), std::nullopt);
}

// --- NodePods ---

struct FakeClock {
  steady_clock::time_point now = steady_clock::time_point() + std::chrono::hours(1);
  NodePods::Clock Fn() {
    return [this] { return now; };
  }
};

constexpr char kCheckoutUid[] = "037b9338-3b92-4e59-91eb-fe6a8d20e977";
constexpr char kWebUid[] = "bf356683-c1cc-4af1-b8a6-849b0d83f1ed";

TEST(NodePodsTest, PodByUidAnswersPodMeta) {
  FakeClock clock;
  NodePods pods(seconds(300), clock.Fn());
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  pods.Apply(WatchEventType::kAdded, json::parse(kMirrorPod));
  EXPECT_EQ(pods.Size(), 2u);
  std::optional<PodMeta> meta = pods.PodByUid(kCheckoutUid);
  ASSERT_TRUE(meta.has_value());
  EXPECT_EQ(meta->name, "checkout-7d9c8b6f5-x2x9z");
  EXPECT_EQ(meta->workload, "checkout");
  EXPECT_EQ(meta->containers.at("6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"),
            "envoy");
  // The static pod by the UID its cgroups carry, not the mirror's.
  ASSERT_TRUE(pods.PodByUid("9dd4e461268c8034f5c8564e155c67a6").has_value());
  EXPECT_EQ(pods.PodByUid("9dd4e461268c8034f5c8564e155c67a6")->name, "kube-apiserver-node-a");
  EXPECT_FALSE(pods.PodByUid("84ba58ed-aa58-4a1c-a282-c43af6d0ddd1").has_value());
  EXPECT_EQ(pods.LivePods().size(), 2u);
}

TEST(NodePodsTest, RelistDropsAVanishedPodOnlyAtEndList) {
  FakeClock clock;
  NodePods pods(seconds(300), clock.Fn());
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  pods.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  pods.EndList();
  EXPECT_EQ(pods.Size(), 2u);

  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  EXPECT_EQ(pods.Size(), 2u);  // not yet: the list may go on
  pods.EndList();
  EXPECT_EQ(pods.Size(), 1u);
  EXPECT_EQ(pods.LivePods().count(kWebUid), 0u);
  // Gone, but still named for keep_deleted.
  ASSERT_TRUE(pods.PodByUid(kWebUid).has_value());
  EXPECT_EQ(pods.PodByUid(kWebUid)->name, "web-0");
  clock.now += seconds(300);
  EXPECT_FALSE(pods.PodByUid(kWebUid).has_value());
  EXPECT_TRUE(pods.PodByUid(kCheckoutUid).has_value());
}

TEST(NodePodsTest, InterruptedListKeepsEverything) {
  FakeClock clock;
  NodePods pods(seconds(300), clock.Fn());
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  pods.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  pods.EndList();
  // The list breaks off after one pod; the next list starts over and completes.
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  EXPECT_EQ(pods.Size(), 2u);
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  pods.EndList();
  EXPECT_EQ(pods.Size(), 2u);
  // An EndList with no list begun drops nothing.
  pods.EndList();
  EXPECT_EQ(pods.Size(), 2u);
  // A second BeginList restarts: what only the broken list saw does not count.
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  pods.EndList();
  EXPECT_EQ(pods.Size(), 1u);
  EXPECT_EQ(pods.LivePods().count(kWebUid), 1u);
}

TEST(NodePodsTest, DeletedPodIsKeptForKeepDeletedThenForgotten) {
  FakeClock clock;
  NodePods pods(seconds(300), clock.Fn());
  int changes = 0;
  pods.SetOnChange([&] { ++changes; });
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  EXPECT_EQ(changes, 1);
  uint64_t before = pods.Generation();
  pods.Apply(WatchEventType::kDeleted, json::parse(kDeploymentPod));
  EXPECT_EQ(changes, 2);
  EXPECT_EQ(pods.Size(), 0u);
  EXPECT_GT(pods.Generation(), before);
  before = pods.Generation();
  clock.now += seconds(299);
  ASSERT_TRUE(pods.PodByUid(kCheckoutUid).has_value());
  EXPECT_EQ(pods.PodByUid(kCheckoutUid)->workload, "checkout");
  EXPECT_EQ(pods.Generation(), before);
  clock.now += seconds(1);
  EXPECT_EQ(pods.Generation(), before + 1);  // forgotten: the answer changed
  EXPECT_FALSE(pods.PodByUid(kCheckoutUid).has_value());
  pods.Sweep();
  EXPECT_EQ(changes, 2);  // forgotten by the reader above, nothing left to sweep
  // A deleted pod never seen live is kept the same way.
  pods.Apply(WatchEventType::kDeleted, json::parse(kStatefulSetPod));
  EXPECT_EQ(pods.Size(), 0u);
  EXPECT_TRUE(pods.PodByUid(kWebUid).has_value());
  clock.now += seconds(300);
  pods.Sweep();
  EXPECT_EQ(changes, 4);
  EXPECT_FALSE(pods.PodByUid(kWebUid).has_value());
}

TEST(NodePodsTest, KeepDeletedZeroForgetsAtOnceAndAReAddedPodIsLiveAgain) {
  FakeClock clock;
  NodePods pods(seconds(0), clock.Fn());
  pods.Apply(WatchEventType::kAdded, json::parse(kMirrorPod));
  pods.Apply(WatchEventType::kDeleted, json::parse(kMirrorPod));
  EXPECT_FALSE(pods.PodByUid("9dd4e461268c8034f5c8564e155c67a6").has_value());

  NodePods kept(seconds(60), clock.Fn());
  kept.Apply(WatchEventType::kAdded, json::parse(kMirrorPod));
  kept.Apply(WatchEventType::kDeleted, json::parse(kMirrorPod));
  // The kubelet re-creates the mirror: new metadata.uid, same static pod.
  json again = json::parse(kMirrorPod);
  again["metadata"]["uid"] = "0e0f4b1a-7c33-4d55-9a2e-6f1c0b8d9e21";
  kept.Apply(WatchEventType::kAdded, again);
  EXPECT_EQ(kept.Size(), 1u);
  clock.now += seconds(120);
  EXPECT_TRUE(kept.PodByUid("9dd4e461268c8034f5c8564e155c67a6").has_value());

  // The default clock is the steady clock.
  NodePods real_clock(std::chrono::hours(1));
  real_clock.Apply(WatchEventType::kDeleted, json::parse(kMirrorPod));
  EXPECT_TRUE(real_clock.PodByUid("9dd4e461268c8034f5c8564e155c67a6").has_value());
}

TEST(NodePodsTest, ConcurrentReadersAndWriter) {
  // keep_deleted 0 and a moving clock: readers keep finding pods to forget while the
  // writer adds and deletes them.
  std::atomic<int64_t> ticks{0};
  NodePods pods(std::chrono::nanoseconds(5),
                [&] { return steady_clock::time_point() + std::chrono::nanoseconds(++ticks); });
  int calls = 0;
  pods.SetOnChange([&] { ++calls; });
  const json deployment = json::parse(kDeploymentPod);
  const json web = json::parse(kStatefulSetPod);
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (!stop) {
        pods.PodByUid(kCheckoutUid);
        pods.Generation();
        pods.LivePods();
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    pods.Apply(WatchEventType::kAdded, deployment);
    pods.Apply(i % 2 ? WatchEventType::kDeleted : WatchEventType::kAdded, web);
    pods.Apply(WatchEventType::kDeleted, deployment);
  }
  stop = true;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(pods.Size(), 0u);
  EXPECT_GE(calls, 4000);
}

TEST(NodePodsTest, GenerationAndOnChangeFollowWhatPodByUidAnswers) {
  FakeClock clock;
  NodePods pods(seconds(300), clock.Fn());
  int changes = 0;
  size_t size_seen = 0;
  // Called outside the lock: reading back from the callback must not deadlock.
  pods.SetOnChange([&] {
    ++changes;
    size_seen = pods.Size();
  });
  EXPECT_EQ(pods.Generation(), 0u);
  json pod = json::parse(kStatefulSetPod);
  pods.Apply(WatchEventType::kAdded, pod);
  EXPECT_EQ(pods.Generation(), 1u);
  EXPECT_EQ(changes, 1);
  EXPECT_EQ(size_seen, 1u);
  // A status change PodMeta does not hold: nothing changed.
  pod["status"]["conditions"] = json::array({{{"type", "Ready"}, {"status", "False"}}});
  pods.Apply(WatchEventType::kModified, pod);
  EXPECT_EQ(pods.Generation(), 1u);
  EXPECT_EQ(changes, 1);
  // The creating container got its ID.
  pod["status"]["containerStatuses"][1]["containerID"] =
      "cri-o://7902699be42c8a8e46fbbb4501726517e86b22c56a189f7625a6da49081b2451";
  pods.Apply(WatchEventType::kModified, pod);
  EXPECT_EQ(pods.Generation(), 2u);
  EXPECT_EQ(changes, 2);
  EXPECT_EQ(pods.PodByUid(kWebUid)->containers.at(
                "7902699be42c8a8e46fbbb4501726517e86b22c56a189f7625a6da49081b2451"),
            "logs");
  // A relist carrying the same pod changes nothing.
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, pod);
  pods.EndList();
  EXPECT_EQ(pods.Generation(), 2u);
  EXPECT_EQ(changes, 2);
  // A label changed (the target selector may now match).
  pod["metadata"]["labels"]["tier"] = "edge";
  pods.Apply(WatchEventType::kModified, pod);
  EXPECT_EQ(pods.Generation(), 3u);
  EXPECT_EQ(changes, 3);
}

TEST(NodePodsTest, UndecodablePodIsCountedLoggedOnceAndKeepsWhatIsKnown) {
  FakeClock clock;
  NodePods pods(seconds(300), clock.Fn());
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  pods.EndList();
  json bad = json::parse(kDeploymentPod);
  bad["status"]["podIPs"] = 17;
  testing::internal::CaptureStderr();
  pods.Apply(WatchEventType::kModified, bad);
  pods.Apply(WatchEventType::kModified, bad);
  // A relist carrying it undecodable does not drop it.
  pods.BeginList();
  pods.Apply(WatchEventType::kAdded, bad);
  pods.EndList();
  pods.Apply(WatchEventType::kAdded, json::array({1, 2}));
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(pods.DecodeErrors(), 4u);
  EXPECT_EQ(pods.Size(), 1u);
  EXPECT_EQ(pods.PodByUid(kCheckoutUid)->name, "checkout-7d9c8b6f5-x2x9z");
  // One line for the pod, one for the object without a UID.
  size_t lines = 0;
  for (size_t at = log.find("pod object not understood"); at != std::string::npos;
       at = log.find("pod object not understood", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 2u) << log;
  EXPECT_NE(log.find("status.podIPs is not an array"), std::string::npos) << log;
  EXPECT_NE(log.find("checkout-7d9c8b6f5-x2x9z"), std::string::npos) << log;
  // A DELETED still ends it, undecodable or not.
  pods.Apply(WatchEventType::kDeleted, bad);
  EXPECT_EQ(pods.Size(), 0u);
  EXPECT_TRUE(pods.PodByUid(kCheckoutUid).has_value());
}

// --- PodIpIndex ---

// The Deployment pod with another name, UID and IP (the same workload's next replica).
json Replica(const std::string& suffix, const std::string& uid, const std::string& ip) {
  json pod = json::parse(kDeploymentPod);
  pod["metadata"]["name"] = "checkout-7d9c8b6f5-" + suffix;
  pod["metadata"]["uid"] = uid;
  pod["status"]["podIP"] = ip;
  pod["status"]["podIPs"] = json::array({{{"ip", ip}}});
  return pod;
}

TEST(PodIpIndexTest, FindsPodsByIpv4AndIpv6) {
  PodIpIndex index;
  index.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  index.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  index.Apply(WatchEventType::kAdded, json::parse(kCronJobPod));
  EXPECT_EQ(index.Pods(), 3u);
  EXPECT_EQ(index.Find(Ip("10.244.1.17")),
            (PodIpOwner{"shop", "checkout-7d9c8b6f5-x2x9z", "checkout"}));
  EXPECT_EQ(index.Find(Ip("10.244.2.5")), (PodIpOwner{"frontend", "web-0", "web"}));
  EXPECT_EQ(index.Find(Ip("fd00:10:244:2::5")), (PodIpOwner{"frontend", "web-0", "web"}));
  EXPECT_EQ(index.Find(Ip("fd00:10:244:3::1a")),
            (PodIpOwner{"reports", "nightly-report-28574700-q7x2k", "nightly-report"}));
  EXPECT_EQ(index.Find(Ip("10.244.1.18")), std::nullopt);
}

TEST(PodIpIndexTest, HostNetworkAndFinishedPodsAreNotIndexed) {
  PodIpIndex index;
  index.Apply(WatchEventType::kAdded, json::parse(kDaemonSetPod));
  index.Apply(WatchEventType::kAdded, json::parse(kMirrorPod));
  EXPECT_EQ(index.Pods(), 0u);
  EXPECT_EQ(index.Find(Ip("192.168.10.11")), std::nullopt);
  EXPECT_EQ(index.Generation(), 0u);
  json job = json::parse(kCronJobPod);
  index.Apply(WatchEventType::kAdded, job);
  EXPECT_EQ(index.Pods(), 1u);
  job["status"]["phase"] = "Succeeded";
  index.Apply(WatchEventType::kModified, job);
  EXPECT_EQ(index.Pods(), 0u);
  EXPECT_EQ(index.Find(Ip("fd00:10:244:3::1a")), std::nullopt);
}

TEST(PodIpIndexTest, IpReusedByANewerPodStaysTheNewerPods) {
  json old_pod = Replica("aaaaa", "11111111-1111-4111-8111-111111111111", "10.244.1.40");
  old_pod["metadata"]["creationTimestamp"] = "2024-05-01T10:00:00Z";
  json new_pod = Replica("bbbbb", "22222222-2222-4222-8222-222222222222", "10.244.1.40");
  new_pod["metadata"]["creationTimestamp"] = "2024-05-01T10:05:00Z";
  const PodIpOwner kNew{"shop", "checkout-7d9c8b6f5-bbbbb", "checkout"};

  PodIpIndex index;
  index.Apply(WatchEventType::kAdded, old_pod);
  index.Apply(WatchEventType::kAdded, new_pod);
  EXPECT_EQ(index.Find(Ip("10.244.1.40")), kNew);
  // A late update of the old pod does not take it back; its deletion does not remove it.
  index.Apply(WatchEventType::kModified, old_pod);
  EXPECT_EQ(index.Find(Ip("10.244.1.40")), kNew);
  uint64_t generation = index.Generation();
  index.Apply(WatchEventType::kDeleted, old_pod);
  EXPECT_EQ(index.Find(Ip("10.244.1.40")), kNew);
  EXPECT_EQ(index.Pods(), 1u);
  EXPECT_EQ(index.Generation(), generation);  // it held no IP: no answer changed

  // A relist may carry the old one after the new one: the newer still holds the IP.
  PodIpIndex relisted;
  relisted.BeginList();
  relisted.Apply(WatchEventType::kAdded, new_pod);
  relisted.Apply(WatchEventType::kAdded, old_pod);
  relisted.EndList();
  EXPECT_EQ(relisted.Find(Ip("10.244.1.40")), kNew);
  relisted.Apply(WatchEventType::kDeleted, new_pod);
  EXPECT_EQ(relisted.Find(Ip("10.244.1.40")), std::nullopt);
}

TEST(PodIpIndexTest, RelistRemovesVanishedPodsOnlyWhenComplete) {
  PodIpIndex index;
  index.BeginList();
  index.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  index.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  index.EndList();
  uint64_t generation = index.Generation();
  index.BeginList();
  index.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  index.BeginList();  // broken off: starts over
  index.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  EXPECT_EQ(index.Pods(), 2u);
  index.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  index.EndList();
  EXPECT_EQ(index.Pods(), 2u);
  EXPECT_EQ(index.Generation(), generation);  // the same pods: nothing changed
  index.BeginList();
  index.Apply(WatchEventType::kAdded, json::parse(kStatefulSetPod));
  index.EndList();
  EXPECT_EQ(index.Pods(), 1u);
  EXPECT_EQ(index.Find(Ip("10.244.1.17")), std::nullopt);
  EXPECT_EQ(index.Generation(), generation + 1);
  index.EndList();  // none begun
  EXPECT_EQ(index.Pods(), 1u);
}

TEST(PodIpIndexTest, ChangedIpsAndUndecodablePods) {
  PodIpIndex index;
  json pod = Replica("ccccc", "33333333-3333-4333-8333-333333333333", "10.244.1.50");
  index.Apply(WatchEventType::kAdded, pod);
  pod["status"]["podIPs"].push_back({{"ip", "fd00:10:244:1::50"}});
  index.Apply(WatchEventType::kModified, pod);
  EXPECT_EQ(index.Find(Ip("fd00:10:244:1::50"))->pod, "checkout-7d9c8b6f5-ccccc");
  pod["status"]["podIPs"] = json::array({{{"ip", "fd00:10:244:1::50"}}});
  index.Apply(WatchEventType::kModified, pod);
  EXPECT_EQ(index.Find(Ip("10.244.1.50")), std::nullopt);
  EXPECT_TRUE(index.Find(Ip("fd00:10:244:1::50")).has_value());

  json bad = pod;
  bad["spec"]["hostNetwork"] = 1;
  index.Apply(WatchEventType::kModified, bad);
  EXPECT_EQ(index.DecodeErrors(), 1u);
  EXPECT_TRUE(index.Find(Ip("fd00:10:244:1::50")).has_value());
  index.Apply(WatchEventType::kDeleted, bad);
  EXPECT_EQ(index.Pods(), 0u);
  EXPECT_EQ(index.Find(Ip("fd00:10:244:1::50")), std::nullopt);
}

TEST(PodIpIndexTest, MemoryBytesCountsWhatItHolds) {
  PodIpIndex index;
  EXPECT_EQ(index.MemoryBytes(), 0u);
  index.Apply(WatchEventType::kAdded, json::parse(kDeploymentPod));
  size_t one = index.MemoryBytes();
  // With libstdc++ and glibc: a uid node with its record (160), the uid (36 characters: 48)
  // and name (24: 48), one IP node (48), two interned strings (short, but a node each: 2 x 80)
  // and three bucket arrays of 13 (3 x 112).
  EXPECT_GT(one, 500u);
  EXPECT_LT(one, 1000u);
  for (int i = 0; i < 100; ++i) {
    char uid[40], ip[20];
    std::snprintf(uid, sizeof uid, "44444444-4444-4444-8444-%012d", i);
    std::snprintf(ip, sizeof ip, "10.244.7.%d", i);
    index.Apply(WatchEventType::kAdded, Replica("r" + std::to_string(10000 + i), uid, ip));
  }
  EXPECT_EQ(index.Pods(), 101u);
  size_t per_pod = (index.MemoryBytes() - one) / 100;
  EXPECT_GT(per_pod, 200u);
  EXPECT_LT(per_pod, 400u);
  for (int i = 0; i < 100; ++i) {
    char uid[40];
    std::snprintf(uid, sizeof uid, "44444444-4444-4444-8444-%012d", i);
    index.Apply(WatchEventType::kDeleted,
                Replica("r" + std::to_string(10000 + i), uid, "10.0.0.1"));
  }
  index.Apply(WatchEventType::kDeleted, json::parse(kDeploymentPod));
  EXPECT_EQ(index.Pods(), 0u);
  // Only the bucket arrays, which a std::unordered_map keeps.
  EXPECT_LT(index.MemoryBytes(), 3000u);
}

}  // namespace
}  // namespace kmon
