// The Kubernetes provider end to end: the real exporter against the test API server
// (tests/kube_api_server.h), with real cgroups laid out as the kubelet makes them
// (systemd and cgroupfs drivers) and real processes inside that make a known number
// of syscalls or requests. The series must carry the API's names with the exact
// counts, follow pods that come and go, and name a client on another node through
// the pod-IP index.
#include <absl/strings/str_cat.h>
#include <absl/strings/str_replace.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/kube_api_server.h"
#include "tests/root/req_resp.h"
#include "tests/root/root_util.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using testing::ExporterProcess;
using testing::SampleValue;
using testing::TestCgroup;
using testing::TestNetns;

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
// Scrapes are not free: poll the exporter at a gentler pace than the default.
constexpr milliseconds kPoll{50};

// Distinct per test process, so a leftover of an earlier run never matches.
std::string Uid(int n) {
  return absl::StrCat("7e3f0c1a-5b2d-4c8e-9a1f-", absl::Hex(getpid() % 0xffffff, absl::kZeroPad6),
                      absl::Hex(n, absl::kZeroPad6));
}
std::string ContainerId(int n) {
  std::string id =
      absl::StrCat(absl::Hex(getpid(), absl::kZeroPad8), absl::Hex(n, absl::kZeroPad8));
  while (id.size() < 64) id += "0123456789abcdef";
  return id.substr(0, 64);
}
std::string Underscored(const std::string& uid) { return absl::StrReplaceAll(uid, {{"-", "_"}}); }

// The kubelet's cgroup of a container, systemd driver with containerd. Guaranteed
// pods sit right under kubepods, the other QoS classes in a slice of their own.
std::string SystemdContainerCgroup(const std::string& qos, const std::string& uid,
                                   const std::string& id) {
  const std::string pod =
      absl::StrCat("pod", Underscored(uid), ".slice/cri-containerd-", id, ".scope");
  if (qos == "guaranteed") return absl::StrCat("kubepods.slice/kubepods-", pod);
  return absl::StrCat("kubepods.slice/kubepods-", qos, ".slice/kubepods-", qos, "-", pod);
}
// The same with the cgroupfs driver (CRI-O, Docker and containerd all use the bare ID).
std::string CgroupfsContainerCgroup(const std::string& qos, const std::string& uid,
                                    const std::string& id) {
  if (qos == "guaranteed") return absl::StrCat("kubepods/pod", uid, "/", id);
  return absl::StrCat("kubepods/", qos, "/pod", uid, "/", id);
}

struct PodSpec {
  std::string ns, name, uid, node, ip;
  std::string container, container_id;
  std::string owner_kind, owner_name;
  std::map<std::string, std::string> labels;
};

nlohmann::json PodObject(const PodSpec& p) {
  nlohmann::json pod = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata", {{"name", p.name}, {"namespace", p.ns}, {"uid", p.uid}}},
      {"spec", {{"nodeName", p.node}, {"containers", {{{"name", p.container}}}}}},
      {"status",
       {{"phase", "Running"},
        {"containerStatuses",
         {{{"name", p.container}, {"containerID", "containerd://" + p.container_id}}}}}}};
  if (!p.labels.empty()) pod["metadata"]["labels"] = p.labels;
  if (!p.owner_kind.empty()) {
    pod["metadata"]["ownerReferences"] = {{{"apiVersion", "apps/v1"},
                                           {"kind", p.owner_kind},
                                           {"name", p.owner_name},
                                           {"uid", p.uid + "-owner"},
                                           {"controller", true}}};
  }
  if (!p.ip.empty()) {
    pod["status"]["podIP"] = p.ip;
    pod["status"]["podIPs"] = {{{"ip", p.ip}}};
  }
  return pod;
}

std::string Kubeconfig(const KubeApiServer& api) {
  return absl::StrCat(
      "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: ", api.url(),
      "\nusers:\n- name: kmon\n  user:\n    token: s3cret\ncontexts:\n- name: test\n"
      "  context:\n    cluster: test\n    user: kmon\ncurrent-context: test\n");
}

double Value(const ExporterProcess& kmon, const std::string& name,
             const std::map<std::string, std::string>& labels) {
  return SampleValue(kmon.Scrape(), name, labels).value_or(-1);
}

// Makes `n` getppid syscalls; the count is exact (no libc caching, no start-up noise
// inside the child, which is forked, not exec'd).
void Getppid(int n) {
  for (int i = 0; i < n; ++i) syscall(SYS_getppid);
}

