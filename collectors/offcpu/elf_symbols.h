// The function symbols of the ELF files processes map, for naming user frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <absl/status/statusor.h>

namespace kmon {

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

/// `name` demangled when it is an Itanium C++ name ("_Z..."), else unchanged.
std::string Demangle(const std::string& name);

}  // namespace kmon
