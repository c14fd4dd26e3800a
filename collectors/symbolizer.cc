#include "collectors/symbolizer.h"

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
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include <absl/strings/str_cat.h>

namespace kmon {
namespace {

// A process whose stack shows an address outside every captured mapping (after a
// dlopen, say) is read again, at most this often.
constexpr auto kRecaptureAfter = std::chrono::seconds(1);

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool ParseHex(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    v = v * 16 + d;
  }
  *out = v;
  return true;
}

// Splits off the next field of `s`, separated by spaces or tabs (kallsyms puts a
// tab before a module name).
std::string_view NextField(std::string_view* s) {
  size_t b = s->find_first_not_of(" \t");
  if (b == std::string_view::npos) {
    *s = {};
    return {};
  }
  s->remove_prefix(b);
  size_t e = s->find_first_of(" \t");
  std::string_view f = s->substr(0, e);
  s->remove_prefix(e == std::string_view::npos ? s->size() : e);
  return f;
}

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

// ---- kernel ----

// Collects kallsyms lines into the compact arrays of a KernelSymbols, without
// keeping the text (4.5 MiB) or a vector of per-line strings around.
class KernelSymbolsBuilder {
 public:
  void Line(std::string_view line) {
    std::string_view addr = NextField(&line);
    std::string_view type = NextField(&line);
    std::string_view name = NextField(&line);
    std::string_view module = NextField(&line);
    if (type.size() != 1 || name.empty()) return;
    uint64_t a;
    if (!ParseHex(addr, &a)) return;
    // The ends of the core kernel's text and init text: not functions, but where the
    // last function before them ends.
    if (module.empty() && (name == "_etext" || name == "_einittext")) {
      Add(a, kMarker, {});
      return;
    }
    const char t = type[0];
    if (t != 't' && t != 'T' && t != 'w' && t != 'W') return;  // functions only
    // __pfx_X is the padding before X (CONFIG_FUNCTION_PADDING): no return address
    // points into it, and leaving it out halves the table.
    if (name.substr(0, 6) == "__pfx_") return;
    uint16_t mod = 0;
    if (module.size() > 2 && module.front() == '[' && module.back() == ']') {
      module = module.substr(1, module.size() - 2);
      auto it = module_ids_.find(std::string(module));
      if (it == module_ids_.end()) {
        if (module_names_.size() + 1 >= kMarker) return;
        it = module_ids_.emplace(std::string(module), module_names_.size() + 1).first;
        module_names_.emplace_back(module);
      }
      mod = it->second;
    }
    Add(a, mod, name);
  }

  KernelSymbols Finish(std::string_view modules_text) {
    // Module extents from /proc/modules: "name size refs deps state 0xaddr ...".
    std::unordered_map<uint16_t, std::pair<uint64_t, uint64_t>> extents;
    while (!modules_text.empty()) {
      size_t nl = modules_text.find('\n');
      std::string_view line = modules_text.substr(0, nl);
      modules_text.remove_prefix(nl == std::string_view::npos ? modules_text.size() : nl + 1);
      std::string_view fields[6];
      for (auto& f : fields) f = NextField(&line);
      auto it = module_ids_.find(std::string(fields[0]));
      uint64_t size = std::strtoull(std::string(fields[1]).c_str(), nullptr, 10);
      uint64_t base;
      if (it == module_ids_.end() || fields[5].substr(0, 2) != "0x" ||
          !ParseHex(fields[5].substr(2), &base) || base == 0) {
        continue;
      }
      extents[it->second] = {base, base + size};
    }
    auto region_end = [&](uint64_t addr, uint16_t mod) {
      uint64_t end = addr + KernelSymbols::kMaxLastSymbolSize;
      auto it = extents.find(mod);
      if (mod != 0 && it != extents.end() && addr >= it->second.first && addr < it->second.second) {
        end = std::min(end, it->second.second);
      }
      return end;
    };

    std::vector<uint32_t> order(addrs_.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return addrs_[a] < addrs_[b]; });
    KernelSymbols k;
    k.addrs_.reserve(order.size());
    k.name_offsets_.reserve(order.size());
    uint16_t last_mod = 0;
    bool open = false;  // the last symbol kept still waits for its end
    for (uint32_t i : order) {
      const uint64_t a = addrs_[i];
      const uint16_t mod = mods_[i];
      if (mod == kMarker) {
        if (open && last_mod == 0 && a > k.addrs_.back()) {
          k.early_ends_.emplace_back(static_cast<uint32_t>(k.addrs_.size() - 1), a);
          open = false;
        }
        continue;
      }
      if (!k.addrs_.empty() && k.addrs_.back() == a) continue;  // an alias: keep the first listed
      if (open && mod != last_mod) {
        // The previous symbol was the last of its region.
        const uint64_t prev = k.addrs_.back();
        k.early_ends_.emplace_back(static_cast<uint32_t>(k.addrs_.size() - 1),
                                   std::min(a, region_end(prev, last_mod)));
      }
      k.addrs_.push_back(a);
      k.name_offsets_.push_back(name_offsets_[i]);
      last_mod = mod;
      open = true;
    }
    if (open) {
      k.early_ends_.emplace_back(static_cast<uint32_t>(k.addrs_.size() - 1),
                                 region_end(k.addrs_.back(), last_mod));
    }
    k.names_ = std::move(names_);
    k.names_.shrink_to_fit();
    k.early_ends_.shrink_to_fit();
    return k;
  }

