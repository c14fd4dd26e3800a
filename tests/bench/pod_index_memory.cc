// Benchmark: what the cluster-wide pod-IP index costs in memory. Generates v1.Pod list
// pages shaped like a real API server's (metadata with labels, annotations, owner
// references and managedFields; spec with containers, probes, volumes; status with
// conditions, container statuses and pod IPs; about 7 KB of JSON a pod), feeds them through
// DecodePod and PodIpIndex::Apply as the watcher would (a page of 500 parsed, applied and
// dropped at a time), and prints for 10k and 100k pods: pods indexed, MemoryBytes, bytes per
// pod, and the process RSS growth (after malloc_trim, from /proc/self/statm). No root.
//
//   build/tests/pod_index_memory [pods...]    (default: 10000 100000)
//   build/tests/pod_index_memory --sample     (prints one generated pod)
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "provider/kubernetes/pod_ip_index.h"

namespace {

using nlohmann::json;

constexpr size_t kPageSize = 500;  // the watcher's list page (limit=500)
constexpr int kNamespaces = 60;

size_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

class Generator {
 public:
  explicit Generator(uint64_t seed) : rng_(seed) {}

  std::string Hex(size_t n) {
    static const char kDigits[] = "0123456789abcdef";
    std::string s(n, '0');
    for (char& c : s) c = kDigits[rng_() % 16];
    return s;
  }
  std::string Alnum(size_t n) {  // the alphabet of generated names (no vowels)
    static const char kChars[] = "bcdfghjklmnpqrstvwxz2456789";
    std::string s(n, 'b');
    for (char& c : s) c = kChars[rng_() % (sizeof kChars - 1)];
    return s;
  }
  std::string Uuid() {
    std::string h = Hex(32);
    return h.substr(0, 8) + "-" + h.substr(8, 4) + "-4" + h.substr(13, 3) + "-a" + h.substr(17, 3) +
           "-" + h.substr(20, 12);
  }
  uint64_t Next() { return rng_(); }