const char kCollectorsOff[] =
    "  drops: {enabled: false}\n  blockio: {enabled: false}\n  cpu: {enabled: false}\n"
    "  dns: {enabled: false}\n  pagecache: {enabled: false}\n";

class KubeRootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KMON_REQUIRE_ROOT();
    ASSERT_TRUE(api_.ok());
    api_.RequireToken("s3cret");
    kubeconfig_ = std::make_unique<TempFile>(Kubeconfig(api_));
  }
  // The exporter with `yaml` (which names the kubeconfig) as its config file.
  std::unique_ptr<ExporterProcess> Start(const std::string& yaml) {
    config_ = std::make_unique<TempFile>(yaml);
    auto kmon = std::make_unique<ExporterProcess>(
        std::vector<std::string>{"--config.file=" + config_->path(), "--log.level=debug"});
    EXPECT_TRUE(kmon->WaitReady());
    return kmon;
  }
  std::string KubernetesSection(const std::string& grace) const {
    return absl::StrCat("kubernetes:\n  enabled: true\n  node_name: node-a\n  kubeconfig: ",
                        kubeconfig_->path(), "\n  series_grace: ", grace, "\n");
  }

  KubeApiServer api_;
  std::unique_ptr<TempFile> kubeconfig_, config_;
};

