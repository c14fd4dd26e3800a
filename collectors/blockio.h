// `blockio`: block I/O per disk and op (latency from issue to completion, errors)
// and per submitting workload (bytes, requests), from block-layer tp_btf hooks.
//
// Which workload a request is charged to (kmon_block_io_{bytes,requests}_total):
//  - Submitted by a user task (read/write with O_DIRECT, a page-cache miss, fsync's
//    flush, io_uring): that task's own cgroup v2 cgroup, read when the request is
//    made: tp_btf/block_io_start (v6.5+), else block_rq_insert and, for requests
//    issued directly without insertion, block_rq_issue (both in the submitter's
//    context). The twin is chosen at load time by what the kernel's BTF has.
//  - Submitted by a kernel thread (writeback of dirty pages by the flusher
//    threads, loop/dm workers, journal commits): the cgroup the bio is charged to,
//    its blkcg. That is the io controller's cgroup: on cgroup v2 the dirtying
//    task's cgroup if `io` is enabled for it, else its nearest ancestor that has
//    `io` enabled (the root when none has) — so writeback of a container whose
//    parent does not delegate `io` lands on that parent, not the container. On a
//    hybrid host the io controller is on a v1 hierarchy whose ids mean nothing to
//    the workload resolver: such I/O is node level (empty workload labels).
//  - Not seen at submission nor issue (in flight when kmon attached; and with the
//    block_rq_insert twin, fsync's cache flush: an empty write the flush machinery
//    completes without inserting or issuing it): its blkcg, as above, read at
//    completion. So what the pre-v6.5 twin misses is the submitter of those
//    flushes; every data request is still charged to the task that made it.
// Whether a request counts for its workload (the watched cgroups) is decided once,
// at its first hook, and carried to its completion: a change of the watched set
// applies to requests submitted after it (microseconds of difference).
// Bytes count only parts completed without error; a failed completion counts as
// one kmon_block_io_errors_total{device,op} and still ends its request.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpf/blockio.h"
#include "collectors/bpf_collector.h"
#include "collectors/bpf_util.h"
#include "collectors/data_source.h"
#include "collectors/missing_since.h"

struct blockio_bpf;

namespace kmon {

/// collectors.blockio
struct BlockioConfig : CollectorSectionOf<BlockioConfig> {
  static constexpr char kName[] = "blockio";
  std::vector<std::string> devices;  // empty: all
};
void ParseBlockioSection(YamlParser& p, const YamlValue& v, BlockioConfig* c);

/// Bytes and requests of one (cgroup, disk, op), summed over CPUs.
struct BlockIoCount {
  uint64_t cgroup_id = 0;  // 0: submitter unknown (node level)
  uint32_t dev = 0;        // kernel dev_t of the whole disk
  uint32_t op = 0;         // enum kmon_blk_op
  uint64_t bytes = 0;
  uint64_t requests = 0;
};

/// Latency histogram and errors of one (disk, op), summed over CPUs.
struct BlockIoLatency {
  uint32_t dev = 0;
  uint32_t op = 0;
  std::array<uint64_t, KMON_BLK_LAT_SLOTS> slots{};  // per slot, not cumulative
  uint64_t sum_ns = 0;
  uint64_t errors = 0;
};

/// The data maps (collectors/data_source.h).
using BlockIoSource = DataSource<BlockIoCount, BlockIoLatency>;

/// Seam for block device names: sysfs in production, a map in tests.
class BlockDeviceNames {
 public:
  virtual ~BlockDeviceNames() = default;
  /// Kernel name of a device ("vda", "nvme0n1", "loop3"); nullopt when it is gone.
  virtual std::optional<std::string> Name(uint32_t kdev) = 0;
  /// The whole disk a device name stands for: itself for a disk, its parent for a
  /// partition ("vda1" -> vda's dev_t, since requests are counted per disk).
  virtual std::optional<uint32_t> DiskOf(const std::string& name) = 0;
};

/// Reads sysfs: /sys/dev/block/MAJ:MIN/uevent (DEVNAME) and /sys/class/block/NAME.
class SysfsBlockDeviceNames : public BlockDeviceNames {
 public:
  explicit SysfsBlockDeviceNames(std::string sys_root = "/sys") : root_(std::move(sys_root)) {}
  std::optional<std::string> Name(uint32_t kdev) override;
  std::optional<uint32_t> DiskOf(const std::string& name) override;

