// Turning stack addresses into function names: kernel addresses from /proc/kallsyms,
// user addresses through /proc/PID/maps and the ELF symbol tables of the mapped files.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include "collectors/kernel_symbols.h"

namespace kmon {

/// Shown for a frame nothing is known about.
inline constexpr char kUnknownFrame[] = "[unknown]";

/// The function symbols of one ELF file (.symtab and .dynsym), by file offset.
class ElfSymbols {
 public:
  /// Reads an ELF file with libelf. Error when it cannot be opened or is not ELF.
  static absl::StatusOr<std::shared_ptr<const ElfSymbols>> Load(const std::string& path);

  /// The function at `file_offset` (an offset into the file, as /proc/PID/maps
  /// gives for a mapping) demangled, or nullopt when no symbol covers it.
  std::optional<std::string> LookupFileOffset(uint64_t file_offset) const;
  size_t size() const { return syms_.size(); }
  /// Heap bytes held.
  size_t bytes() const;

 private:
  struct Segment {
    uint64_t offset, filesz, vaddr;
  };
  struct Sym {
    uint64_t addr;
    uint32_t size;  // 0: unknown (then it extends to the next symbol)
    uint32_t name;  // offset into names_
  };
  std::vector<Segment> segments_;  // PT_LOAD
  std::vector<Sym> syms_;          // sorted by addr
  std::string names_;
};

/// One executable mapping of a process, as /proc/PID/maps lists it.
struct MapEntry {
  uint64_t start = 0, end = 0, offset = 0, inode = 0;
  std::string dev;   // "fe:00"
  std::string path;  // file path, "[vdso]", or "" for anonymous memory
};

/// The executable mappings ('x' in perms) of /proc/PID/maps text, in file order.
std::vector<MapEntry> ParseProcMaps(std::string_view text);

/// `name` demangled when it is an Itanium C++ name ("_Z..."), else unchanged.
std::string Demangle(const std::string& name);

/// A process as the kernel's off-CPU aggregates name it: its PID and its start time,
/// so a process that reuses the PID of an exited one is a different process.
struct ProcessId {
  uint32_t tgid = 0;
  uint64_t start_ns = 0;  // the leader's task->start_boottime: ns since boot
  bool operator==(const ProcessId&) const = default;
};
struct ProcessIdHash {
  size_t operator()(const ProcessId& p) const {
    return std::hash<uint64_t>()(p.start_ns * 0x9e3779b97f4a7c15ULL ^ p.tgid);
  }
};

/// start_boottime in /proc's clock ticks (USER_HZ), as /proc/PID/stat field 22 shows
/// it (the kernel's nsec_to_clock_t, rounding down).
uint64_t BootNsToTicks(uint64_t ns);
/// Field 22 (starttime) of `proc`/`tgid`/stat, or nullopt when there is no such process.
std::optional<uint64_t> ReadProcessStartTicks(const std::string& proc, uint32_t tgid);

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
    std::string key;   // "dev inode path": the ELF cache's key
    std::string path;
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

}  // namespace kmon
