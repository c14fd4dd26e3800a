#include "collectors/blockio.h"

#include <absl/strings/str_cat.h>
#include <bpf/btf.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include "base/log.h"
#include "bpf/blockio.skel.h"
#include "collectors/bpf_util.h"
#include "collectors/kernel_features.h"

namespace kmon {
namespace {

constexpr char kName[] = "blockio";
// A device name is re-read after this, since a dev_t can pass to another device.
constexpr auto kNameTtl = std::chrono::seconds(60);
// Configured devices not present yet are looked for again at most this often.
constexpr auto kResolveEvery = std::chrono::seconds(10);

class BpfBlockIoSource : public BlockIoSource {
 public:
  BpfBlockIoSource(int counts_fd, int latency_fd)
      : counts_fd_(counts_fd), latency_fd_(latency_fd) {}
  absl::Status Read(std::vector<BlockIoCount>* counts,
                    std::vector<BlockIoLatency>* latencies) override {
    absl::Status st = ReadPerCpuHashAs<blk_count_key, blk_count_value>(
        counts_fd_,
        [](const blk_count_key& k, std::span<const blk_count_value> per_cpu) {
          BlockIoCount c{.cgroup_id = k.cgroup_id, .dev = k.dev, .op = k.op};
          for (const auto& v : per_cpu) {
            c.bytes += v.bytes;
            c.requests += v.requests;
          }
          return c;
        },
        counts);
    if (!st.ok()) return st;
    return ReadPerCpuHashAs<blk_latency_key, blk_latency_value>(
        latency_fd_,
        [](const blk_latency_key& k, std::span<const blk_latency_value> per_cpu) {
          BlockIoLatency l{.dev = k.dev, .op = k.op};
          for (const auto& v : per_cpu) {
            for (int i = 0; i < KMON_BLK_LAT_SLOTS; ++i) l.slots[i] += v.slots[i];
            l.sum_ns += v.sum_ns;
            l.errors += v.errors;
          }
          return l;
        },
        latencies);
  }

 private:
  int counts_fd_, latency_fd_;
};

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "MAJ:MIN\n" -> kernel dev_t.
std::optional<uint32_t> ParseDevFile(const std::string& text) {
  unsigned major = 0, minor = 0;
  char colon = 0;
  std::istringstream in(text);
  if (!(in >> major >> colon >> minor) || colon != ':') return std::nullopt;
  if (major >= (1u << (32 - KMON_KDEV_MINORBITS)) || minor >= (1u << KMON_KDEV_MINORBITS)) {
    return std::nullopt;
  }
  return KMON_KDEV(major, minor);
}

std::string MajMin(uint32_t kdev) {
  return absl::StrCat(KMON_KDEV_MAJOR(kdev), ":", KMON_KDEV_MINOR(kdev));
}

}  // namespace

std::optional<std::string> SysfsBlockDeviceNames::Name(uint32_t kdev) {
  auto text = ReadSmallFile(root_ + "/dev/block/" + MajMin(kdev) + "/uevent");
  if (!text) return std::nullopt;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("DEVNAME=", 0) == 0 && line.size() > 8) return line.substr(8);
  }
  return std::nullopt;
}

std::optional<uint32_t> SysfsBlockDeviceNames::DiskOf(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return std::nullopt;
  }
  const std::string dir = root_ + "/class/block/" + name;
  auto dev = ReadSmallFile(dir + "/dev");
  if (!dev) return std::nullopt;
  if (!ReadSmallFile(dir + "/partition")) return ParseDevFile(*dev);
  // A partition's sysfs directory sits inside its disk's.
  char real[PATH_MAX];
  if (realpath(dir.c_str(), real) == nullptr) return std::nullopt;
  std::string parent(real);
  parent.resize(parent.rfind('/'));
  auto disk_dev = ReadSmallFile(parent + "/dev");
  if (!disk_dev) return std::nullopt;
  return ParseDevFile(*disk_dev);
}

