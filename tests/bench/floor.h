// The floor next to every kernel-side figure: bpf/floor.bpf.c's empty programs on
// the hooks a collector uses, loaded and attached for the lifetime of a Floor. A
// benchmark measures its load three ways (nothing attached, the floor, kmon) and
// reports kmon's added cost over the floor's.
#pragma once

#include <bpf/libbpf.h>

#include <cstdio>
#include <set>
#include <string>

#include "bpf/floor.skel.h"

namespace kmon::bench {

class Floor {
 public:
  /// Loads and attaches only the named programs ("floor_sys_exit", ...).
  explicit Floor(const std::set<std::string>& programs) {
    skel_ = floor_bpf__open();
    if (skel_ == nullptr) {
      std::fprintf(stderr, "floor: open failed\n");
      return;
    }
    bpf_program* prog;
    bpf_object__for_each_program(prog, skel_->obj) {
      bpf_program__set_autoload(prog, programs.count(bpf_program__name(prog)) > 0);
    }
    if (floor_bpf__load(skel_) != 0 || floor_bpf__attach(skel_) != 0) {
      std::fprintf(stderr, "floor: load/attach failed\n");
      floor_bpf__destroy(skel_);
      skel_ = nullptr;
    }
  }
  ~Floor() {
    if (skel_ != nullptr) floor_bpf__destroy(skel_);
  }
  Floor(const Floor&) = delete;
  Floor& operator=(const Floor&) = delete;

  bool ok() const { return skel_ != nullptr; }
  /// The loaded object (its programs' bpf_stats), or null when the load failed.
  const bpf_object* object() const { return skel_ != nullptr ? skel_->obj : nullptr; }

 private:
  floor_bpf* skel_ = nullptr;
};

}  // namespace kmon::bench