 private:
  std::string root_;
};

/// "read", "write", "flush", "discard" or "other" for an enum kmon_blk_op value.
std::string BlockOpLabel(uint32_t op);

/// The `le` bounds of kmon_block_io_duration_seconds: 2^i microseconds, i = 0..25.
const std::vector<double>& BlockLatencyBounds();

/// Turns the data into the four kmon_block_io_* families. Pure apart from the
/// labeler: golden tests feed it fixed input. `device_name` names a kernel dev_t.
std::vector<prometheus::MetricFamily> BuildBlockIoFamilies(
    const std::vector<BlockIoCount>& counts, const std::vector<BlockIoLatency>& latencies,
    const std::function<std::string(uint32_t)>& device_name, WorkloadLabeler* labeler);

/// The tracepoint that records a request's submitter.
enum class BlockSubmitHook {
  kAuto,      // block_io_start where the kernel has it (v6.5+), else block_rq_insert
  kIoStart,   // block_io_start; Start() fails on older kernels
  kRqInsert,  // block_rq_insert, what older kernels use (tests run it on new ones too)
};

class BlockioCollector : public BpfCollector {
 public:
  /// `names` null: sysfs.
  explicit BlockioCollector(const CollectorDeps& deps,
                            std::unique_ptr<BlockDeviceNames> names = nullptr,
                            BlockSubmitHook hook = BlockSubmitHook::kAuto);

 private:
  absl::Status BeforeLoad(const CollectorConfig& config) override;
  absl::Status Configure(const CollectorConfig& config) override;
  absl::Status AfterAttach(const CollectorConfig& config) override;
  void BeforeDestroy() override {
    cache_.Stop();
    source_.reset();
  }
  absl::Status Read(std::vector<prometheus::MetricFamily>* out) override;
  /// Writes config_ into the `blk_config` control map.
  absl::Status WriteConfig();
  /// Resolves `device_filter_` to dev_ts and writes the `devices`/`blk_config`
  /// control maps. Names not (yet) present are retried on later scrapes.
  absl::Status WriteDeviceFilter();
  /// Cached name of a dev_t, re-read when unknown or older than a minute (a dev_t
  /// can be reused by another device); "MAJ:MIN" for a device that is gone.
  std::string DeviceName(uint32_t kdev);
  /// Deletes data-map entries of cgroups and devices that are gone or no longer
  /// selected, then moves blk_config.generation on so that no cache way keeps a
  /// deleted key.
  void DropStale(const std::vector<BlockIoCount>& counts,
                 const std::vector<BlockIoLatency>& latencies);

  std::unique_ptr<BlockDeviceNames> names_;
  BlockSubmitHook hook_;
  blockio_bpf* skel_ = nullptr;
  std::unique_ptr<BlockIoSource> source_;
  blk_config config_{};  // what the `blk_config` control map holds
  CpuCacheFlush cache_{"blockio", "block I/O is counted without the per-CPU cache"};
  std::vector<std::string> device_filter_;  // names from the config; empty: all
  std::set<uint32_t> wanted_devs_;          // what device_filter_ resolved to
  bool unresolved_devices_ = false;
  std::chrono::steady_clock::time_point last_resolve_{};
  struct CachedName {
    std::string name;
    bool gone = false;
    std::chrono::steady_clock::time_point read_at;
  };
  std::unordered_map<uint32_t, CachedName> name_cache_;
  MissingSince<uint32_t> dev_missing_;  // devices gone from sysfs
};

}  // namespace kmon