std::string BlockOpLabel(uint32_t op) {
  // By enum kmon_blk_op value.
  static constexpr const char* kNames[KMON_BLK_OP_MAX] = {"read", "write", "flush", "discard",
                                                          "other"};
  return op < KMON_BLK_OP_MAX ? kNames[op] : "other";
}

const std::vector<double>& BlockLatencyBounds() {
  static const std::vector<double> bounds = Log2MicrosecondBounds(KMON_BLK_LAT_BOUNDS);
  return bounds;
}

std::vector<prometheus::MetricFamily> BuildBlockIoFamilies(
    const std::vector<BlockIoCount>& counts, const std::vector<BlockIoLatency>& latencies,
    const std::function<std::string(uint32_t)>& device_name, WorkloadLabeler* labeler) {
  const std::vector<std::string> workload_labels{"namespace", "pod", "container", "device", "op"};
  const std::vector<std::string> device_labels{"device", "op"};
  FamilyBuilder duration("kmon_block_io_duration_seconds",
                         "Block I/O requests from issue to the device until completion, by disk "
                         "and operation.",
                         prometheus::MetricType::Histogram, device_labels);
  FamilyBuilder errors("kmon_block_io_errors_total",
                       "Block I/O completions with an error status, by disk and operation.",
                       prometheus::MetricType::Counter, device_labels);
  FamilyBuilder bytes("kmon_block_io_bytes_total",
                      "Bytes of completed block I/O, by submitting workload (empty when unknown), "
                      "disk and operation.",
                      prometheus::MetricType::Counter, workload_labels);
  FamilyBuilder requests("kmon_block_io_requests_total",
                         "Completed block I/O requests, by submitting workload (empty when "
                         "unknown), disk and operation.",
                         prometheus::MetricType::Counter, workload_labels);

  const std::vector<double>& bounds = BlockLatencyBounds();
  for (const auto& l : latencies) {
    std::vector<std::string> values{device_name(l.dev), BlockOpLabel(l.op)};
    std::vector<uint64_t> slots(l.slots.begin(), l.slots.end());
    duration.AddHistogram(values, bounds, slots, static_cast<double>(l.sum_ns) / 1e9);
    errors.AddCounter(values, static_cast<double>(l.errors));
  }

  // Visit in a fixed order so the same workloads win the budget on every scrape.
  std::vector<const BlockIoCount*> sorted;
  sorted.reserve(counts.size());
  for (const auto& c : counts) sorted.push_back(&c);
  std::sort(sorted.begin(), sorted.end(), [](const BlockIoCount* a, const BlockIoCount* b) {
    return std::tie(a->cgroup_id, a->dev, a->op) < std::tie(b->cgroup_id, b->dev, b->op);
  });
  // Labels first: a workload costs two series (bytes, requests) per distinct
  // (device, op) it ends up with, however many of its cgroups have them.
  struct Row {
    WorkloadLabels workload;
    std::string device, op;
    const BlockIoCount* count;
  };
  std::vector<Row> rows;
  rows.reserve(sorted.size());
  std::map<std::vector<std::string>, std::set<std::pair<std::string, std::string>>> series_of;
  for (const BlockIoCount* c : sorted) {
    // Submitter unknown (cgroup 0): namespace="", pod="", container="".
    std::optional<WorkloadLabels> wl = labeler->Lookup(c->cgroup_id);
    if (!wl) continue;  // the cgroup is gone; its entries are dropped by the collector
    Row r{std::move(*wl), device_name(c->dev), BlockOpLabel(c->op), c};
    series_of[{r.workload.namespace_, r.workload.pod, r.workload.container}].emplace(r.device,
                                                                                     r.op);
    rows.push_back(std::move(r));
  }
  for (const Row& r : rows) {
    const auto& series =
        series_of.at({r.workload.namespace_, r.workload.pod, r.workload.container});
    WorkloadLabels l = labeler->Admit(r.workload, 2 * static_cast<int64_t>(series.size()));
    std::vector<std::string> values{l.namespace_, l.pod, l.container, r.device, r.op};
    bytes.AddCounter(values, static_cast<double>(r.count->bytes));
    requests.AddCounter(values, static_cast<double>(r.count->requests));
  }
  return BuildAll({&duration, &bytes, &requests, &errors});
}

