#include "provider/workload.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "base/split.h"

namespace kmon {
namespace {

constexpr size_t kShortIdLength = 12;

class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

struct DirCloser {
  void operator()(DIR* d) const { closedir(d); }
};
using ScopedDir = std::unique_ptr<DIR, DirCloser>;

// mountinfo escapes space, tab, newline and backslash in paths as a backslash and three
// octal digits (proc(5)); anything else is taken literally.
std::string UnescapeMountField(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      std::string_view digits = field.substr(i + 1, 3);
      if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '7'; })) {
        out.push_back(
            static_cast<char>((digits[0] - '0') * 64 + (digits[1] - '0') * 8 + (digits[2] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

}  // namespace

WorkloadLabels BuildLabels(const CgroupIdentity& id, const PodMeta* meta) {
  if (!id.IsPod()) return WorkloadLabels{"", "", id.host_name};
  std::string short_id = id.container_id.substr(0, kShortIdLength);
  if (meta == nullptr) return WorkloadLabels{"", id.pod_uid, std::move(short_id)};
  WorkloadLabels labels{meta->namespace_, meta->name, "", meta->workload};
  if (!id.container_id.empty()) {
    // The metadata can lag the cgroup (a container just started) and never lists the pod's
    // sandbox ("pause") container, so an ID it does not know keeps its short form.
    auto it = meta->containers.find(id.container_id);
    labels.container = it != meta->containers.end() ? it->second : std::move(short_id);
  }
  return labels;
}

CgroupFsPathSource::CgroupFsPathSource(std::string root) : root_(std::move(root)) {}

// Kernel fact this rests on: on cgroup v2 (kernfs) a directory's inode number is the
// kernfs node id, which is exactly what bpf_get_current_cgroup_id() returns (verified on
// kernel 6.18: a task moved into a new cgroup reported the id `stat -c %i` printed).
//
// Hand-rolled instead of nftw(3): glibc's nftw aborts the whole walk when opendir() fails
// with ENOENT, and cgroups vanish all the time; it also needs global state for the callback.
// An unreadable root yields an empty map: the resolver then simply knows no cgroups.
std::unordered_map<uint64_t, std::string> CgroupFsPathSource::Scan() {
  std::unordered_map<uint64_t, std::string> out;
  ScopedFd root_fd(open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (root_fd.get() < 0) return out;
  struct stat root_st;
  if (fstat(root_fd.get(), &root_st) != 0) return out;
  out.emplace(root_st.st_ino, "/");

  // Paths relative to the root ("" is the root). Depth-first with an explicit stack so
  // only one directory is open at a time, however deep the tree.
  std::vector<std::string> pending = {""};
  while (!pending.empty()) {
    std::string rel = std::move(pending.back());
    pending.pop_back();
    int fd = openat(root_fd.get(), rel.empty() ? "." : rel.c_str(),
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;  // removed since we listed it: nothing below it to find
    ScopedDir dir(fdopendir(fd));
    if (!dir) {
      close(fd);
      continue;
    }
    while (struct dirent* entry = readdir(dir.get())) {
      if (entry->d_type != DT_DIR && entry->d_type != DT_UNKNOWN) continue;
      if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) {
        continue;
      }
      struct stat st;
      // AT_SYMLINK_NOFOLLOW: a symlink is never a cgroup and must not lead us elsewhere.
      if (fstatat(dirfd(dir.get()), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      if (!S_ISDIR(st.st_mode)) continue;
      // Another filesystem mounted inside the hierarchy is not part of it.
      if (st.st_dev != root_st.st_dev) continue;
      std::string child = rel.empty() ? std::string(entry->d_name) : rel + "/" + entry->d_name;
      out.emplace(st.st_ino, "/" + child);
      pending.push_back(std::move(child));
    }
  }
  return out;
}

std::optional<std::string> ParseCgroup2MountPoint(std::string_view mountinfo) {
  // Line format (proc(5)): id parent major:minor root mount-point options [optional...] -
  // fstype source super-options. The optional fields vary in number, hence the search for
  // the "-" separator.
  std::optional<std::string> best;
  int best_score = -1;
  size_t pos = 0;
  while (pos < mountinfo.size()) {
    size_t eol = mountinfo.find('\n', pos);
    if (eol == std::string_view::npos) eol = mountinfo.size();
    std::vector<std::string_view> fields = SplitNonEmpty(mountinfo.substr(pos, eol - pos), ' ');
    pos = eol + 1;
    if (fields.size() < 7) continue;
    auto sep = std::find(fields.begin() + 6, fields.end(), std::string_view("-"));
    if (sep == fields.end() || sep + 1 == fields.end() || *(sep + 1) != "cgroup2") continue;
    std::string mount_point = UnescapeMountField(fields[4]);
    int score = 0;
    if (fields[3] == "/") score += 2;
    if (mount_point == "/sys/fs/cgroup" || mount_point == "/sys/fs/cgroup/unified") score += 1;
    if (score > best_score) {
      best_score = score;
      best = std::move(mount_point);
    }
  }
  return best;
}

std::optional<std::string> DetectCgroup2Root() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return ParseCgroup2MountPoint(text.str());
}

WorkloadResolver::WorkloadResolver(std::unique_ptr<CgroupPathSource> paths,
                                   const PodMetadataSource* pods,
                                   std::chrono::milliseconds min_rescan_interval)
    : paths_(std::move(paths)), pods_(pods), min_rescan_interval_(min_rescan_interval) {}

std::optional<WorkloadLabels> WorkloadResolver::Lookup(uint64_t cgroup_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry* entry = FindLocked(cgroup_id);
  if (entry == nullptr) return std::nullopt;
  // Pod metadata changes as the Kubernetes watch catches up; its generation says when
  // the labels built from it are stale. The source takes its own lock and never calls
  // back into the resolver, so asking it under mu_ cannot deadlock.
  const bool with_meta = entry->identity.IsPod() && pods_ != nullptr;
  const uint64_t gen = with_meta ? pods_->Generation() : 0;
  if (!entry->labels || entry->labels_gen != gen) {
    std::optional<PodMeta> meta;
    if (with_meta) meta = pods_->PodByUid(entry->identity.pod_uid);
    entry->labels = BuildLabels(entry->identity, meta ? &*meta : nullptr);
    entry->labels_gen = gen;
  }
  return entry->labels;
}

std::optional<std::pair<std::string, CgroupIdentity>> WorkloadResolver::Describe(
    uint64_t cgroup_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry* entry = FindLocked(cgroup_id);
  if (entry == nullptr) return std::nullopt;
  return std::make_pair(entry->path, entry->identity);
}

std::vector<std::pair<uint64_t, CgroupIdentity>> WorkloadResolver::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  RescanLocked();
  std::vector<std::pair<uint64_t, CgroupIdentity>> all;
  all.reserve(cache_.size());
  for (const auto& [id, entry] : cache_) {
    if (!entry.gone_since) all.emplace_back(id, entry.identity);
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return all;
}

size_t WorkloadResolver::CachedCount() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cache_.size();
}

void WorkloadResolver::SetPodGrace(std::chrono::nanoseconds grace) {
  std::lock_guard<std::mutex> lock(mu_);
  pod_grace_ = grace;
}

// The scan runs under mu_ on purpose: concurrent lookups of unknown ids then queue behind
// the first one and find the fresh cache (or the rate limit) instead of each walking the
// tree. A walk of a few thousand cgroups takes milliseconds.
WorkloadResolver::Entry* WorkloadResolver::FindLocked(uint64_t cgroup_id) {
  auto it = cache_.find(cgroup_id);
  if (it != cache_.end()) {
    // A pod's grace ends when it ends, not at the next scan (which may be an interval away).
    if (it->second.gone_since && now_() - *it->second.gone_since >= pod_grace_) {
      cache_.erase(it);
      return nullptr;
    }
    return &it->second;
  }
  // Ids the BPF side reports for cgroups that died before we saw them would otherwise
  // cost a walk each; the interval bounds that to one walk per interval.
  if (scanned_ && std::chrono::steady_clock::now() - last_scan_ < min_rescan_interval_) {
    return nullptr;
  }
  RescanLocked();
  it = cache_.find(cgroup_id);
  return it == cache_.end() ? nullptr : &it->second;
}

void WorkloadResolver::RescanLocked() {
  std::unordered_map<uint64_t, std::string> live = paths_->Scan();
  std::unordered_map<uint64_t, Entry> next;
  next.reserve(live.size());
  for (auto& [id, path] : live) {
    auto old = cache_.find(id);
    if (old != cache_.end() && old->second.path == path) {
      old->second.gone_since.reset();
      next.emplace(id, std::move(old->second));
      continue;
    }
    CgroupIdentity identity = ParseCgroupPath(path);
    next.emplace(id, Entry{std::move(path), std::move(identity)});
  }
  // A pod's cgroup that is gone keeps its entry, and so its names, for the pod grace;
  // kernfs never reuses a cgroup id while the system runs, so no live cgroup can
  // answer for it meanwhile.
  const Clock::time_point now = now_();
  for (auto& [id, entry] : cache_) {
    if (next.count(id) || !entry.identity.IsPod() || pod_grace_ <= std::chrono::nanoseconds(0)) {
      continue;
    }
    if (!entry.gone_since) entry.gone_since = now;
    if (now - *entry.gone_since < pod_grace_) next.emplace(id, std::move(entry));
  }
  // Replacing the whole map is what forgets dead cgroups: only live ids and pods in
  // their grace are carried over.
  cache_ = std::move(next);
  // Stamped after the walk so a slow walk still leaves a full quiet interval behind it.
  last_scan_ = std::chrono::steady_clock::now();
  scanned_ = true;
}

}  // namespace kmon
