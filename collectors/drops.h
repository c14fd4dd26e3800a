// `drops`: every packet the kernel drops, by the workload owning the packet's socket,
// the kernel's own drop reason, the function that dropped it and the L4 protocol
// (Kmon's packet drop indicator), from one tp_btf hook on kfree_skb.
#pragma once

#include <absl/status/statusor.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "collectors/bpf_collector.h"
#include "collectors/data_source.h"
#include "collectors/kernel_symbols.h"

struct btf;
struct drops_bpf;

namespace kmon {

/// collectors.drops: no knobs beyond `enabled`.
struct DropsConfig : CollectorSectionOf<DropsConfig> {
  static constexpr char kName[] = "drops";
};
void ParseDropsSection(YamlParser& p, const YamlValue& v, DropsConfig* c);

/// Aggregated count of one (cgroup, location, reason, protocol) tuple, summed over CPUs.
struct DropCount {
  uint64_t cgroup_id = 0;  // 0: the packet had no socket (node level)
  uint64_t location = 0;   // kernel address of the dropping call
  uint32_t reason = 0;     // enum skb_drop_reason value
  uint32_t protocol = 0;   // enum kmon_drop_proto
  uint64_t count = 0;
};

/// The data maps (collectors/data_source.h).
using DropCountSource = DataSource<DropCount>;

/// Drop reason names from a kernel's BTF: every value of `enum skb_drop_reason`
/// named the way the kernel's own drop_reasons[] table does, lower case and without
/// the SKB_DROP_REASON_ (or SKB_) prefix: SKB_DROP_REASON_NO_SOCKET -> "no_socket".
/// The markers SKB_DROP_REASON_MAX and SKB_DROP_REASON_SUBSYS_MASK are not reasons.
absl::StatusOr<std::map<uint32_t, std::string>> DropReasonNames(const btf* kernel_btf);

/// The `reason` label of a value: its name, else "unknown_<value>" (a reason of a
/// subsystem registered at run time, e.g. openvswitch, whose enum is not in vmlinux).
std::string DropReasonLabel(const std::map<uint32_t, std::string>& names, uint32_t reason);

/// "tcp", "udp", "icmp", "icmpv6" or "other" for an enum kmon_drop_proto value.
std::string DropProtocolLabel(uint32_t protocol);

/// The function a kernel return address is in (without a module suffix): the one
/// holding the call instruction before it. Nullopt when `symbols` is null or does
/// not cover it.
std::optional<std::string> DropFunctionName(const KernelSymbols* symbols, uint64_t addr);

/// The `location` label of kfree_skb's return address: DropFunctionName, or
/// "0x<hex>" when that is nullopt (addresses hidden, or a module the table lacks).
std::string DropLocationLabel(const KernelSymbols* symbols, uint64_t addr);

/// Turns counts into kmon_skb_drops_total. Pure apart from the labeler: golden
/// tests feed it fixed input. `location_name` symbolizes a kernel address.
prometheus::MetricFamily BuildDropFamily(const std::vector<DropCount>& counts,
                                         const std::map<uint32_t, std::string>& reasons,
                                         const std::function<std::string(uint64_t)>& location_name,
                                         WorkloadLabeler* labeler);

class DropsCollector : public BpfCollector {
 public:
  explicit DropsCollector(const CollectorDeps& deps);

 private:
  absl::Status BeforeLoad(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override { return absl::OkStatus(); }
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override;
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  /// DropLocationLabel, cached per address the symbols could name.
  std::string LocationName(uint64_t addr);
  /// Deletes data-map entries of cgroups that are gone.
  void DropStale(const std::vector<DropCount>& counts);

  drops_bpf* skel_ = nullptr;
  std::unique_ptr<DropCountSource> source_;
  std::map<uint32_t, std::string> reasons_;
  std::shared_ptr<const KernelSymbols> symbols_;  // KernelSymbols::Shared(); null: hidden
  std::unordered_map<uint64_t, std::string> location_cache_;
};

}  // namespace kmon
