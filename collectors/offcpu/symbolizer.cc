#include "collectors/offcpu/symbolizer.h"

#include <cxxabi.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include <absl/strings/str_cat.h>

#include "collectors/proc_text.h"

namespace kmon {
namespace {

// A process whose stack shows an address outside every captured mapping (after a
// dlopen, say) is read again, at most this often.
constexpr auto kRecaptureAfter = std::chrono::seconds(1);

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

// ---- ELF ----

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

// ---- maps ----

std::vector<MapEntry> ParseProcMaps(std::string_view text) {
  std::vector<MapEntry> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    std::string_view range = NextField(&line);
    std::string_view perms = NextField(&line);
    std::string_view offset = NextField(&line);
    std::string_view dev = NextField(&line);
    std::string_view inode = NextField(&line);
    size_t b = line.find_first_not_of(' ');
    std::string_view path = b == std::string_view::npos ? std::string_view() : line.substr(b);
    if (perms.size() < 3 || perms[2] != 'x') continue;
    size_t dash = range.find('-');
    if (dash == std::string_view::npos) continue;
    MapEntry m;
    if (!ParseHex(range.substr(0, dash), &m.start) || !ParseHex(range.substr(dash + 1), &m.end) ||
        !ParseHex(offset, &m.offset)) {
      continue;
    }
    m.inode = std::strtoull(std::string(inode).c_str(), nullptr, 10);
    m.dev = std::string(dev);
    m.path = std::string(path);
    out.push_back(std::move(m));
  }
  return out;
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

// ---- processes ----

uint64_t BootNsToTicks(uint64_t ns) {
  static const uint64_t ns_per_tick = [] {
    long hz = sysconf(_SC_CLK_TCK);
    return static_cast<uint64_t>(1000000000 / (hz > 0 ? hz : 100));
  }();
  return ns / ns_per_tick;
}

std::optional<uint64_t> ReadProcessStartTicks(const std::string& proc, uint32_t tgid) {
  // Asked every second for every process with stacks: one open and one read, no
  // stream. The line is well under 1 KiB (comm is at most 64 bytes).
  const std::string path = absl::StrCat(proc, "/", tgid, "/stat");
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[1024];
  const ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) return std::nullopt;
  const std::string_view stat(buf, static_cast<size_t>(n));
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are
  // counted from the last ')'. The state is field 3, starttime field 22.
  size_t paren = stat.rfind(')');
  if (paren == std::string_view::npos) return std::nullopt;
  std::string_view rest = stat.substr(paren + 1);
  std::string_view field;
  for (int i = 3; i <= 22; ++i) field = NextField(&rest);
  if (field.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : field) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// ---- symbolizer ----

Symbolizer::Symbolizer(std::string proc, std::shared_ptr<const KernelSymbols> kernel)
    : proc_(std::move(proc)), kernel_(std::move(kernel)) {}

Symbolizer::Symbolizer(std::string proc, KernelSource kernel)
    : proc_(std::move(proc)), kernel_source_(std::move(kernel)) {
  // Held from the start: a shared table nobody holds would be read again at first use.
  if (kernel_source_) kernel_ = kernel_source_();
}

std::string Symbolizer::KernelFrame(uint64_t ip) {
  // Asked each time: the shared table is replaced when it has missed (new modules).
  if (kernel_source_) kernel_ = kernel_source_();
  if (kernel_ == nullptr) return kUnknownFrame;
  // A return address: the call before it belongs to the caller.
  std::optional<std::string> name = kernel_->Lookup(ip > 0 ? ip - 1 : ip);
  return name ? *name : kUnknownFrame;
}

bool Symbolizer::Alive(const ProcessId& p) const {
  std::optional<uint64_t> start = ReadProcessStartTicks(proc_, p.tgid);
  return start.has_value() && *start == BootNsToTicks(p.start_ns);
}

bool Symbolizer::Capture(const ProcessId& p) {
  auto it = procs_.find(p);
  if (it != procs_.end()) {
    it->second.last_use = ++clock_;
    return true;
  }
  return CaptureNow(p);
}

std::shared_ptr<const Symbolizer::File> Symbolizer::InternFile(const MapEntry& m) {
  std::string key = absl::StrCat(m.dev, " ", m.inode, " ", m.path);
  auto it = files_.find(key);
  if (it != files_.end()) {
    if (auto f = it->second.lock()) return f;
  }
  if (files_.size() >= 2 * kMaxProcesses) {
    for (auto f = files_.begin(); f != files_.end();) f = f->second.expired() ? files_.erase(f) : std::next(f);
  }
  auto f = std::make_shared<const File>(File{key, m.path});
  files_[std::move(key)] = f;
  return f;
}

bool Symbolizer::CaptureNow(const ProcessId& p) {
  // The PID must still be this process before and after its maps are read: one that
  // has exited may have left its PID to another.
  if (!Alive(p)) return false;
  std::optional<std::string> text = ReadWholeFile(absl::StrCat(proc_, "/", p.tgid, "/maps"));
  if (!text || text->empty() || !Alive(p)) return false;
  if (procs_.size() >= kMaxProcesses && !procs_.count(p)) {
    auto oldest = std::min_element(procs_.begin(), procs_.end(), [](const auto& a, const auto& b) {
      return a.second.last_use < b.second.last_use;
    });
    procs_.erase(oldest);
  }
  Process proc;
  proc.captured = std::chrono::steady_clock::now();
  proc.last_use = ++clock_;
  for (MapEntry& m : ParseProcMaps(*text)) {
    Mapping mp{m.start, m.end, m.offset, nullptr, {}};
    if (!m.path.empty() && m.path[0] == '/' && m.inode != 0) {
      mp.file = InternFile(m);
    } else if (!m.path.empty() && m.path[0] == '[') {
      mp.special = m.path;  // [vdso]
    }
    proc.maps.push_back(std::move(mp));
  }
  std::sort(proc.maps.begin(), proc.maps.end(),
            [](const Mapping& a, const Mapping& b) { return a.start < b.start; });
  proc.maps.shrink_to_fit();
  procs_[p] = std::move(proc);
  return true;
}

std::shared_ptr<const ElfSymbols> Symbolizer::Elf(const ProcessId& p, const Mapping& m) {
  if (m.file == nullptr) return nullptr;
  auto it = elfs_.find(m.file->key);
  if (it != elfs_.end()) {
    it->second.last_use = ++clock_;
    return it->second.elf;
  }
  // The file is read through the process: map_files reaches it even when it was
  // deleted or replaced, or lives in another mount namespace (a container's root);
  // /proc/PID/root/PATH is the fallback where map_files is not readable. Only while
  // the PID is still this process's, or it would be another process's file.
  if (!Alive(p)) return nullptr;
  char range[64];
  std::snprintf(range, sizeof range, "%llx-%llx", static_cast<unsigned long long>(m.start),
                static_cast<unsigned long long>(m.end));
  absl::StatusOr<std::shared_ptr<const ElfSymbols>> elf =
      ElfSymbols::Load(absl::StrCat(proc_, "/", p.tgid, "/map_files/", range));
  if (!elf.ok()) elf = ElfSymbols::Load(absl::StrCat(proc_, "/", p.tgid, "/root", m.file->path));
  CachedElf c;
  c.elf = elf.ok() ? *elf : nullptr;
  c.bytes = c.elf != nullptr ? c.elf->bytes() : 0;
  c.last_use = ++clock_;
  elf_bytes_ += c.bytes;
  elfs_[m.file->key] = c;
  TrimElfs(m.file->key);
  return c.elf;
}

size_t Symbolizer::TrimElfs(const std::string& keep) {
  size_t freed = 0;
  while (!elfs_.empty() && (elfs_.size() > kMaxBinaries || elf_bytes_ > kMaxElfBytes)) {
    auto oldest = elfs_.end();
    for (auto e = elfs_.begin(); e != elfs_.end(); ++e) {
      if (e->first == keep) continue;
      if (oldest == elfs_.end() || e->second.last_use < oldest->second.last_use) oldest = e;
    }
    if (oldest == elfs_.end()) break;
    elf_bytes_ -= oldest->second.bytes;
    freed += oldest->second.bytes;
    elfs_.erase(oldest);
  }
  return freed;
}

void Symbolizer::Trim() {
  // Nothing is kept beyond the caps now, not even the newest table.
  const size_t freed = TrimElfs(std::string());
  // Symbol tables are large allocations of many sizes; glibc keeps freed ones in
  // kmon's RSS unless asked.
  if (freed >= (1u << 20)) malloc_trim(0);
}

void Symbolizer::Forget(const ProcessId& p) { procs_.erase(p); }

const Symbolizer::Mapping* Symbolizer::Find(const Process& p, uint64_t ip) const {
  auto it = std::upper_bound(p.maps.begin(), p.maps.end(), ip,
                             [](uint64_t a, const Mapping& m) { return a < m.start; });
  if (it == p.maps.begin()) return nullptr;
  const Mapping& m = *(it - 1);
  return ip < m.end ? &m : nullptr;
}

std::string Symbolizer::UserFrame(const ProcessId& p, uint64_t ip, bool leaf) {
  auto it = procs_.find(p);
  if (it == procs_.end()) return kUnknownFrame;
  it->second.last_use = ++clock_;
  const uint64_t addr = leaf || ip == 0 ? ip : ip - 1;
  const Mapping* m = Find(it->second, addr);
  // An address outside every mapping (after a dlopen, say): read the maps again, at
  // most every kRecaptureAfter.
  if (m == nullptr && std::chrono::steady_clock::now() - it->second.captured >= kRecaptureAfter &&
      CaptureNow(p)) {
    it = procs_.find(p);
    m = Find(it->second, addr);
  }
  if (m == nullptr) return kUnknownFrame;
  if (m->file == nullptr) return m->special.empty() ? kUnknownFrame : m->special;  // [vdso]
  if (std::shared_ptr<const ElfSymbols> elf = Elf(p, *m)) {
    std::optional<std::string> name = elf->LookupFileOffset(addr - m->start + m->offset);
    if (name) return *name;
  }
  // The file is known, the function is not (a stripped binary): name the file.
  return absl::StrCat("[", Basename(m->file->path), "]");
}

}  // namespace kmon