TEST_F(KubeRootTest, NamesTargetsAndGraceFollowThePods) {
  const PodSpec cart{.ns = "shop",
                     .name = "cart-7d9f8b6c4-x2k4p",
                     .uid = Uid(1),
                     .node = "node-a",
                     .ip = "10.244.0.11",
                     .container = "cart",
                     .container_id = ContainerId(1),
                     .owner_kind = "ReplicaSet",
                     .owner_name = "cart-7d9f8b6c4",
                     .labels = {{"app", "cart"}, {"pod-template-hash", "7d9f8b6c4"}}};
  const PodSpec dns{.ns = "kube-system",
                    .name = "coredns-5d78c9869d-q8wzl",
                    .uid = Uid(2),
                    .node = "node-a",
                    .ip = "10.244.0.12",
                    .container = "coredns",
                    .container_id = ContainerId(2)};
  const PodSpec elsewhere{.ns = "web",
                          .name = "frontend-5c6b-abcde",
                          .uid = Uid(3),
                          .node = "node-b",
                          .ip = "10.244.1.7",
                          .container = "frontend",
                          .container_id = ContainerId(3)};
  for (const PodSpec* p : {&cart, &dns, &elsewhere}) api_.Upsert(PodObject(*p));
  auto cart_cg = std::make_unique<TestCgroup>(
      SystemdContainerCgroup("burstable", cart.uid, cart.container_id));
  TestCgroup dns_cg(CgroupfsContainerCgroup("besteffort", dns.uid, dns.container_id));

  auto kmon = Start(absl::StrCat(
      "interval: 1s\ntargets:\n  exclude_namespaces: [kube-system]\n", KubernetesSection("3s"),
      "collectors:\n  tcp: {enabled: false}\n  topology: {enabled: false}\n"
      "  syscalls: {enabled: true, syscalls: [getppid]}\n",
      kCollectorsOff));
  ASSERT_TRUE(Eventually(
      [&] {
        const std::string t = kmon->Scrape();
        return SampleValue(t, "kmon_kubernetes_watch_up", {{"scope", "node"}}) == 1 &&
               SampleValue(t, "kmon_kubernetes_pods", {{"scope", "node"}}) == 2 &&
               SampleValue(t, "kmon_kubernetes_pods", {{"scope", "cluster"}}) == 3;
      },
      milliseconds(5000), kPoll))
      << kmon->Scrape();
  // The watched-cgroups map follows a pod event within a second.
  std::this_thread::sleep_for(milliseconds(1100));

  ASSERT_EQ(testing::RunInCgroup(*cart_cg, [] { Getppid(137); }), 0);
  ASSERT_EQ(testing::RunInCgroup(dns_cg, [] { Getppid(55); }), 0);
  const std::map<std::string, std::string> cart_labels{
      {"namespace", "shop"}, {"pod", cart.name}, {"container", "cart"}, {"syscall", "getppid"}};
  EXPECT_TRUE(Eventually([&] { return Value(*kmon, "kmon_syscalls_total", cart_labels) == 137; },
                         milliseconds(3000), kPoll))
      << kmon->Scrape();
  // The excluded namespace counts nothing, under no name at all.
  const std::string text = kmon->Scrape();
  EXPECT_EQ(SampleValue(text, "kmon_syscalls_total", {{"namespace", "kube-system"}}), std::nullopt);
  EXPECT_EQ(SampleValue(text, "kmon_syscalls_total", {{"pod", dns.uid}}), std::nullopt);
  EXPECT_EQ(SampleValue(text, "kmon_syscalls_total", {{"pod", cart.uid}}), std::nullopt);

  // A pod the API does not know yet is named by its cgroup path (UID, 12-hex ID), and
  // by its names within 2 s of the API telling of it.
  const PodSpec late{.ns = "shop",
                     .name = "late-0",
                     .uid = Uid(4),
                     .node = "node-a",
                     .container = "worker",
                     .container_id = ContainerId(4),
                     .owner_kind = "StatefulSet",
                     .owner_name = "late"};
  TestCgroup late_cg(CgroupfsContainerCgroup("burstable", late.uid, late.container_id));
  std::this_thread::sleep_for(milliseconds(1500));  // a refresh: watched
  ASSERT_EQ(testing::RunInCgroup(late_cg, [] { Getppid(42); }), 0);
  EXPECT_TRUE(Eventually(
      [&] {
        return Value(*kmon, "kmon_syscalls_total",
                     {{"namespace", ""},
                      {"pod", late.uid},
                      {"container", late.container_id.substr(0, 12)}}) == 42;
      },
      milliseconds(3000), kPoll))
      << kmon->Scrape();
  api_.Upsert(PodObject(late));
  const auto told = Clock::now();
  EXPECT_TRUE(Eventually(
      [&] {
        return Value(*kmon, "kmon_syscalls_total",
                     {{"namespace", "shop"}, {"pod", "late-0"}, {"container", "worker"}}) == 42;
      },
      milliseconds(2000), kPoll))
      << kmon->Scrape();
  EXPECT_LT(Clock::now() - told, std::chrono::seconds(2));

  // A deleted pod keeps its series, under its names, for the grace (3s), then they go.
  api_.Delete(cart.ns, cart.name);
  cart_cg.reset();
  const auto deleted = Clock::now();
  std::this_thread::sleep_for(milliseconds(1000));
  EXPECT_EQ(Value(*kmon, "kmon_syscalls_total", cart_labels), 137) << kmon->Scrape();
  EXPECT_TRUE(Eventually([&] { return Value(*kmon, "kmon_syscalls_total", cart_labels) == -1; },
                         milliseconds(5000), kPoll))
      << kmon->Scrape();
  EXPECT_GE(Clock::now() - deleted, std::chrono::seconds(3));
  EXPECT_EQ(Value(*kmon, "kmon_kubernetes_pods", {{"scope", "node"}}), 2);  // dns and late
  EXPECT_EQ(kmon->Terminate(), 0);
}

