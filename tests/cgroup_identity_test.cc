#include "provider/cgroup_identity.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kmon {
namespace {

// Pod UID as the API server writes it, and as the systemd driver spells it in slice names.
const std::string kUid = "0c4b8f6e-1d2a-4c3b-9e8f-123456789abc";
const std::string kUidSystemd = "0c4b8f6e_1d2a_4c3b_9e8f_123456789abc";
// Static (mirror) pods carry a 32-hex config hash as UID: no dashes at all.
const std::string kStaticUid = "8daa50c3a64c9ff60bb9eab7b44b56fd";
const std::string kId = "3f1e9a7c5b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

struct Case {
  std::string path;
  std::string pod_uid;
  std::string container_id;
  std::string runtime;
  std::string qos;
  std::string host_name;
};

void ExpectCases(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path);
    CgroupIdentity got = ParseCgroupPath(c.path);
    EXPECT_EQ(got.pod_uid, c.pod_uid);
    EXPECT_EQ(got.container_id, c.container_id);
    EXPECT_EQ(got.runtime, c.runtime);
    EXPECT_EQ(got.qos, c.qos);
    EXPECT_EQ(got.host_name, c.host_name);
    EXPECT_EQ(got.IsPod(), !c.pod_uid.empty());
  }
}

TEST(CgroupIdentityTest, FixtureIdIsFullLength) {
  ASSERT_EQ(kId.size(), 64u);
  ASSERT_EQ(kUid.size(), 36u);
}

TEST(CgroupIdentityTest, SystemdDriverEveryRuntimeAndQos) {
  const std::string g = "/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice/";
  const std::string bu =
      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidSystemd + ".slice/";
  const std::string be =
      "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUidSystemd + ".slice/";
  ExpectCases({
      {g + "cri-containerd-" + kId + ".scope", kUid, kId, "containerd", "guaranteed", ""},
      {bu + "cri-containerd-" + kId + ".scope", kUid, kId, "containerd", "burstable", ""},
      {be + "cri-containerd-" + kId + ".scope", kUid, kId, "containerd", "besteffort", ""},
      {g + "crio-" + kId + ".scope", kUid, kId, "cri-o", "guaranteed", ""},
      {bu + "crio-" + kId + ".scope", kUid, kId, "cri-o", "burstable", ""},
      {be + "crio-" + kId + ".scope", kUid, kId, "cri-o", "besteffort", ""},
      {g + "docker-" + kId + ".scope", kUid, kId, "docker", "guaranteed", ""},
      {bu + "docker-" + kId + ".scope", kUid, kId, "docker", "burstable", ""},
      {be + "docker-" + kId + ".scope", kUid, kId, "docker", "besteffort", ""},
  });
}

TEST(CgroupIdentityTest, CgroupfsDriverEveryRuntimeAndQos) {
  const std::string g = "/kubepods/pod" + kUid + "/";
  const std::string bu = "/kubepods/burstable/pod" + kUid + "/";
  const std::string be = "/kubepods/besteffort/pod" + kUid + "/";
  ExpectCases({
      // containerd and Docker name the directory by the bare ID: runtime unknown.
      {g + kId, kUid, kId, "", "guaranteed", ""},
      {bu + kId, kUid, kId, "", "burstable", ""},
      {be + kId, kUid, kId, "", "besteffort", ""},
      // CRI-O keeps its prefix under cgroupfs too.
      {g + "crio-" + kId, kUid, kId, "cri-o", "guaranteed", ""},
      {bu + "crio-" + kId, kUid, kId, "cri-o", "burstable", ""},
      {be + "crio-" + kId, kUid, kId, "cri-o", "besteffort", ""},
  });
}

TEST(CgroupIdentityTest, PodOwnCgroupHasNoContainer) {
  ExpectCases({
      {"/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice", kUid, "", "", "guaranteed", ""},
      {"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidSystemd + ".slice",
       kUid, "", "", "burstable", ""},
      {"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUidSystemd +
           ".slice/",
       kUid, "", "", "besteffort", ""},
      {"/kubepods/pod" + kUid, kUid, "", "", "guaranteed", ""},
      {"/kubepods/burstable/pod" + kUid, kUid, "", "", "burstable", ""},
      {"/kubepods/besteffort/pod" + kUid, kUid, "", "", "besteffort", ""},
  });
}

TEST(CgroupIdentityTest, CrioConmonCountsAsThePod) {
  ExpectCases({
      {"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidSystemd +
           ".slice/crio-conmon-" + kId + ".scope",
       kUid, "", "", "burstable", ""},
      {"/kubepods/besteffort/pod" + kUid + "/crio-conmon-" + kId, kUid, "", "", "besteffort", ""},
  });
}