 private:
  static constexpr uint16_t kMarker = 0xffff;

  void Add(uint64_t addr, uint16_t mod, std::string_view name) {
    addrs_.push_back(addr);
    mods_.push_back(mod);
    name_offsets_.push_back(static_cast<uint32_t>(names_.size()));
    names_.append(name.data(), name.size());
    names_.push_back('\0');
  }

  std::vector<uint64_t> addrs_;
  std::vector<uint16_t> mods_;  // 0: the core kernel; kMarker: an end marker
  std::vector<uint32_t> name_offsets_;
  std::string names_;
  std::unordered_map<std::string, uint16_t> module_ids_;
  std::vector<std::string> module_names_;
};

KernelSymbols::KernelSymbols(KernelSymbols&& o) noexcept
    : addrs_(std::move(o.addrs_)),
      name_offsets_(std::move(o.name_offsets_)),
      names_(std::move(o.names_)),
      early_ends_(std::move(o.early_ends_)),
      misses_(o.misses_.load()) {}

KernelSymbols KernelSymbols::Parse(std::string_view text, std::string_view modules) {
  KernelSymbolsBuilder b;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    b.Line(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
  }
  return b.Finish(modules);
}

absl::StatusOr<std::shared_ptr<const KernelSymbols>> KernelSymbols::Load(
    const std::string& path, const std::string& modules_path) {
  // Streamed in chunks: the text is parsed as it comes, never held whole.
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  KernelSymbolsBuilder b;
  std::string buf;
  std::vector<char> chunk(64 * 1024);
  size_t n;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), f)) > 0) {
    buf.append(chunk.data(), n);
    size_t from = 0, nl;
    while ((nl = buf.find('\n', from)) != std::string::npos) {
      b.Line(std::string_view(buf).substr(from, nl - from));
      from = nl + 1;
    }
    buf.erase(0, from);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::UnavailableError(absl::StrCat("reading ", path, " failed"));
  if (!buf.empty()) b.Line(buf);
  std::string modules = ReadFile(modules_path).value_or("");
  auto k = std::make_shared<KernelSymbols>(b.Finish(modules));
  if (k->size() == 0 || (k->size() == 1 && k->addrs_[0] == 0)) {
    return absl::PermissionDeniedError(
        absl::StrCat(path, " lists no kernel addresses (hidden by kernel.kptr_restrict?)"));
  }
  return std::shared_ptr<const KernelSymbols>(std::move(k));
}

std::optional<std::string> KernelSymbols::Lookup(uint64_t addr) const {
  auto it = std::upper_bound(addrs_.begin(), addrs_.end(), addr);
  if (it != addrs_.begin()) {
    const uint32_t i = static_cast<uint32_t>(it - addrs_.begin()) - 1;
    auto e = std::lower_bound(early_ends_.begin(), early_ends_.end(), std::make_pair(i, uint64_t{0}));
    const uint64_t end = e != early_ends_.end() && e->first == i ? e->second
                         : i + 1 < addrs_.size()               ? addrs_[i + 1]
                                                               : addrs_[i] + kMaxLastSymbolSize;
    if (addrs_[i] != 0 && addr < end) return std::string(names_.data() + name_offsets_[i]);
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

std::shared_ptr<const KernelSymbols> KernelSymbols::Shared(absl::Status* why) {
  static KernelSymbolsCache* const cache = new KernelSymbolsCache(
      [] {
        auto k = KernelSymbols::Load();
        // Parsing allocated and freed several MiB; hand the free pages back to the
        // system, or they stay in kmon's RSS.
        malloc_trim(0);
        return k;
      },
      kSharedReloadAfter);
  return cache->Get(std::chrono::steady_clock::now(), why);
}

KernelSymbolsCache::KernelSymbolsCache(Loader loader, std::chrono::steady_clock::duration min_reload)
    : loader_(std::move(loader)), min_reload_(min_reload) {}

std::shared_ptr<const KernelSymbols> KernelSymbolsCache::Get(std::chrono::steady_clock::time_point now,
                                                             absl::Status* why) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<const KernelSymbols> held = table_.lock();
  const bool recent = loaded_once_ && now - last_load_ < min_reload_;
  if (held != nullptr && (held->misses() == 0 || recent)) return held;
  if (held == nullptr && recent && !last_error_.ok()) {
    if (why != nullptr) *why = last_error_;
    return nullptr;
  }
  loaded_once_ = true;
  last_load_ = now;
  ++loads_;
  absl::StatusOr<std::shared_ptr<const KernelSymbols>> loaded = loader_();
  if (!loaded.ok()) {
    last_error_ = loaded.status();
    if (why != nullptr) *why = last_error_;
    return held;  // the old table (if any) still names what it knows
  }
  last_error_ = absl::OkStatus();
  table_ = *loaded;
  return *loaded;
}

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
  std::optional<std::string> text = ReadFile(absl::StrCat(proc_, "/", p.tgid, "/maps"));
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
