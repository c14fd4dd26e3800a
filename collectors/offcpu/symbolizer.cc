#include "collectors/offcpu/symbolizer.h"

#include <absl/strings/str_cat.h>
#include <malloc.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <optional>

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
    for (auto f = files_.begin(); f != files_.end();)
      f = f->second.expired() ? files_.erase(f) : std::next(f);
  }
  auto f = std::make_shared<const File>(File{key, m.path, m.dev, m.inode});
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

absl::StatusOr<std::shared_ptr<const ElfSymbols>> Symbolizer::LoadIfSameFile(const File& f) {
  struct stat st;
  unsigned maj = 0, min = 0;
  if (std::sscanf(f.dev.c_str(), "%x:%x", &maj, &min) != 2 || stat(f.path.c_str(), &st) != 0 ||
      major(st.st_dev) != maj || minor(st.st_dev) != min || st.st_ino != f.inode) {
    return absl::NotFoundError(absl::StrCat(f.path, ": not the mapped file here"));
  }
  return ElfSymbols::Load(f.path);
}

std::shared_ptr<const ElfSymbols> Symbolizer::Elf(const ProcessId& p, const Mapping& m) {
  if (m.file == nullptr) return nullptr;
  auto it = elfs_.find(m.file->key);
  if (it != elfs_.end()) {
    it->second.last_use = ++clock_;
    return it->second.elf;
  }
  // The file is read through the process: map_files reaches it even when it was
  // deleted or replaced, or lives in another mount namespace (a container's root),
  // but only with CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE), which kmon drops after
  // start; /proc/PID/root/PATH needs only CAP_SYS_PTRACE. Only while the PID is
  // still this process's, or it would be another process's file. Last, and for a
  // process that has exited since its maps were captured, the same path as kmon
  // sees it, if it is the same file (device and inode): a host process's binary.
  absl::StatusOr<std::shared_ptr<const ElfSymbols>> elf =
      absl::NotFoundError("the process has exited");
  if (Alive(p)) {
    char range[64];
    std::snprintf(range, sizeof range, "%llx-%llx", static_cast<unsigned long long>(m.start),
                  static_cast<unsigned long long>(m.end));
    elf = ElfSymbols::Load(absl::StrCat(proc_, "/", p.tgid, "/map_files/", range));
    if (!elf.ok()) elf = ElfSymbols::Load(absl::StrCat(proc_, "/", p.tgid, "/root", m.file->path));
  }
  if (!elf.ok()) elf = LoadIfSameFile(*m.file);
  if (!elf.ok() && !Alive(p)) return nullptr;  // not cached: another process may map it
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
