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

#include "collectors/collector.h"
#include "collectors/families.h"
#include "collectors/kernel_symbols.h"
#include "collectors/missing_since.h"

struct btf;
struct drops_bpf;

namespace kmon {

/// Aggregated count of one (cgroup, location, reason, protocol) tuple, summed over CPUs.
struct DropCount {
  uint64_t cgroup_id = 0;  // 0: the packet had no socket (node level)
  uint64_t location = 0;   // kernel address of the dropping call
  uint32_t reason = 0;     // enum skb_drop_reason value
  uint32_t protocol = 0;   // enum kmon_drop_proto
  uint64_t count = 0;
};

/// Seam for the data map: the BPF map in production, a vector in tests.
class DropCountSource {
 public:
  virtual ~DropCountSource() = default;
  virtual absl::Status Read(std::vector<DropCount>* out) = 0;
};

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

/// Turns counts into kmon_skb_drops_total. Pure apart from the resolver: golden
/// tests feed it fixed input. `location_name` symbolizes a kernel address.
prometheus::MetricFamily BuildDropFamily(const std::vector<DropCount>& counts,
                                         const std::map<uint32_t, std::string>& reasons,
                                         const std::function<std::string(uint64_t)>& location_name,
                                         WorkloadResolver* workloads, SeriesBudget* budget,
                                         int64_t max_series);

class DropsCollector : public Collector {
 public:
  explicit DropsCollector(const CollectorDeps& deps);
  ~DropsCollector() override;

  absl::Status Start(const Config& config) override;
  absl::Status Reconfigure(const Config& config) override;
  void Collect(std::vector<prometheus::MetricFamily>* out) noexcept override;
  void Stop() override;
  const bpf_object* BpfObject() const override;
  std::map<std::string, uint64_t> EventsLost() const override;
  uint64_t SeriesOverflow() const override;

 private:
  /// DropLocationLabel, cached per address the symbols could name.
  std::string LocationName(uint64_t addr);
  /// Deletes data-map entries of cgroups that are gone.
  void DropStale(const std::vector<DropCount>& counts);

  CollectorDeps deps_;
  drops_bpf* skel_ = nullptr;
  std::unique_ptr<DropCountSource> source_;
  mutable std::mutex mu_;  // guards everything below against reload and parallel scrapes
  std::map<uint32_t, std::string> reasons_;
  std::shared_ptr<const KernelSymbols> symbols_;  // KernelSymbols::Shared(); null: hidden
  std::unordered_map<uint64_t, std::string> location_cache_;
  int64_t max_series_ = 20000;
  SeriesBudget budget_;
  std::atomic<uint64_t> read_errors_{0};
  MissingSince<uint64_t> missing_;  // cgroups of data-map keys the resolver does not know
};

}  // namespace kmon
