// Turning stack addresses into function names: kernel addresses from /proc/kallsyms,
// user addresses through /proc/PID/maps and the ELF symbol tables of the mapped files.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "collectors/kernel_symbols.h"
#include "collectors/offcpu/elf_symbols.h"
#include "collectors/offcpu/frame_resolver.h"
#include "collectors/offcpu/process.h"

namespace kmon {

/// Resolves addresses of processes and of the kernel. Caches a process's maps from
/// the first time it is captured, so frames of a process that has exited since can
/// still be named, and ELF symbol tables by file, each read when a frame first needs
/// it (through the process, while it lives: the profiler names a stack when it first
/// sees it). Not thread-safe.
///
/// Memory is bounded: at most kMaxProcesses processes' maps (least recently used go
/// first; the profiler forgets a process as soon as it has exited and its stacks are
/// named), and symbol tables of at most kMaxBinaries files and kMaxElfBytes bytes
/// (least recently used go first). While stacks are being named the newest table is
/// kept even beyond that (a libLLVM has megabytes of symbols), until Trim(), which
/// the profiler calls after each round of naming. A table evicted while its process
/// lives is read again when needed; one of a process gone meanwhile leaves frames
/// named by file ("[libfoo.so]").
class Symbolizer {
 public:
  static constexpr size_t kMaxProcesses = 1024;
  static constexpr size_t kMaxBinaries = 256;
  static constexpr size_t kMaxElfBytes = 4 << 20;

  using KernelSource = std::function<std::shared_ptr<const KernelSymbols>()>;

  /// `proc` is the procfs mount (tests may point elsewhere); `kernel` may be null
  /// (kernel frames are then "[unknown]").
  Symbolizer(std::string proc, std::shared_ptr<const KernelSymbols> kernel);
  /// Kernel symbols from a source asked at every kernel frame (KernelSymbols::Shared).
  Symbolizer(std::string proc, KernelSource kernel);
  Symbolizer(std::string proc, std::nullptr_t)
      : Symbolizer(std::move(proc), std::shared_ptr<const KernelSymbols>()) {}

  /// Reads the process's maps, unless already done. False when that process is gone
  /// (its PID missing, or now another process's): its frames stay "[unknown]".
  bool Capture(const ProcessId& p);
  /// Whether the process still runs (a process with its PID and start time exists).
  bool Alive(const ProcessId& p) const;
  /// Whether Capture has maps for this process.
  bool Captured(const ProcessId& p) const { return procs_.count(p) != 0; }
  /// Drops a process's maps (it is gone and its last stacks have been named).
  void Forget(const ProcessId& p);

  std::string KernelFrame(uint64_t ip);
  /// `ip` is a return address for every frame but the innermost (`leaf`): the
  /// call instruction before it is what belongs to the calling function.
  std::string UserFrame(const ProcessId& p, uint64_t ip, bool leaf);

  /// Brings the symbol tables back within kMaxElfBytes and hands freed memory back
  /// to the system.
  void Trim();

  size_t CachedProcesses() const { return procs_.size(); }
  size_t CachedBinaries() const { return elfs_.size(); }
  size_t CachedElfBytes() const { return elf_bytes_; }

 private:
  // A mapped file, shared by every process that maps it.
  struct File {
    std::string key;  // "dev inode path": the ELF cache's key
    std::string path;
    std::string dev;  // as /proc/PID/maps shows it: "fe:00" (hex major:minor)
    uint64_t inode = 0;
  };
  struct Mapping {
    uint64_t start, end, offset;
    std::shared_ptr<const File> file;  // null for anonymous memory
    std::string special;               // "[vdso]" and the like
  };
  struct Process {
    std::vector<Mapping> maps;  // sorted by start
    std::chrono::steady_clock::time_point captured;
    uint64_t last_use = 0;
  };
  struct CachedElf {
    std::shared_ptr<const ElfSymbols> elf;  // null when the file could not be read
    size_t bytes = 0;
    uint64_t last_use = 0;
  };
  bool CaptureNow(const ProcessId& p);
  std::shared_ptr<const File> InternFile(const MapEntry& m);
  std::shared_ptr<const ElfSymbols> Elf(const ProcessId& p, const Mapping& m);
  // The file at its path as kmon sees it, when that is the very file mapped (same
  // device and inode): a host process's binary, read even after the process exited.
  static absl::StatusOr<std::shared_ptr<const ElfSymbols>> LoadIfSameFile(const File& f);
  // Evicts least recently used tables (never `keep`) while over the caps; the bytes freed.
  size_t TrimElfs(const std::string& keep);
  const Mapping* Find(const Process& p, uint64_t ip) const;

  std::string proc_;
  std::shared_ptr<const KernelSymbols> kernel_;
  KernelSource kernel_source_;
  uint64_t clock_ = 0;  // use counter for the LRU caches
  std::unordered_map<ProcessId, Process, ProcessIdHash> procs_;
  std::unordered_map<std::string, std::weak_ptr<const File>> files_;
  std::unordered_map<std::string, CachedElf> elfs_;  // by File::key
  size_t elf_bytes_ = 0;
};

/// FrameResolver over a Symbolizer (which reads /proc/PID/stat for liveness).
class ProcFrameResolver : public FrameResolver {
 public:
  explicit ProcFrameResolver(std::unique_ptr<Symbolizer> symbolizer)
      : symbolizer_(std::move(symbolizer)) {}
  void Capture(const ProcessId& p) override { symbolizer_->Capture(p); }
  bool Alive(const ProcessId& p) override { return symbolizer_->Alive(p); }
  void Forget(const ProcessId& p) override { symbolizer_->Forget(p); }
  std::string Kernel(uint64_t ip) override { return symbolizer_->KernelFrame(ip); }
  std::string User(const ProcessId& p, uint64_t ip, bool leaf) override {
    return symbolizer_->UserFrame(p, ip, leaf);
  }
  void Trim() override { symbolizer_->Trim(); }

 private:
  std::unique_ptr<Symbolizer> symbolizer_;
};

}  // namespace kmon
