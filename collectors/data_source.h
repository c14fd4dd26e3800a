// The seam between a collector and its BPF data maps (bpftrace's tests/mocks.h is
// the model: an interface with a real and a test implementation, never a flag):
// in production it reads the maps, in tests it hands over fixed rows, so the pure
// BuildXFamilies of each collector can be golden-tested.
#pragma once

#include <absl/status/status.h>

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "collectors/bpf_util.h"

namespace kmon {

/// Rows of one or more kinds, as the maps hold them now (summed over CPUs).
template <typename... Rows>
class DataSource {
 public:
  virtual ~DataSource() = default;
  /// Replaces each vector with the current rows of its kind.
  virtual absl::Status Read(std::vector<Rows>*... out) = 0;
};

/// The production DataSource of a collector whose data is one per-CPU hash: each
/// key and its values (one per CPU) folded into one row.
template <typename K, typename V, typename Row>
class PerCpuHashSource : public DataSource<Row> {
 public:
  using Fold = std::function<Row(const K&, std::span<const V>)>;
  PerCpuHashSource(int map_fd, Fold fold) : fd_(map_fd), fold_(std::move(fold)) {}
  absl::Status Read(std::vector<Row>* out) override {
    return ReadPerCpuHashAs<K, V>(fd_, fold_, out);
  }

 private:
  int fd_;
  Fold fold_;
};

}  // namespace kmon
