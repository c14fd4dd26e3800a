// How the topology collector reads what the tcp collector records: the tcp collector
// owns the BPF object and its `edges` map and publishes a reader here; the topology
// collector turns edges into metrics and the /api/v1/topology graph.
#pragma once

#include <absl/status/status.h>

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace kmon {

/// One client -> server edge, cumulative since the tcp collector started.
struct EdgeHist {
  uint64_t client_cgroup = 0;  // 0: the client is not on this host
  uint64_t server_cgroup = 0;
  std::array<uint8_t, 16> client_addr{};  // IPv6 or v4-mapped; zero unless kept
  uint16_t server_port = 0;
  std::vector<uint64_t> slots;  // per bucket, not cumulative; last is +Inf
  uint64_t count = 0;
  double sum_seconds = 0;
};

class TopologyFeed {
 public:
  using Reader = std::function<absl::Status(std::vector<EdgeHist>*, std::vector<double>* bounds)>;
  /// Deletes edges (by their client, server and port) from what the reader reads.
  using Dropper = std::function<void(const std::vector<EdgeHist>&)>;

  void SetReader(Reader reader, Dropper dropper = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    reader_ = std::move(reader);
    dropper_ = std::move(dropper);
  }
  void ClearReader() { SetReader(nullptr); }
  bool HasReader() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<bool>(reader_);
  }
  /// Every edge and the bucket bounds (seconds) they use; an error when no tcp collector runs.
  absl::Status Read(std::vector<EdgeHist>* edges, std::vector<double>* bounds) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!reader_) return absl::FailedPreconditionError("the tcp collector is not running");
    return reader_(edges, bounds);
  }
  /// Deletes `edges` (an end of each is gone); nothing without a reader that can.
  void Drop(const std::vector<EdgeHist>& edges) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (dropper_ && !edges.empty()) dropper_(edges);
  }

 private:
  mutable std::mutex mu_;
  Reader reader_;
  Dropper dropper_;
};

}  // namespace kmon
