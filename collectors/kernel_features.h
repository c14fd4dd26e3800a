// Feature probes of the running kernel (which tracepoints, BTF types, function
// arguments it has), behind an interface: collectors ask it before they load, so
// a kernel without a hook becomes a clear start failure, and a test can say what
// "the kernel" has — and a later reload finds out when that changed.
#pragma once

#include <absl/status/statusor.h>

#include <mutex>

struct btf;

namespace kmon {

class KernelFeatures {
 public:
  virtual ~KernelFeatures() = default;
  /// The running kernel's BTF; an error names why it cannot be read. Valid until
  /// Release().
  virtual absl::StatusOr<const btf*> VmlinuxBtf() = 0;
  /// Frees what the probes loaded (the vmlinux BTF is several MB parsed): called
  /// before each BPF object loads (libbpf parses its own copy) and once collectors
  /// have started; the next probe loads it again.
  virtual void Release() = 0;
};

/// /sys/kernel/btf/vmlinux, read on first use and kept until Release().
class RunningKernelFeatures : public KernelFeatures {
 public:
  ~RunningKernelFeatures() override;
  absl::StatusOr<const btf*> VmlinuxBtf() override;
  void Release() override;

 private:
  std::mutex mu_;
  btf* vmlinux_ = nullptr;
};

/// Whether a BTF holds a type of this name and kind (BTF_KIND_TYPEDEF, ...).
bool BtfHasType(const btf* types, const char* name, int kind);

}  // namespace kmon