 private:
  std::mt19937_64 rng_;
};

json ManagedFields(const std::string& time) {
  json spec_fields = {
      {"f:containers",
       {{"k:{\"name\":\"app\"}",
         {{".", json::object()},
          {"f:env", {{"k:{\"name\":\"LOG_LEVEL\"}", {{".", json::object()}}}}},
          {"f:image", json::object()},
          {"f:imagePullPolicy", json::object()},
          {"f:livenessProbe", {{"f:httpGet", {{"f:path", json::object()}}}}},
          {"f:ports",
           {{"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}", {{".", json::object()}}}}},
          {"f:resources",
           {{"f:limits", {{"f:memory", json::object()}}},
            {"f:requests", {{"f:cpu", json::object()}}}}}}}}},
      {"f:dnsPolicy", json::object()},
      {"f:enableServiceLinks", json::object()},
      {"f:restartPolicy", json::object()},
      {"f:schedulerName", json::object()},
      {"f:securityContext", json::object()},
      {"f:terminationGracePeriodSeconds", json::object()}};
  json status_fields = {
      {"f:conditions",
       {{"k:{\"type\":\"ContainersReady\"}", {{".", json::object()}, {"f:status", json::object()}}},
        {"k:{\"type\":\"Initialized\"}", {{".", json::object()}, {"f:status", json::object()}}},
        {"k:{\"type\":\"Ready\"}", {{".", json::object()}, {"f:status", json::object()}}}}},
      {"f:containerStatuses", json::object()},
      {"f:hostIP", json::object()},
      {"f:phase", json::object()},
      {"f:podIP", json::object()},
      {"f:podIPs", {{".", json::object()}, {"k:{\"ip\":\"10.0.0.1\"}", json::object()}}},
      {"f:startTime", json::object()}};
  return json::array(
      {{{"apiVersion", "v1"},
        {"fieldsType", "FieldsV1"},
        {"fieldsV1",
         {{"f:metadata",
           {{"f:generateName", json::object()},
            {"f:labels", {{".", json::object()}, {"f:app.kubernetes.io/name", json::object()}}},
            {"f:ownerReferences", {{".", json::object()}, {"k:{\"uid\":\"x\"}", json::object()}}}}},
          {"f:spec", spec_fields}}},
        {"manager", "kube-controller-manager"},
        {"operation", "Update"},
        {"time", time}},
       {{"apiVersion", "v1"},
        {"fieldsType", "FieldsV1"},
        {"fieldsV1", {{"f:status", status_fields}}},
        {"manager", "kubelet"},
        {"operation", "Update"},
        {"subresource", "status"},
        {"time", time}}});
}

json Container(const std::string& name, const std::string& image, int port) {
  return {
      {"name", name},
      {"image", image},
      {"imagePullPolicy", "IfNotPresent"},
      {"env",
       {{{"name", "LOG_LEVEL"}, {"value", "info"}},
        {{"name", "POD_NAME"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "metadata.name"}}}}}},
        {{"name", "POD_IP"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}},
        {{"name", "OTEL_EXPORTER_OTLP_ENDPOINT"}, {"value", "http://otel-collector.obs:4317"}},
        {{"name", "GOMAXPROCS"},
         {"valueFrom", {{"resourceFieldRef", {{"divisor", "1"}, {"resource", "limits.cpu"}}}}}}}},
      {"ports", {{{"containerPort", port}, {"name", "http"}, {"protocol", "TCP"}}}},
      {"resources",
       {{"limits", {{"cpu", "1"}, {"memory", "512Mi"}}},
        {"requests", {{"cpu", "100m"}, {"memory", "128Mi"}}}}},
      {"livenessProbe",
       {{"httpGet", {{"path", "/healthz"}, {"port", port}, {"scheme", "HTTP"}}},
        {"failureThreshold", 3},
        {"periodSeconds", 10},
        {"successThreshold", 1},
        {"timeoutSeconds", 1}}},
      {"readinessProbe",
       {{"httpGet", {{"path", "/ready"}, {"port", port}, {"scheme", "HTTP"}}},
        {"failureThreshold", 3},
        {"periodSeconds", 5},
        {"successThreshold", 1},
        {"timeoutSeconds", 1}}},
      {"securityContext",
       {{"allowPrivilegeEscalation", false},
        {"capabilities", {{"drop", {"ALL"}}}},
        {"readOnlyRootFilesystem", true},
        {"runAsNonRoot", true}}},
      {"terminationMessagePath", "/dev/termination-log"},
      {"terminationMessagePolicy", "File"},
      {"volumeMounts",
       {{{"mountPath", "/var/run/secrets/kubernetes.io/serviceaccount"},
         {"name", "kube-api-access-" + name.substr(0, 5)},
         {"readOnly", true}}}}};
}

json ContainerStatus(Generator& gen, const std::string& name, const std::string& image,
                     const std::string& time) {
  return {{"containerID", "containerd://" + gen.Hex(64)},
          {"image", image},
          {"imageID", "docker.io/library/" + name + "@sha256:" + gen.Hex(64)},
          {"lastState", json::object()},
          {"name", name},
          {"ready", true},
          {"restartCount", static_cast<int>(gen.Next() % 3)},
          {"started", true},
          {"state", {{"running", {{"startedAt", time}}}}}};
}

