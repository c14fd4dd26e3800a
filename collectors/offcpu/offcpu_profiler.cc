#include "collectors/offcpu/offcpu_profiler.h"

#include <absl/strings/str_cat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "base/log.h"

namespace kmon {
namespace {

// The stack map is swept of ids nothing refers to once it is this full, checked every
// kStackSweepPeriod; and whenever recorded episodes lost their stack to a collision
// since the last sweep, at most every kCollisionSweepPeriod. A new stack collides
// with probability (ids held / capacity), and most ids held are stacks of episodes
// shorter than offcpu_min (a stack is taken at switch-out, before the episode's
// length is known), which nothing refers to once their thread runs again. A sweep
// walks the ids, a syscall each: a few ms for a quarter-full map.
constexpr double kStackSweepFill = 0.25;
constexpr auto kStackSweepPeriod = std::chrono::seconds(10);
constexpr auto kCollisionSweepPeriod = std::chrono::seconds(5);

// Shown for a stack that was there but could not be stored (KMON_CPU_STACK_COLLIDED,
// KMON_CPU_STACK_NO_ROOM).
constexpr char kLostFrame[] = "[stack lost]";

// Innermost kernel frames that are the tracing machinery itself (the BPF program,
// the tracepoint's iterator), not the code that blocked: dropped.
bool IsTracingFrame(const std::string& name) {
  static const char* const kPrefixes[] = {"bpf_prog_",    "bpf_trace_run", "__bpf_trace_",
                                          "__traceiter_", "bpf_get_stack", "perf_trace_"};
  for (const char* p : kPrefixes) {
    if (name.rfind(p, 0) == 0) return true;
  }
  return false;
}

uint64_t Mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

void AddTo(OffCpuTotals* t, const OffCpuTotals& d) {
  t->ns += d.ns;
  t->count += d.count;
}

// now - before, where a total below its earlier value was deleted and started again.
OffCpuTotals Since(const OffCpuTotals& now, const OffCpuTotals& before) {
  return {now.ns >= before.ns ? now.ns - before.ns : now.ns,
          now.count >= before.count ? now.count - before.count : now.count};
}

ProcessId ProcessOf(const offcpu_stack_key& k) { return ProcessId{k.tgid, k.start_ns}; }

}  // namespace

size_t OffCpuProfiler::KeyHash::operator()(const offcpu_stack_key& k) const {
  uint64_t h = Mix(k.cgroup_id, k.tgid);
  h = Mix(h, k.start_ns);
  h = Mix(h, static_cast<uint32_t>(k.kstack));
  h = Mix(h, static_cast<uint32_t>(k.ustack));
  uint64_t comm[2];
  static_assert(sizeof comm == sizeof k.comm);
  std::memcpy(comm, k.comm, sizeof comm);
  h = Mix(Mix(h, comm[0]), comm[1]);
  return static_cast<size_t>(h);
}

bool OffCpuProfiler::KeyEq::operator()(const offcpu_stack_key& a, const offcpu_stack_key& b) const {
  return a.cgroup_id == b.cgroup_id && a.start_ns == b.start_ns && a.tgid == b.tgid &&
         a.kstack == b.kstack && a.ustack == b.ustack &&
         std::memcmp(a.comm, b.comm, sizeof a.comm) == 0;
}

size_t OffCpuProfiler::ViewKeyHash::operator()(const ViewKey& k) const {
  return static_cast<size_t>(Mix(k.cgroup_id, k.stack));
}

size_t OffCpuProfiler::FramesHash::operator()(const Frames& f) const {
  uint64_t h = f.size();
  for (uint32_t id : f) h = Mix(h, id);
  return static_cast<size_t>(h);
}

OffCpuProfiler::OffCpuProfiler(std::unique_ptr<OffCpuStackSource> source,
                               std::unique_ptr<FrameResolver> frames, WorkloadResolver* workloads,
                               std::chrono::steady_clock::time_point start, size_t max_retired)
    : source_(std::move(source)),
      frames_(std::move(frames)),
      workloads_(workloads),
      start_(start),
      max_retired_(max_retired),
      last_snapshot_time_(start),
      base_time_(start) {}

uint32_t OffCpuProfiler::InternFrame(const std::string& name) {
  auto it = frame_index_.find(name);
  if (it != frame_index_.end()) return it->second;
  uint32_t id;
  if (!free_frames_.empty()) {
    id = free_frames_.back();
    free_frames_.pop_back();
  } else {
    id = static_cast<uint32_t>(frame_names_.size());
    frame_names_.push_back(nullptr);
  }
  it = frame_index_.emplace(name, id).first;
  frame_names_[id] = &it->first;  // node-based map: the key's address is stable
  return id;
}

const OffCpuProfiler::Frames& OffCpuProfiler::KernelFrames(int32_t id) {
  static const Frames kNone;
  if (id == KMON_CPU_NO_STACK) return kNone;
  auto it = kernel_frames_.find(id);
  if (it != kernel_frames_.end()) return it->second;
  Frames frames;
  if (id < 0) {
    frames.push_back(InternFrame(kLostFrame));
  } else {
    std::vector<uint64_t> ips = source_->Stack(id);
    std::vector<std::string> names;
    for (uint64_t ip : ips) names.push_back(frames_->Kernel(ip));
    // names is innermost first: cut the tracing frames above __schedule.
    size_t cut = 0;
    for (size_t i = 0; i < names.size() && i < 8; ++i) {
      if (IsTracingFrame(names[i])) cut = i + 1;
    }
    names.erase(names.begin(), names.begin() + static_cast<long>(cut));
    if (names.empty() && ips.empty()) names.push_back(kUnknownFrame);
    for (auto n = names.rbegin(); n != names.rend(); ++n) frames.push_back(InternFrame(*n));
  }
  return kernel_frames_.emplace(id, std::move(frames)).first->second;
}

uint32_t OffCpuProfiler::InternStack(Frames frames) {
  auto it = stack_index_.find(frames);
  if (it != stack_index_.end()) return it->second;
  const uint32_t id = next_stack_++;
  it = stack_index_.emplace(std::move(frames), id).first;
  stacks_.emplace(id, &it->first);
  return id;
}

uint32_t OffCpuProfiler::Name(const offcpu_stack_key& key) {
  Frames f;
  const std::string comm(key.comm, strnlen(key.comm, sizeof key.comm));
  f.push_back(comm.empty() ? kNoProcess : InternFrame(comm));
  if (key.ustack < 0 && key.ustack != KMON_CPU_NO_STACK) {  // collided, or no room
    f.push_back(InternFrame(kLostFrame));
  } else if (key.ustack >= 0) {
    // The process's maps are read now, while it (most likely) still runs: its
    // episode ended at most a second ago.
    const ProcessId p = ProcessOf(key);
    frames_->Capture(p);
    std::vector<uint64_t> ips = source_->Stack(key.ustack);
    for (size_t i = ips.size(); i-- > 0;)
      f.push_back(InternFrame(frames_->User(p, ips[i], i == 0)));
    if (ips.empty()) f.push_back(InternFrame(kUnknownFrame));
  }
  f.push_back(kSplit);
  const Frames& kernel = KernelFrames(key.kstack);
  f.insert(f.end(), kernel.begin(), kernel.end());
  return InternStack(std::move(f));
}

OffCpuProfiler::View OffCpuProfiler::CurrentView() const {
  View v = retired_;
  for (const auto& [key, live] : live_) AddTo(&v[ViewKey{key.cgroup_id, live.stack}], live.totals);
  return v;
}

// The process has exited (or its PID is another process's now), so nothing adds to
// its keys any more: each moves to user space with its final value, unless there is
// no room, in which case it stays in the kernel map (where it still counts) and is
// counted once as lost to the store.
void OffCpuProfiler::Retire(const ProcessId& p, const std::vector<offcpu_stack_key>& keys,
                            bool known_dead) {
  for (const auto& key : keys) {
    auto it = live_.find(key);
    if (it == live_.end()) continue;
    ViewKey vk{key.cgroup_id, it->second.stack};
    if (!retired_.count(vk) && retired_.size() >= max_retired_) {
      if (!it->second.stuck) {
        it->second.stuck = true;
        ++retired_dropped_;
      }
      continue;
    }
    std::optional<OffCpuTotals> final_totals = source_->Take(key);
    AddTo(&retired_[vk], final_totals.value_or(it->second.totals));
    live_.erase(it);
  }
  // Its stacks are named: the maps are needed no more.
  if (!known_dead) frames_->Forget(p);
}

void OffCpuProfiler::DropGoneCgroups(std::chrono::steady_clock::time_point now) {
  std::unordered_set<uint64_t> cgroups;
  for (const auto& [key, live] : live_) cgroups.insert(key.cgroup_id);
  for (const auto& [key, totals] : retired_) cgroups.insert(key.cgroup_id);
  std::unordered_set<uint64_t> gone;
  missing_cgroups_.Begin(now);
  for (uint64_t cg : cgroups) {
    if (workloads_->Lookup(cg).has_value()) continue;
    if (missing_cgroups_.Gone(cg)) gone.insert(cg);
  }
  missing_cgroups_.End();
  if (gone.empty()) return;
  for (auto it = live_.begin(); it != live_.end();) {
    if (gone.count(it->first.cgroup_id)) {
      source_->Take(it->first);
      it = live_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = retired_.begin(); it != retired_.end();) {
    it = gone.count(it->first.cgroup_id) ? retired_.erase(it) : std::next(it);
  }
  for (uint64_t cg : gone) missing_cgroups_.Forget(cg);
}

// Stack ids nothing refers to any more (no aggregate, no thread off CPU holding it)
// are deleted from the kernel's stack map, so new stacks find room and collide less.
// The ids of live aggregates come from the Read just before, the held ids are read
// here: a thread that takes an id between the two reads and blocks across the delete
// gets "[unknown]" frames for that episode.
void OffCpuProfiler::SweepStackIds(std::chrono::steady_clock::time_point now) {
  const uint64_t collisions = source_->StackCollisions();
  const bool collided =
      collisions != collisions_at_sweep_ && now - last_stack_sweep_ >= kCollisionSweepPeriod;
  const bool check_fill = now - last_fill_check_ >= kStackSweepPeriod;
  if (!collided && !check_fill) return;
  if (check_fill) last_fill_check_ = now;
  std::vector<int32_t> ids = source_->StackIds();  // a syscall per id: not every second
  if (!collided && ids.size() < kStackSweepFill * source_->StackCapacity()) return;
  last_stack_sweep_ = now;
  collisions_at_sweep_ = collisions;
  std::unordered_set<int32_t> used;
  for (const auto& [key, live] : live_) {
    used.insert(key.kstack);
    used.insert(key.ustack);
  }
  for (int32_t id : source_->StackIdsHeldByThreads()) used.insert(id);
  size_t freed = 0;
  for (int32_t id : ids) {
    if (used.count(id)) continue;
    source_->DeleteStack(id);
    kernel_frames_.erase(id);
    ++freed;
  }
  LogDebug("swept the off-CPU stack map", {{"collector", "cpu"},
                                           {"ids", std::to_string(ids.size())},
                                           {"freed", std::to_string(freed)},
                                           {"collisions", std::to_string(collisions)}});
}

// Named stacks no aggregate, retired total or snapshot refers to are forgotten, and
// so are frame names no named stack uses.
void OffCpuProfiler::CollectNamedStacks() {
  if (stacks_.size() < 2 * stacks_gc_mark_) return;
  std::unordered_set<uint32_t> used;
  for (const auto& [key, live] : live_) used.insert(live.stack);
  for (const auto& [key, t] : retired_) used.insert(key.stack);
  for (const auto& [key, t] : last_snapshot_) used.insert(key.stack);
  for (const auto& d : deltas_) {
    for (const auto& e : d.entries) used.insert(e.key.stack);
  }
  for (auto it = stack_index_.begin(); it != stack_index_.end();) {
    if (used.count(it->second)) {
      ++it;
      continue;
    }
    stacks_.erase(it->second);
    it = stack_index_.erase(it);
  }
  std::vector<bool> frame_used(frame_names_.size(), false);
  for (const auto& [frames, id] : stack_index_) {
    for (uint32_t f : frames) {
      if (f != kSplit && f != kNoProcess) frame_used[f] = true;
    }
  }
  for (const auto& [id, frames] : kernel_frames_) {
    for (uint32_t f : frames) frame_used[f] = true;
  }
  for (uint32_t f = 0; f < frame_names_.size(); ++f) {
    if (frame_used[f] || frame_names_[f] == nullptr) continue;
    frame_index_.erase(*frame_names_[f]);
    frame_names_[f] = nullptr;
    free_frames_.push_back(f);
  }
  stacks_gc_mark_ = std::max<size_t>(1024, stacks_.size());
}

// Deltas older than kFineHistory are merged pairwise while the span they cover
// stays within kCoarsePeriod: windows reaching that far back are rounded up to
// about a minute, and ten minutes of history cost 21 deltas instead of 120.
void OffCpuProfiler::MergeOldDeltas(std::chrono::steady_clock::time_point now) {
  for (size_t i = 0; i + 1 < deltas_.size();) {
    Delta& a = deltas_[i];
    Delta& b = deltas_[i + 1];
    if (now - b.time < kFineHistory) break;
    const auto from = i == 0 ? base_time_ : deltas_[i - 1].time;
    if (b.time - from > kCoarsePeriod) {
      ++i;
      continue;
    }
    std::vector<DeltaEntry> merged;
    merged.reserve(a.entries.size() + b.entries.size());
    size_t x = 0, y = 0;
    while (x < a.entries.size() || y < b.entries.size()) {
      if (y == b.entries.size() || (x < a.entries.size() && a.entries[x].key < b.entries[y].key)) {
        merged.push_back(a.entries[x++]);
      } else if (x == a.entries.size() || b.entries[y].key < a.entries[x].key) {
        merged.push_back(b.entries[y++]);
      } else {
        DeltaEntry e = a.entries[x++];
        AddTo(&e.totals, b.entries[y++].totals);
        merged.push_back(e);
      }
    }
    b.entries = std::move(merged);
    deltas_.erase(deltas_.begin() + static_cast<long>(i));
  }
}

void OffCpuStackSource::Clear() {
  std::vector<OffCpuRawEntry> entries;
  if (Read(&entries).ok()) {
    for (const auto& e : entries) Take(e.key);
  }
  for (int32_t id : StackIds()) DeleteStack(id);
}

void OffCpuProfiler::Reset(std::chrono::steady_clock::time_point now) {
  source_->Clear();
  for (const auto& [key, live] : live_) {
    if (!frames_->Alive(ProcessOf(key))) frames_->Forget(ProcessOf(key));
  }
  live_.clear();
  retired_.clear();
  kernel_frames_.clear();  // ids are reused for other stacks once the map is empty
  last_snapshot_.clear();
  deltas_.clear();
  missing_cgroups_ = MissingSince<uint64_t>();
  start_ = base_time_ = last_snapshot_time_ = now;
  collisions_at_sweep_ = source_->StackCollisions();
  stacks_gc_mark_ = 0;  // everything named is unreferenced now: collected at the next snapshot
}

absl::Status OffCpuProfiler::Refresh(std::chrono::steady_clock::time_point now) {
  std::vector<OffCpuRawEntry> entries;
  absl::Status st = source_->Read(&entries);
  if (!st.ok()) return st;

  // Every new process's maps are read before any stack is named: naming reads ELF
  // symbol tables, which takes a while with many new stacks, and a short-lived
  // process whose maps came only after that would have exited, its user frames
  // "[unknown]".
  for (const auto& e : entries) {
    if (e.key.ustack >= 0 && !live_.count(e.key)) frames_->Capture(ProcessOf(e.key));
  }
  std::unordered_set<offcpu_stack_key, KeyHash, KeyEq> seen;
  std::unordered_map<ProcessId, std::vector<offcpu_stack_key>, ProcessIdHash> by_process;
  bool named = false;
  for (const auto& e : entries) {
    seen.insert(e.key);
    by_process[ProcessOf(e.key)].push_back(e.key);
    auto it = live_.find(e.key);
    if (it == live_.end()) {
      live_.emplace(e.key, Live{Name(e.key), e.totals});
      named = true;
    } else {
      it->second.totals = e.totals;
    }
  }
  if (named) frames_->Trim();
  for (auto it = live_.begin(); it != live_.end();) {
    it = seen.count(it->first) ? std::next(it) : live_.erase(it);
  }
  // A process that has exited adds nothing more: its aggregates move to user space,
  // so the kernel map holds only live processes however many come and go. One whose
  // keys all found no room earlier is known dead: it is counted and forgotten
  // already, and tried again only once there is room.
  for (const auto& [proc, keys] : by_process) {
    bool all_stuck = true;
    for (const auto& k : keys) {
      auto it = live_.find(k);
      all_stuck &= it != live_.end() && it->second.stuck;
    }
    if (all_stuck) {
      if (retired_.size() < max_retired_) Retire(proc, keys, /*known_dead=*/true);
    } else if (!frames_->Alive(proc)) {
      Retire(proc, keys, /*known_dead=*/false);
    }
  }
  DropGoneCgroups(now);
  SweepStackIds(now);

  if (now - last_snapshot_time_ >= kSnapshotPeriod) {
    View current = CurrentView();
    Delta delta;
    delta.time = now;
    for (const auto& [key, t] : current) {
      auto it = last_snapshot_.find(key);
      OffCpuTotals d = it == last_snapshot_.end() ? t : Since(t, it->second);
      if (d.ns || d.count) delta.entries.push_back({key, d});
    }
    std::sort(delta.entries.begin(), delta.entries.end(),
              [](const DeltaEntry& a, const DeltaEntry& b) { return a.key < b.key; });
    deltas_.push_back(std::move(delta));
    last_snapshot_ = std::move(current);
    last_snapshot_time_ = now;
    // A delta at least kRetention old can become the base: windows up to kRetention
    // still find a snapshot old enough.
    while (!deltas_.empty() && now - deltas_.front().time >= kRetention) {
      base_time_ = deltas_.front().time;
      deltas_.pop_front();
    }
    MergeOldDeltas(now);
    CollectNamedStacks();
  }
  return absl::OkStatus();
}

absl::StatusOr<OffCpuResult> OffCpuProfiler::Query(const OffCpuQuery& q,
                                                   std::chrono::steady_clock::time_point now) {
  absl::Status st = Refresh(now);
  if (!st.ok()) return st;
  OffCpuResult result;
  View view = CurrentView();
  if (!q.window) {
    result.covered = now - start_;
  } else {
    // The newest snapshot at least `window` old: the window is rounded up to the grid.
    const auto cutoff = now - *q.window;
    auto base = base_time_;
    for (const auto& d : deltas_) {
      if (d.time <= cutoff) base = d.time;
    }
    result.covered = now - base;
    // view(now) - view(base) = (view(now) - view(last snapshot)) + deltas after base.
    View w;
    for (const auto& [key, t] : view) {
      auto it = last_snapshot_.find(key);
      OffCpuTotals d = it == last_snapshot_.end() ? t : Since(t, it->second);
      if (d.ns || d.count) w.emplace(key, d);
    }
    for (const auto& d : deltas_) {
      if (d.time <= base) continue;
      for (const auto& e : d.entries) AddTo(&w[e.key], e.totals);
    }
    view = std::move(w);
  }

  std::unordered_map<uint64_t, std::optional<WorkloadLabels>> labels_of;
  for (const auto& [key, t] : view) {
    if (t.ns == 0) continue;
    auto lit = labels_of.find(key.cgroup_id);
    if (lit == labels_of.end()) {
      lit = labels_of.emplace(key.cgroup_id, workloads_->Lookup(key.cgroup_id)).first;
    }
    // A cgroup removed moments ago is still shown, by its id.
    WorkloadLabels labels =
        lit->second.value_or(WorkloadLabels{"", "", absl::StrCat("[cgroup ", key.cgroup_id, "]")});
    if (q.namespace_ && labels.namespace_ != *q.namespace_) continue;
    if (q.pod && labels.pod != *q.pod) continue;
    if (q.container && labels.container != *q.container) continue;
    auto sit = stacks_.find(key.stack);
    if (sit == stacks_.end()) continue;
    OffCpuStack s;
    s.labels = std::move(labels);
    const Frames& frames = *sit->second;
    if (frames.front() != kNoProcess) s.process = *frame_names_[frames.front()];
    bool kernel = false;
    for (size_t i = 1; i < frames.size(); ++i) {
      const uint32_t f = frames[i];
      if (f == kSplit) {
        kernel = true;
        continue;
      }
      (kernel ? s.kernel : s.user).push_back(*frame_names_[f]);
    }
    s.ns = t.ns;
    s.count = t.count;
    result.stacks.push_back(std::move(s));
  }
  std::sort(result.stacks.begin(), result.stacks.end(),
            [](const OffCpuStack& a, const OffCpuStack& b) { return a.ns > b.ns; });
  return result;
}

}  // namespace kmon
