// Cgroup path identity (kubelet layouts, systemd units) and the cgroup2 mount finder.
#include "provider/cgroup_identity.h"
#include "provider/workload.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = kmon::fuzz::Text(data, size);
  kmon::CgroupIdentity id = kmon::ParseCgroupPath(text);
  // A pod's container ID is the full 64 hex digits or nothing.
  if (!id.container_id.empty() && id.container_id.size() != 64) __builtin_trap();
  kmon::ParseCgroup2MountPoint(text);
  return 0;
}