// One pod of the generated cluster; `i` picks its kind and place.
json Pod(Generator& gen, size_t i) {
  int ns = static_cast<int>(i % kNamespaces);
  std::string ns_name = "team-" + std::to_string(ns) + "-prod";
  size_t app = (i / kNamespaces) % 40;
  std::string app_name = "service-" + std::to_string(app) + "-api";
  std::string time = "2024-05-0" + std::to_string(1 + i % 9) + "T1" + std::to_string(i % 10) + ":" +
                     std::to_string(10 + i % 50) + ":00Z";
  // One ReplicaSet per Deployment: its pod-template-hash follows from the Deployment.
  std::string hash = Generator(ns * 1000 + app).Alnum(10);
  json labels = {{"app.kubernetes.io/name", app_name},
                 {"app.kubernetes.io/instance", app_name + "-prod"},
                 {"app.kubernetes.io/version", "1." + std::to_string(i % 20) + ".3"},
                 {"app.kubernetes.io/component", "backend"},
                 {"app.kubernetes.io/part-of", "shop"},
                 {"app.kubernetes.io/managed-by", "Helm"},
                 {"team", "team-" + std::to_string(ns)},
                 {"env", "prod"}};
  std::string name, owner_kind, owner_name, owner_api = "apps/v1";
  bool host_network = false;
  std::string phase = "Running";
  switch (i % 20) {
    case 0:
    case 1:  // DaemonSet pods: half of them on the host network (CNI, node agents)
      owner_kind = "DaemonSet";
      owner_name = app_name + "-agent";
      name = owner_name + "-" + gen.Alnum(5);
      host_network = i % 40 < 20;
      labels["controller-revision-hash"] = gen.Alnum(10);
      break;
    case 2:
    case 3:
      owner_kind = "StatefulSet";
      owner_name = app_name + "-db";
      name = owner_name + "-" + std::to_string(i / (kNamespaces * 40));
      labels["controller-revision-hash"] = owner_name + "-" + gen.Alnum(10);
      break;
    case 4:  // a CronJob's Job; one in three done
      owner_api = "batch/v1";
      owner_kind = "Job";
      owner_name = app_name + "-sync-" + std::to_string(28500000 + i % 90000);
      name = owner_name + "-" + gen.Alnum(5);
      labels["job-name"] = owner_name;
      if (i % 3 == 0) phase = "Succeeded";
      break;
    case 5:  // bare pod
      name = "debug-" + gen.Alnum(6);
      break;
    default:
      owner_kind = "ReplicaSet";
      owner_name = app_name + "-" + hash;
      name = owner_name + "-" + gen.Alnum(5);
      labels["pod-template-hash"] = hash;
      break;
  }
  json metadata = {{"name", name},
                   {"namespace", ns_name},
                   {"uid", gen.Uuid()},
                   {"resourceVersion", std::to_string(100000 + i)},
                   {"creationTimestamp", time},
                   {"labels", labels},
                   {"annotations",
                    {{"checksum/config", gen.Hex(64)},
                     {"kubectl.kubernetes.io/restartedAt", time},
                     {"prometheus.io/scrape", "true"},
                     {"prometheus.io/port", "9090"},
                     {"cni.projectcalico.org/containerID", gen.Hex(64)},
                     {"cni.projectcalico.org/podIP", "10.0.0.1/32"}}},
                   {"managedFields", ManagedFields(time)}};
  if (!owner_kind.empty()) {
    metadata["generateName"] = owner_name + "-";
    metadata["ownerReferences"] = {{{"apiVersion", owner_api},
                                    {"blockOwnerDeletion", true},
                                    {"controller", true},
                                    {"kind", owner_kind},
                                    {"name", owner_name},
                                    {"uid", gen.Uuid()}}};
  }
  std::string node = "node-" + std::to_string(i % 500);
  std::string image = "registry.example.com/shop/" + app_name + ":1.4.2";
  std::string sidecar = "docker.io/envoyproxy/envoy:v1.29.1";
  json spec = {
      {"containers", {Container("app", image, 8080), Container("envoy", sidecar, 15001)}},
      {"dnsPolicy", "ClusterFirst"},
      {"enableServiceLinks", true},
      {"nodeName", node},
      {"preemptionPolicy", "PreemptLowerPriority"},
      {"priority", 0},
      {"restartPolicy", "Always"},
      {"schedulerName", "default-scheduler"},
      {"securityContext", {{"fsGroup", 2000}, {"runAsUser", 1000}}},
      {"serviceAccount", app_name},
      {"serviceAccountName", app_name},
      {"terminationGracePeriodSeconds", 30},
      {"tolerations",
       {{{"effect", "NoExecute"},
         {"key", "node.kubernetes.io/not-ready"},
         {"operator", "Exists"},
         {"tolerationSeconds", 300}},
        {{"effect", "NoExecute"},
         {"key", "node.kubernetes.io/unreachable"},
         {"operator", "Exists"},
         {"tolerationSeconds", 300}}}},
  };
  json downward = {
      {"items",
       json::array({{{"fieldRef", {{"apiVersion", "v1"}, {"fieldPath", "metadata.namespace"}}},
                     {"path", "namespace"}}})}};
  json ca = {{"items", json::array({{{"key", "ca.crt"}, {"path", "ca.crt"}}})},
             {"name", "kube-root-ca.crt"}};
  json sources =
      json::array({{{"serviceAccountToken", {{"expirationSeconds", 3607}, {"path", "token"}}}},
                   {{"configMap", ca}},
                   {{"downwardAPI", downward}}});
  spec["volumes"] = json::array({{{"name", "kube-api-access-app"},
                                  {"projected", {{"defaultMode", 420}, {"sources", sources}}}}});
  if (host_network) spec["hostNetwork"] = true;
  std::string host_ip =
      "192.168." + std::to_string(i % 500 / 250) + "." + std::to_string(i % 250 + 1);
  // Pod CIDR 10.0.0.0/8 holds 16M addresses: the i-th pod gets the i-th one.
  std::string ip = host_network
                       ? host_ip
                       : "10." + std::to_string((i >> 16) & 255) + "." +
                             std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255);
  json ips = {{{"ip", ip}}};
  if (!host_network && i % 5 == 0) {  // a fifth dual-stack
    char v6[64];
    std::snprintf(v6, sizeof v6, "fd00:10:%x:%x::%x", static_cast<unsigned>(i >> 16),
                  static_cast<unsigned>((i >> 8) & 255), static_cast<unsigned>(i & 255));
    ips.push_back({{"ip", v6}});
  }
  auto condition = [&](const char* type) {
    return json{{"lastProbeTime", nullptr},
                {"lastTransitionTime", time},
                {"status", "True"},
                {"type", type}};
  };
  json status = {
      {"conditions",
       {condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
        condition("ContainersReady"), condition("PodScheduled")}},
      {"containerStatuses",
       {ContainerStatus(gen, "app", image, time), ContainerStatus(gen, "envoy", sidecar, time)}},
      {"hostIP", host_ip},
      {"hostIPs", {{{"ip", host_ip}}}},
      {"phase", phase},
      {"podIP", ip},
      {"podIPs", ips},
      {"qosClass", "Burstable"},
      {"startTime", time}};
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", std::move(metadata)},
          {"spec", std::move(spec)},
          {"status", std::move(status)}};
}