TEST(CgroupIdentityTest, KubepodsNestedUnderANodePrefix) {
  ExpectCases({
      // kind: kubelet's cgroup root is kubelet.slice inside the node container.
      {"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
       "kubelet-kubepods-besteffort-pod" +
           kUidSystemd + ".slice/cri-containerd-" + kId + ".scope",
       kUid, kId, "containerd", "besteffort", ""},
      {"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + kUidSystemd +
           ".slice/cri-containerd-" + kId + ".scope",
       kUid, kId, "containerd", "guaranteed", ""},
      // The node is itself a Docker container (kind, minikube) seen from the host.
      {"/system.slice/docker-" + kId +
           ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
           "kubelet-kubepods-burstable-pod" +
           kUidSystemd + ".slice/cri-containerd-" + kId + ".scope",
       kUid, kId, "containerd", "burstable", ""},
      {"/docker/" + kId + "/kubepods/burstable/pod" + kUid + "/" + kId, kUid, kId, "", "burstable",
       ""},
      // runc's "slice:prefix:id" kept verbatim as one directory under containerd.service.
      {"/system.slice/containerd.service/kubepods-burstable-pod" + kUidSystemd +
           ".slice:cri-containerd:" + kId,
       kUid, kId, "containerd", "burstable", ""},
      {"/system.slice/containerd.service/kubepods-pod" + kUidSystemd +
           ".slice:cri-containerd:" + kId,
       kUid, kId, "containerd", "guaranteed", ""},
  });
}

TEST(CgroupIdentityTest, StaticPodUidAndSubCgroupsOfAContainer) {
  ExpectCases({
      {"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kStaticUid +
           ".slice/cri-containerd-" + kId + ".scope",
       kStaticUid, kId, "containerd", "burstable", ""},
      // A container that made its own sub-cgroups (CRI-O "<scope>/container", systemd in a pod)
      // is still that container.
      {"/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice/crio-" + kId + ".scope/container",
       kUid, kId, "cri-o", "guaranteed", ""},
      // An unrecognised leaf in a pod is the pod's, with no container to name.
      {"/kubepods/burstable/pod" + kUid + "/something-else", kUid, "", "", "burstable", ""},
  });
}

TEST(CgroupIdentityTest, KubeletStructureThatIsNotAPod) {
  ExpectCases({
      {"/kubepods.slice", "", "", "", "", "kubepods.slice"},
      {"/kubepods.slice/kubepods-burstable.slice", "", "", "", "", "kubepods-burstable.slice"},
      {"/kubepods/burstable", "", "", "", "", "burstable"},
      // "pod<uid>" outside a kubepods tree is just a directory name.
      {"/pod" + kUid, "", "", "", "", "pod" + kUid},
      {"/somewhere/burstable/pod" + kUid, "", "", "", "", "pod" + kUid},
      // Not a UID alphabet.
      {"/kubepods/podzzz", "", "", "", "", "podzzz"},
  });
}

TEST(CgroupIdentityTest, HostProcesses) {
  ExpectCases({
      {"/", "", "", "", "", "/"},
      {"", "", "", "", "", "/"},
      {"/system.slice/nginx.service", "", "", "", "", "nginx.service"},
      {"/system.slice/docker-" + kId + ".scope", "", kId, "docker", "", "docker-3f1e9a7c5b2d"},
      {"/user.slice/user-0.slice/session-3.scope", "", "", "", "", "session-3.scope"},
      {"/kmon-test-42", "", "", "", "", "kmon-test-42"},
      {"/kmon-test-42/", "", "", "", "", "kmon-test-42"},
      // A unit's own sub-cgroups are still that unit.
      {"/system.slice/foo.service/sub", "", "", "", "", "foo.service"},
      {"/system.slice/foo.service/sub/deeper", "", "", "", "", "foo.service"},
      // The innermost unit wins: a node running inside a container.
      {"/system.slice/docker-" + kId + ".scope/system.slice/kubelet.service", "", "", "", "",
       "kubelet.service"},
      {"/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope", "", "", "", "",
       "app-foo.scope"},
      // No unit at all: the leaf.
      {"/system.slice", "", "", "", "", "system.slice"},
      {"/machine/qemu-1", "", "", "", "", "qemu-1"},
      // Docker under the cgroupfs driver, and other runtimes' scopes outside Kubernetes.
      {"/docker/" + kId, "", kId, "docker", "", "docker-3f1e9a7c5b2d"},
      {"/system.slice/cri-containerd-" + kId + ".scope", "", kId, "containerd", "",
       "cri-containerd-3f1e9a7c5b2d"},
      {"/machine.slice/crio-" + kId + ".scope", "", kId, "cri-o", "", "crio-3f1e9a7c5b2d"},
      // Looks like a runtime scope but is no 64-hex ID: an ordinary unit.
      {"/system.slice/docker-compose.scope", "", "", "", "", "docker-compose.scope"},
      {"/system.slice/docker-cafe.scope", "", "", "", "", "docker-cafe.scope"},
      {"/system.slice/docker.service", "", "", "", "", "docker.service"},
  });
}

}  // namespace
}  // namespace kmon
