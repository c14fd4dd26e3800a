// Feature probes of the running kernel (which tracepoints, BTF types, function
// arguments it has), behind an interface: collectors ask it before they load, so
// a kernel without a hook becomes a clear start failure, and a test can say what
// "the kernel" has — and a later reload finds out when that changed. The same
// interface loads each BPF object into the kernel, so that a test can also make a
// load fail as a kernel does (a map that may not be created).
#pragma once

#include <absl/status/statusor.h>

#include <mutex>
#include <string>

struct btf;
struct bpf_object_skeleton;

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
  /// The loader step: creates an opened object's maps and loads its programs
  /// (bpf_object__load_skeleton); 0, or a negative errno as libbpf gives it. A seam,
  /// so that a test can make a load fail as the kernel does: a map it will not create.
  virtual int LoadSkeleton(bpf_object_skeleton* skeleton);
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

/// "collector=NAME load: <strerror>", and for ENOMEM what it means: BPF maps are
/// kernel memory charged to kmon's memory cgroup, whose limit was reached.
absl::Status LoadError(const std::string& collector, int err);

/// Whether a BTF holds a type of this name and kind (BTF_KIND_TYPEDEF, ...).
bool BtfHasType(const btf* types, const char* name, int kind);

/// Whether a BTF's struct `type` has a member named `member` (false without the struct).
bool StructHasMember(const btf* types, const char* type, const char* member);

}  // namespace kmon
