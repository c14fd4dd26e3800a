#include "collectors/kernel_features.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>

#include <cerrno>
#include <cstring>

namespace kmon {

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

}  // namespace kmon