void Measure(size_t pods) {
  Generator gen(pods);
  malloc_trim(0);
  size_t rss_before = RssBytes();
  auto index = std::make_unique<kmon::PodIpIndex>();
  size_t json_bytes = 0;
  double apply_seconds = 0;
  index->BeginList();
  for (size_t first = 0; first < pods; first += kPageSize) {
    std::string page;
    {
      json list = {{"apiVersion", "v1"},
                   {"kind", "PodList"},
                   {"metadata", {{"resourceVersion", "123456"}}},
                   {"items", json::array()}};
      for (size_t i = first; i < std::min(pods, first + kPageSize); ++i) {
        list["items"].push_back(Pod(gen, i));
      }
      page = list.dump();
    }
    json_bytes += page.size();
    auto start = std::chrono::steady_clock::now();
    json list = json::parse(page);
    for (const json& pod : list["items"]) index->Apply(kmon::WatchEventType::kAdded, pod);
    apply_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  index->EndList();
  malloc_trim(0);
  size_t rss_after = RssBytes();
  size_t memory = index->MemoryBytes();
  size_t indexed = index->Pods();
  std::printf("pods generated %zu (%.1f KB JSON each), indexed %zu, decode errors %" PRIu64
              "\n  MemoryBytes %zu (%.1f MB), %.0f bytes per indexed pod\n"
              "  RSS growth %zu (%.1f MB), %.0f bytes per indexed pod\n"
              "  parse+decode+apply %.1f us per pod\n",
              pods, json_bytes / 1024.0 / pods, indexed, index->DecodeErrors(), memory,
              memory / 1048576.0, static_cast<double>(memory) / indexed, rss_after - rss_before,
              (rss_after - rss_before) / 1048576.0,
              static_cast<double>(rss_after - rss_before) / indexed, apply_seconds * 1e6 / pods);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--sample") {  // what a generated pod looks like
    Generator gen(1);
    std::printf("%s\n", Pod(gen, 6).dump(2).c_str());
    return 0;
  }
  std::vector<size_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::strtoull(argv[i], nullptr, 10));
  if (sizes.empty()) sizes = {10000, 100000};
  for (size_t pods : sizes) Measure(pods);
  return 0;
}