void ParseBlockioSection(YamlParser& p, const YamlValue& v, BlockioConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"devices", [&](const YamlValue& f) { p.StringSet(f, "device", &c->devices); }},
           });
}

BlockioCollector::BlockioCollector(const CollectorDeps& deps,
                                   std::unique_ptr<BlockDeviceNames> names, BlockSubmitHook hook)
    : BpfCollector(kName, deps, &skel_, blockio_bpf__create_skeleton,
                   {{"io_counts", sizeof(blk_count_key), sizeof(blk_count_value)},
                    {"io_latency", sizeof(blk_latency_key), sizeof(blk_latency_value)},
                    {"inflight", sizeof(uint32_t), sizeof(blk_inflight_set)},
                    {"blk_config", sizeof(uint32_t), sizeof(blk_config)},
                    {"blk_cache", sizeof(uint32_t), sizeof(blk_cache)}}),
      names_(names ? std::move(names) : std::make_unique<SysfsBlockDeviceNames>()),
      hook_(hook) {}

absl::Status BlockioCollector::BeforeLoad(const CollectorConfig&) {
  config_ = {};  // a new object: its cache is off until AfterAttach's first flush
  // One submission hook: block_io_start (v6.5+) where the kernel has it, else its
  // older twin. Without BTF the load itself reports what is missing.
  bool io_start = hook_ == BlockSubmitHook::kIoStart;
  if (hook_ == BlockSubmitHook::kAuto) {
    absl::StatusOr<const btf*> vmlinux = Features().VmlinuxBtf();
    io_start = !vmlinux.ok() || BtfHasType(*vmlinux, "btf_trace_block_io_start", BTF_KIND_TYPEDEF);
  }
  bpf_program__set_autoload(skel_->progs.kmon_blk_start, io_start);
  bpf_program__set_autoload(skel_->progs.kmon_blk_insert, !io_start);
  // Run from user space on each CPU before every read (cache_), never attached.
  bpf_program__set_autoattach(skel_->progs.kmon_blk_flush, false);
  return absl::OkStatus();
}

absl::Status BlockioCollector::AfterAttach(const CollectorConfig&) {
  source_ = std::make_unique<BpfBlockIoSource>(bpf_map__fd(skel_->maps.io_counts),
                                               bpf_map__fd(skel_->maps.io_latency));
  // Completions may wait in the per-CPU cache once the flush is known to run on
  // every CPU.
  return cache_.Start(skel_->progs.kmon_blk_flush, [this](bool on) {
    config_.cache = on ? 1 : 0;
    return WriteConfig();
  });
}

absl::Status BlockioCollector::WriteConfig() {
  return WriteControlEntry(kName, skel_->maps.blk_config, &config_);
}

absl::Status BlockioCollector::WriteDeviceFilter() {
  if (skel_ == nullptr) return absl::FailedPreconditionError("collector=blockio: not loaded");
  std::set<uint32_t> want;
  bool unresolved = false;
  for (const auto& name : device_filter_) {
    std::optional<uint32_t> dev = names_->DiskOf(name);
    if (dev) {
      want.insert(*dev);
    } else {
      unresolved = true;
    }
  }
  // New devices in first, then the flag: a reload never has a moment of counting
  // nothing or everything.
  int set_fd = bpf_map__fd(skel_->maps.devices);
  const uint8_t one = 1;
  for (uint32_t dev : want) {
    if (bpf_map_update_elem(set_fd, &dev, &one, BPF_ANY) != 0) {
      return BpfError(kName, "map=devices: update", errno);
    }
  }
  for (uint32_t dev : wanted_devs_) {
    if (!want.count(dev)) bpf_map_delete_elem(set_fd, &dev);
  }
  config_.filter_devices = device_filter_.empty() ? 0 : 1;
  absl::Status st = WriteConfig();
  if (!st.ok()) return st;
  wanted_devs_ = std::move(want);
  unresolved_devices_ = unresolved;
  last_resolve_ = std::chrono::steady_clock::now();
  return absl::OkStatus();
}

