#include "collectors/offcpu/elf_symbols.h"

#include <cxxabi.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include <absl/strings/str_cat.h>

namespace kmon {

absl::StatusOr<std::shared_ptr<const ElfSymbols>> ElfSymbols::Load(const std::string& path) {
  static std::once_flag once;
  std::call_once(once, [] { elf_version(EV_CURRENT); });
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  Elf* e = elf_begin(fd, ELF_C_READ_MMAP, nullptr);
  if (e == nullptr || elf_kind(e) != ELF_K_ELF) {
    if (e != nullptr) elf_end(e);
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not an ELF file"));
  }
  auto out = std::make_shared<ElfSymbols>();
  size_t nph = 0;
  if (elf_getphdrnum(e, &nph) == 0) {
    for (size_t i = 0; i < nph; ++i) {
      GElf_Phdr ph;
      if (gelf_getphdr(e, static_cast<int>(i), &ph) == nullptr || ph.p_type != PT_LOAD) continue;
      out->segments_.push_back({ph.p_offset, ph.p_filesz, ph.p_vaddr});
    }
  }
  // Names point into the file's string tables, valid until elf_end: copied once
  // below, after sorting, rather than once per symbol found.
  std::vector<std::pair<Sym, const char*>> found;
  Elf_Scn* scn = nullptr;
  while ((scn = elf_nextscn(e, scn)) != nullptr) {
    GElf_Shdr sh;
    if (gelf_getshdr(scn, &sh) == nullptr) continue;
    if (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM) continue;
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (data == nullptr || sh.sh_entsize == 0) continue;
    size_t n = sh.sh_size / sh.sh_entsize;
    for (size_t i = 0; i < n; ++i) {
      GElf_Sym s;
      if (gelf_getsym(data, static_cast<int>(i), &s) == nullptr) continue;
      int type = GELF_ST_TYPE(s.st_info);
      if ((type != STT_FUNC && type != STT_GNU_IFUNC) || s.st_shndx == SHN_UNDEF ||
          s.st_value == 0) {
        continue;
      }
      const char* name = elf_strptr(e, sh.sh_link, s.st_name);
      if (name == nullptr || *name == '\0') continue;
      const uint32_t size = static_cast<uint32_t>(std::min<uint64_t>(s.st_size, UINT32_MAX));
      found.push_back({Sym{s.st_value, size, 0}, name});
    }
  }
  // .symtab and .dynsym list exported functions twice; keep one per address,
  // preferring one with a size (so lookups can tell a gap from a function).
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    if (a.first.addr != b.first.addr) return a.first.addr < b.first.addr;
    return a.first.size > b.first.size;
  });
  size_t distinct = 0;
  for (size_t i = 0; i < found.size(); ++i) {
    if (i == 0 || found[i].first.addr != found[i - 1].first.addr) ++distinct;
  }
  out->syms_.reserve(distinct);
  for (const auto& [sym, name] : found) {
    if (!out->syms_.empty() && out->syms_.back().addr == sym.addr) continue;
    Sym s = sym;
    s.name = static_cast<uint32_t>(out->names_.size());
    out->names_ += name;
    out->names_.push_back('\0');
    out->syms_.push_back(s);
  }
  out->names_.shrink_to_fit();
  elf_end(e);
  close(fd);
  return std::shared_ptr<const ElfSymbols>(std::move(out));
}

size_t ElfSymbols::bytes() const {
  return sizeof(*this) + segments_.capacity() * sizeof(Segment) + syms_.capacity() * sizeof(Sym) +
         names_.capacity();
}

std::optional<std::string> ElfSymbols::LookupFileOffset(uint64_t file_offset) const {
  // File offset -> the virtual address the ELF file's symbols are expressed in.
  std::optional<uint64_t> vaddr;
  for (const auto& seg : segments_) {
    if (file_offset >= seg.offset && file_offset < seg.offset + seg.filesz) {
      vaddr = file_offset - seg.offset + seg.vaddr;
      break;
    }
  }
  if (!vaddr) return std::nullopt;
  auto it = std::upper_bound(syms_.begin(), syms_.end(), *vaddr,
                             [](uint64_t a, const Sym& s) { return a < s.addr; });
  if (it == syms_.begin()) return std::nullopt;
  const Sym& s = *(it - 1);
  if (s.size != 0 && *vaddr >= s.addr + s.size) return std::nullopt;  // between functions
  return Demangle(std::string(names_.data() + s.name));
}

std::string Demangle(const std::string& name) {
  if (name.size() < 3 || name[0] != '_' || name[1] != 'Z') return name;
  int status = 0;
  char* d = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  if (d == nullptr || status != 0) {
    std::free(d);
    return name;
  }
  std::string out(d);
  std::free(d);
  return out;
}

}  // namespace kmon
