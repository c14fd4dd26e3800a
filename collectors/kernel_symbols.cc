#include "collectors/kernel_symbols.h"

#include <absl/strings/str_cat.h>
#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "collectors/proc_text.h"

namespace kmon {

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
  std::string modules = ReadWholeFile(modules_path).value_or("");
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
    auto e =
        std::lower_bound(early_ends_.begin(), early_ends_.end(), std::make_pair(i, uint64_t{0}));
    const uint64_t end = e != early_ends_.end() && e->first == i ? e->second
                         : i + 1 < addrs_.size()                 ? addrs_[i + 1]
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

KernelSymbolsCache::KernelSymbolsCache(Loader loader,
                                       std::chrono::steady_clock::duration min_reload)
    : loader_(std::move(loader)), min_reload_(min_reload) {}

std::shared_ptr<const KernelSymbols> KernelSymbolsCache::Get(
    std::chrono::steady_clock::time_point now, absl::Status* why) {
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

}  // namespace kmon
