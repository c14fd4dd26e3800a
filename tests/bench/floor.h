// The floor next to every kernel-side figure: bpf/floor.bpf.c's empty programs on
// the hooks a collector uses, loaded and attached for the lifetime of a Floor. A
// benchmark measures its load three ways (nothing attached, the floor, kmon) and
// reports kmon's added cost over the floor's.
#pragma once

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "bpf/floor.skel.h"
#include "provider/workload.h"

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
    if (floor_bpf__load(skel_) != 0 || floor_bpf__attach(skel_) != 0 || !AttachCgroupSkb()) {
      std::fprintf(stderr, "floor: load/attach failed\n");
      Destroy();
    }
  }
  ~Floor() { Destroy(); }
  Floor(const Floor&) = delete;
  Floor& operator=(const Floor&) = delete;

  bool ok() const { return skel_ != nullptr; }
  /// The loaded object (its programs' bpf_stats), or null when the load failed.
  const bpf_object* object() const { return skel_ != nullptr ? skel_->obj : nullptr; }

 private:
  // The cgroup_skb programs, which the skeleton cannot attach, on the cgroup v2 root
  // as the dns collector's are.
  bool AttachCgroupSkb() {
    bpf_program* progs[] = {skel_->progs.floor_cgroup_skb_egress,
                            skel_->progs.floor_cgroup_skb_ingress};
    for (bpf_program* prog : progs) {
      if (!bpf_program__autoload(prog)) continue;
      const std::optional<std::string> root = kmon::DetectCgroup2Root();
      const int fd = root ? open(root->c_str(), O_RDONLY | O_DIRECTORY) : -1;
      if (fd < 0) return false;
      bpf_link* link = bpf_program__attach_cgroup(prog, fd);
      close(fd);
      if (link == nullptr) return false;
      links_.push_back(link);
    }
    return true;
  }
  void Destroy() {
    for (bpf_link* l : links_) bpf_link__destroy(l);
    links_.clear();
    if (skel_ != nullptr) floor_bpf__destroy(skel_);
    skel_ = nullptr;
  }

  floor_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
};

}  // namespace kmon::bench