// A client on another node: its pod's address is one no socket on this host has
// (a router namespace source-NATs the client to it), and the API places that pod on
// node-b. The edge names the client pod, and its workload with granularity workload.
TEST_F(KubeRootTest, CrossNodeClientIsNamedThroughThePodIpIndex) {
  const PodSpec server{.ns = "shop",
                       .name = "cart-7d9f8b6c4-x2k4p",
                       .uid = Uid(11),
                       .node = "node-a",
                       .ip = "10.99.0.2",
                       .container = "cart",
                       .container_id = ContainerId(11),
                       .owner_kind = "ReplicaSet",
                       .owner_name = "cart-7d9f8b6c4",
                       .labels = {{"pod-template-hash", "7d9f8b6c4"}}};
  const PodSpec client{.ns = "web",
                       .name = "frontend-5c6b9d7f8-abcde",
                       .uid = Uid(12),
                       .node = "node-b",
                       .ip = "10.244.1.7",
                       .container = "frontend",
                       .container_id = ContainerId(12),
                       .owner_kind = "ReplicaSet",
                       .owner_name = "frontend-5c6b9d7f8",
                       .labels = {{"pod-template-hash", "5c6b9d7f8"}}};
  api_.Upsert(PodObject(server));
  api_.Upsert(PodObject(client));

  // client (10.98.0.2) -- router (SNAT to 10.244.1.7) -- server pod (10.99.0.2)
  TestNetns cl, router, srv;
  const std::string tag = std::to_string(getpid() % 100000);
  const std::string c0 = "kc" + tag, r0 = "kr" + tag, r1 = "ks" + tag, s0 = "kt" + tag;
  ASSERT_EQ(testing::Sh(absl::StrCat(
                "ip link add ", c0, " netns ", cl.name(), " type veth peer name ", r0, " netns ",
                router.name(), " && ip link add ", s0, " netns ", srv.name(),
                " type veth peer name ", r1, " netns ", router.name(), " && ip -n ", cl.name(),
                " addr add 10.98.0.2/24 dev ", c0, " && ip -n ", cl.name(), " link set ", c0,
                " up && ip -n ", cl.name(), " route add default via 10.98.0.1", " && ip -n ",
                router.name(), " addr add 10.98.0.1/24 dev ", r0, " && ip -n ", router.name(),
                " addr add 10.99.0.1/24 dev ", r1, " && ip -n ", router.name(), " link set ", r0,
                " up && ip -n ", router.name(), " link set ", r1, " up && ip -n ", srv.name(),
                " addr add 10.99.0.2/24 dev ", s0, " && ip -n ", srv.name(), " link set ", s0,
                " up && ip -n ", srv.name(), " route add 10.244.1.0/24 via 10.99.0.1",
                " && ip netns exec ", router.name(), " sysctl -qw net.ipv4.ip_forward=1")),
            0);
  TempFile nat(
      "table ip kmon_test_nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
      "  ip saddr 10.98.0.2 snat to 10.244.1.7\n }\n}\n");
  ASSERT_EQ(testing::Sh(absl::StrCat("ip netns exec ", router.name(), " nft -f ", nat.path())), 0);

  TestCgroup server_cg(SystemdContainerCgroup("guaranteed", server.uid, server.container_id));
  TestCgroup client_cg;  // on "node-b": a cgroup kmon knows nothing of
  auto yaml = [&](const std::string& granularity) {
    return absl::StrCat("interval: 1s\n", KubernetesSection("5m"),
                        "collectors:\n  tcp: {enabled: true}\n  topology: {enabled: true, "
                        "granularity: ",
                        granularity, "}\n  syscalls: {enabled: false}\n", kCollectorsOff);
  };
  auto kmon = Start(yaml("pod"));
  ASSERT_TRUE(Eventually(
      [&] {
        return Value(*kmon, "kmon_kubernetes_pods", {{"scope", "cluster"}}) == 2;
      },
      milliseconds(5000), kPoll))
      << kmon->Scrape();
  // The tcp collector writes the index's addresses into its control map on the change.
  std::this_thread::sleep_for(milliseconds(1000));

  testing::Server s = testing::StartServer(server_cg, AF_INET, "0.0.0.0", 1, srv.name());
  pid_t c = testing::SpawnInCgroup(
      client_cg, [&] { testing::Requests(AF_INET, "10.99.0.2", s.port, 25, 1); }, cl.name());
  ASSERT_EQ(testing::WaitChild(c), 0);
  ASSERT_EQ(testing::WaitChild(s.pid), 0);

  const std::string port = std::to_string(s.port);
  EXPECT_TRUE(Eventually(
      [&] {
        return Value(*kmon, "kmon_topology_requests_total",
                     {{"client", "web/" + client.name},
                      {"server", "shop/" + server.name},
                      {"client_namespace", "web"},
                      {"server_namespace", "shop"},
                      {"server_port", port}}) == 25;
      },
      milliseconds(3000), kPoll))
      << kmon->Scrape();
  EXPECT_EQ(
      Value(*kmon, "kmon_topology_requests_total", {{"client", "external"}, {"server_port", port}}),
      -1);

  // By workload: the Deployments behind both ReplicaSets; the counts carry over.
  config_->Rewrite(yaml("workload"));
  kmon->Signal(SIGHUP);
  EXPECT_TRUE(Eventually(
      [&] {
        return Value(
                   *kmon, "kmon_topology_requests_total",
                   {{"client", "web/frontend"}, {"server", "shop/cart"}, {"server_port", port}}) ==
               25;
      },
      milliseconds(3000), kPoll))
      << kmon->Scrape();
  EXPECT_EQ(kmon->Terminate(), 0);
}

}  // namespace
}  // namespace kmon