absl::Status BlockioCollector::Configure(const CollectorConfig& config) {
  device_filter_ = config.collectors.Get<BlockioConfig>().devices;
  for (const auto& name : device_filter_) {
    std::optional<uint32_t> dev = names_->DiskOf(name);
    if (!dev) {
      LogWarn("block device not present; counted once it appears",
              {{"collector", kName}, {"device", name}});
    } else if (names_->Name(*dev).value_or(name) != name) {
      LogInfo("partition selected: its whole disk is counted (requests are per disk)",
              {{"collector", kName}, {"device", name}, {"disk", names_->Name(*dev).value_or("")}});
    }
  }
  return WriteDeviceFilter();
}

std::string BlockioCollector::DeviceName(uint32_t kdev) {
  const auto now = std::chrono::steady_clock::now();
  auto it = name_cache_.find(kdev);
  if (it != name_cache_.end() && now - it->second.read_at < kNameTtl && !it->second.gone) {
    return it->second.name;
  }
  std::optional<std::string> name = names_->Name(kdev);
  CachedName& c = name_cache_[kdev];
  c.read_at = now;
  c.gone = !name.has_value();
  c.name = name.value_or(MajMin(kdev));
  return c.name;
}

void BlockioCollector::DropStale(const std::vector<BlockIoCount>& counts,
                                 const std::vector<BlockIoLatency>& latencies) {
  const bool filtering = !device_filter_.empty();
  dev_missing_.Begin();

  // Devices: gone from sysfs for a while, or no longer selected.
  auto dev_gone = [&](uint32_t dev) {
    if (filtering && !wanted_devs_.count(dev)) return true;
    auto cached = name_cache_.find(dev);
    if (cached == name_cache_.end() || !cached->second.gone) return false;
    return dev_missing_.Gone(dev);
  };
  bool deleted = false;
  int lat_fd = bpf_map__fd(skel_->maps.io_latency);
  for (const auto& l : latencies) {
    if (!dev_gone(l.dev)) continue;
    blk_latency_key k{};
    k.dev = l.dev;
    k.op = l.op;
    deleted = bpf_map_delete_elem(lat_fd, &k) == 0 || deleted;
  }

  int counts_fd = bpf_map__fd(skel_->maps.io_counts);
  for (const auto& c : counts) {
    bool gone = dev_gone(c.dev);
    gone = gone || labeler().Gone(c.cgroup_id);
    if (!gone) continue;
    blk_count_key k{};
    k.cgroup_id = c.cgroup_id;
    k.dev = c.dev;
    k.op = c.op;
    deleted = bpf_map_delete_elem(counts_fd, &k) == 0 || deleted;
  }
  dev_missing_.End();
  // A cache way may hold a deleted key: were the key to come back (a disk of the
  // same dev_t, a device selected again), its counts would wait in the way with no
  // entry to go to. A new generation gives every way its key anew, through the maps.
  if (deleted) {
    ++config_.generation;
    absl::Status st = WriteConfig();
    if (!st.ok()) LogWarn("blockio: new cache generation", {{"err", st.ToString()}});
  }
}

absl::Status BlockioCollector::Read(std::vector<prometheus::MetricFamily>* out) {
  cache_.Flush();
  std::vector<BlockIoCount> counts;
  std::vector<BlockIoLatency> latencies;
  absl::Status st = source_->Read(&counts, &latencies);
  if (!st.ok()) return st;
  if (unresolved_devices_ && std::chrono::steady_clock::now() - last_resolve_ >= kResolveEvery) {
    st = WriteDeviceFilter();  // a configured disk may have appeared (hotplug)
    if (!st.ok()) {
      LogWarn("updating device filter failed", {{"collector", kName}, {"err", st.ToString()}});
    }
  }
  auto families = BuildBlockIoFamilies(
      counts, latencies, [this](uint32_t dev) { return DeviceName(dev); }, &labeler());
  DropStale(counts, latencies);
  for (auto& f : families) out->push_back(std::move(f));
  return absl::OkStatus();
}

}  // namespace kmon
