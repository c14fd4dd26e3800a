#include "collectors/kernel_features.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstring>

#include "collectors/bpf_util.h"

namespace kmon {

int KernelFeatures::LoadSkeleton(bpf_object_skeleton* skeleton) {
  return bpf_object__load_skeleton(skeleton);
}

absl::Status LoadError(const std::string& collector, int err) {
  absl::Status st = BpfError(collector, "load", err);
  if (err != -ENOMEM && err != ENOMEM) return st;
  return absl::Status(st.code(), absl::StrCat(st.message(),
                                              " (a BPF map could not be allocated: BPF memory "
                                              "is charged to kmon's memory cgroup; raise its "
                                              "memory limit)"));
}

RunningKernelFeatures::~RunningKernelFeatures() { Release(); }

absl::StatusOr<const btf*> RunningKernelFeatures::VmlinuxBtf() {
  std::lock_guard<std::mutex> lock(mu_);
  if (vmlinux_ == nullptr) {
    vmlinux_ = btf__load_vmlinux_btf();
    if (vmlinux_ == nullptr) {
      const int err = errno;
      return absl::FailedPreconditionError(
          absl::StrCat("load vmlinux BTF: ", std::strerror(err),
                       " (kmon needs a kernel built with CONFIG_DEBUG_INFO_BTF)"));
    }
  }
  return vmlinux_;
}

void RunningKernelFeatures::Release() {
  std::lock_guard<std::mutex> lock(mu_);
  btf__free(vmlinux_);
  vmlinux_ = nullptr;
}

bool BtfHasType(const btf* types, const char* name, int kind) {
  return types != nullptr && btf__find_by_name_kind(types, name, kind) > 0;
}

bool StructHasMember(const btf* types, const char* type, const char* member) {
  if (types == nullptr) return false;
  const int id = btf__find_by_name_kind(types, type, BTF_KIND_STRUCT);
  if (id <= 0) return false;
  const btf_type* t = btf__type_by_id(types, id);
  const btf_member* m = btf_members(t);
  for (int i = 0; i < btf_vlen(t); ++i, ++m) {
    const char* name = btf__name_by_offset(types, m->name_off);
    if (name != nullptr && std::strcmp(name, member) == 0) return true;
  }
  return false;
}

}  // namespace kmon
