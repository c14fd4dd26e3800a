// Naming stack addresses: kallsyms text (bounded extents, the shared table re-read
// after misses), /proc/PID/maps text, ELF symbol tables of real files (this test
// binary, whose functions below are the fixture, and libc), processes told apart by
// start time in a fake /proc, and the symbolizer's caps.
#include "collectors/offcpu/symbolizer.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>

// Fixture functions: their names must come back from their addresses.
extern "C" __attribute__((noinline, used)) int kmon_symbolizer_fixture_c(int x) {
  asm volatile("" ::: "memory");
  return x * 3 + 1;
}

namespace kmon::fixture {
__attribute__((noinline, used)) int CxxFixture(int x) {
  asm volatile("" ::: "memory");
  return x * 5 + 2;
}
}  // namespace kmon::fixture

namespace kmon {
namespace {

constexpr char kKallsyms[] =
    "0000000000000000 A fixed_percpu_data\n"
    "ffffffff81000000 T _stext\n"
    "ffffffff81000000 T _text\n"
    "ffffffff81001000 t do_one_initcall\n"
    "ffffffff81002000 D some_data\n"
    "ffffffff81002100 T __schedule\n"
    "ffffffff81002900 T schedule\n"
    "ffffffffc0a00000 t xfs_file_read_iter\t[xfs]\n"
    "ffffffffc0a00400 W weak_fn\n"
    "garbage line\n";

TEST(KernelSymbolsTest, FindsTheFunctionContainingAnAddress) {
  KernelSymbols k = KernelSymbols::Parse(kKallsyms);
  EXPECT_EQ(k.size(), 6u);  // _stext/_text share an address; data and absolute symbols skipped
  EXPECT_EQ(k.Lookup(0xffffffff81000000ULL), "_stext");
  EXPECT_EQ(k.Lookup(0xffffffff81000fffULL), "_stext");
  EXPECT_EQ(k.Lookup(0xffffffff81001000ULL), "do_one_initcall");
  EXPECT_EQ(k.Lookup(0xffffffff81002200ULL), "__schedule");  // "some_data" is not text
  EXPECT_EQ(k.Lookup(0xffffffff81002905ULL), "schedule");
  EXPECT_EQ(k.Lookup(0xffffffffc0a00010ULL), "xfs_file_read_iter");
  EXPECT_EQ(k.Lookup(0xffffffffc0a00500ULL), "weak_fn");
  EXPECT_EQ(k.Lookup(0xffffffff80000000ULL), std::nullopt);
}

// The core kernel's text ends at _etext, its init text at _einittext, modules where
// /proc/modules says; __pfx_ padding symbols are left out.
constexpr char kBoundedKallsyms[] =
    "ffffffff81000000 T _stext\n"
    "ffffffff81000100 t __pfx_a_fn\n"
    "ffffffff81000110 t a_fn\n"
    "ffffffff81000200 T last_core_fn\n"
    "ffffffff81000300 T _etext\n"
    "ffffffff83000000 T _sinittext\n"
    "ffffffff83000000 t init_fn\n"
    "ffffffff83000400 T _einittext\n"
    "ffffffffc0000000 t mod_a_fn\t[mod_a]\n"
    "ffffffffc0000800 t mod_a_last\t[mod_a]\n"
    "ffffffffc0003000 t mod_b_fn\t[mod_b]\n"
    "ffffffffc0100000 t bpf_prog_6deef7357e7b4530_x\t[bpf]\n";
constexpr char kModules[] =
    "mod_a 8192 0 - Live 0xffffffffc0000000\n"
    "mod_b 4096 1 mod_a, Live 0xffffffffc0003000 (OE)\n";

TEST(KernelSymbolsTest, LookupsEndWithTheirRegion) {
  KernelSymbols k = KernelSymbols::Parse(kBoundedKallsyms, kModules);
  EXPECT_EQ(k.size(), 8u);  // no __pfx_, no end markers
  EXPECT_EQ(k.Lookup(0xffffffff81000150ULL), "a_fn");
  EXPECT_EQ(k.Lookup(0xffffffff810002ffULL), "last_core_fn");
  EXPECT_EQ(k.Lookup(0xffffffff81000300ULL), std::nullopt);  // past _etext
  EXPECT_EQ(k.Lookup(0xffffffff82000000ULL), std::nullopt);
  EXPECT_EQ(k.Lookup(0xffffffff830003ffULL), "_sinittext");  // init_fn's alias, listed first
  EXPECT_EQ(k.Lookup(0xffffffff83000400ULL), std::nullopt);  // past _einittext
  EXPECT_EQ(k.Lookup(0xffffffffc0000010ULL), "mod_a_fn");
  EXPECT_EQ(k.Lookup(0xffffffffc0001fffULL), "mod_a_last");  // to mod_a's end...
  EXPECT_EQ(k.Lookup(0xffffffffc0002000ULL), std::nullopt);  // ...where a later module may be
  EXPECT_EQ(k.Lookup(0xffffffffc0003ff0ULL), "mod_b_fn");
  EXPECT_EQ(k.Lookup(0xffffffffc0004000ULL), std::nullopt);
  // Without a known end, the last symbol of a region reaches kMaxLastSymbolSize.
  EXPECT_EQ(k.Lookup(0xffffffffc0100010ULL), "bpf_prog_6deef7357e7b4530_x");
  EXPECT_EQ(k.Lookup(0xffffffffc0100000ULL + KernelSymbols::kMaxLastSymbolSize), std::nullopt);
  EXPECT_EQ(k.Lookup(0xffffffffc0a00000ULL), std::nullopt);  // after everything
  EXPECT_EQ(k.misses(), 7u);

  // Without /proc/modules, a module's last symbol is bounded by the cap alone.
  KernelSymbols no_modules = KernelSymbols::Parse(kBoundedKallsyms);
  EXPECT_EQ(no_modules.Lookup(0xffffffffc0002fffULL), "mod_a_last");  // up to mod_b
  EXPECT_EQ(no_modules.Lookup(0xffffffffc0003000ULL + KernelSymbols::kMaxLastSymbolSize - 1),
            "mod_b_fn");
  EXPECT_EQ(no_modules.Lookup(0xffffffffc0003000ULL + KernelSymbols::kMaxLastSymbolSize),
            std::nullopt);
}

TEST(KernelSymbolsTest, TheSharedTableIsReadAgainAfterMisses) {
  std::string kallsyms = kBoundedKallsyms;
  int loads = 0;
  bool fail = false;
  KernelSymbolsCache cache(
      [&]() -> absl::StatusOr<std::shared_ptr<const KernelSymbols>> {
        ++loads;
        if (fail) return absl::PermissionDeniedError("hidden");
        return std::make_shared<const KernelSymbols>(KernelSymbols::Parse(kallsyms, kModules));
      },
      std::chrono::seconds(30));
  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const KernelSymbols> a = cache.Get(t0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(cache.Get(t0 + std::chrono::seconds(60)), a);  // no misses: kept
  EXPECT_EQ(loads, 1);

  // A module is loaded after the table was read: its address misses...
  kallsyms += "ffffffffc0005000 t new_mod_fn\t[new_mod]\n";
  EXPECT_EQ(a->Lookup(0xffffffffc0005010ULL), std::nullopt);
  // ...and the table is read again, at most every 30 s.
  std::shared_ptr<const KernelSymbols> b = cache.Get(t0 + std::chrono::seconds(61));
  EXPECT_EQ(loads, 2);
  ASSERT_NE(b, a);
  EXPECT_EQ(b->Lookup(0xffffffffc0005010ULL), "new_mod_fn");
  EXPECT_EQ(cache.Get(t0 + std::chrono::seconds(65)), b);     // no misses in b: kept
  EXPECT_EQ(b->Lookup(0xffffffffc0009000ULL), std::nullopt);  // a miss again
  EXPECT_EQ(cache.Get(t0 + std::chrono::seconds(70)), b);     // 9 s after the last read: not yet
  EXPECT_EQ(loads, 2);
  std::shared_ptr<const KernelSymbols> c = cache.Get(t0 + std::chrono::seconds(91));
  EXPECT_EQ(loads, 3);
  EXPECT_NE(c, b);
  c.reset();

  // Held weakly: once nobody holds it, the next user reads it afresh.
  a.reset();
  b.reset();
  EXPECT_NE(cache.Get(t0 + std::chrono::seconds(92)), nullptr);
  EXPECT_EQ(loads, 4);

  // An unreadable table is retried no more often than that either.
  KernelSymbolsCache failing(
      [&]() -> absl::StatusOr<std::shared_ptr<const KernelSymbols>> {
        ++loads;
        return absl::PermissionDeniedError("hidden by kptr_restrict");
      },
      std::chrono::seconds(30));
  absl::Status why;
  EXPECT_EQ(failing.Get(t0, &why), nullptr);
  EXPECT_EQ(why.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(failing.Get(t0 + std::chrono::seconds(10), &why), nullptr);
  EXPECT_EQ(loads, 5);
  EXPECT_EQ(failing.Get(t0 + std::chrono::seconds(31), &why), nullptr);
  EXPECT_EQ(loads, 6);
}

TEST(KernelSymbolsTest, OneSharedTableForTheProcess) {
  std::shared_ptr<const KernelSymbols> a = KernelSymbols::Shared();
  if (a == nullptr) GTEST_SKIP() << "kallsyms hidden from this process";
  EXPECT_EQ(KernelSymbols::Shared(), a);  // drops and cpu get the same table
}

TEST(KernelSymbolsTest, RunningKernel) {
  auto k = KernelSymbols::Load();
  if (!k.ok()) GTEST_SKIP() << k.status();  // kptr_restrict hides addresses from non-root
  ASSERT_GT((*k)->size(), 1000u);
  std::ifstream in("/proc/kallsyms");
  std::string line;
  uint64_t addr = 0;
  while (std::getline(in, line)) {
    if (line.size() > 11 && line.compare(line.size() - 11, 11, " T schedule") == 0) {
      addr = std::stoull(line.substr(0, 16), nullptr, 16);
      break;
    }
  }
  ASSERT_NE(addr, 0u);
  EXPECT_EQ((*k)->Lookup(addr + 1), "schedule");
}

TEST(ProcMapsTest, KeepsExecutableMappings) {
  constexpr char kMaps[] =
      "555ff99b1000-555ff99b3000 r--p 00000000 fe:00 247134                     /usr/bin/cat\n"
      "555ff99b3000-555ff99b8000 r-xp 00002000 fe:00 247134                     /usr/bin/cat\n"
      "7f1e46a38000-7f1e46b8e000 r-xp 00026000 fe:00 332835                     "
      "/usr/lib/x86_64-linux-gnu/libc.so.6\n"
      "7f1e46c07000-7f1e46c09000 r-xp 00000000 00:00 0                          [vdso]\n"
      "7f1e46d00000-7f1e46d10000 rwxp 00000000 00:00 0 \n"
      "7f1e46e00000-7f1e46e10000 r-xp 00001000 00:2f 99                         /tmp/a b "
      "(deleted)\n";
  auto maps = ParseProcMaps(kMaps);
  ASSERT_EQ(maps.size(), 5u);
  EXPECT_EQ(maps[0].start, 0x555ff99b3000ULL);
  EXPECT_EQ(maps[0].end, 0x555ff99b8000ULL);
  EXPECT_EQ(maps[0].offset, 0x2000u);
  EXPECT_EQ(maps[0].dev, "fe:00");
  EXPECT_EQ(maps[0].inode, 247134u);
  EXPECT_EQ(maps[0].path, "/usr/bin/cat");
  EXPECT_EQ(maps[1].path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_EQ(maps[2].path, "[vdso]");
  EXPECT_EQ(maps[3].path, "");  // anonymous (a JIT)
  EXPECT_EQ(maps[4].path, "/tmp/a b (deleted)");
}

// Found by fuzz_proc_text: a reversed or empty range is no mapping.
TEST(ProcMapsTest, ReversedAndEmptyRangesAreSkipped) {
  EXPECT_TRUE(ParseProcMaps("2000-1000 r-xp 00000000 fe:00 1 /bin/x\n"
                            "1000-1000 r-xp 00000000 fe:00 1 /bin/y\n")
                  .empty());
}

TEST(DemangleTest, CxxNamesOnly) {
  EXPECT_EQ(Demangle("_ZN4kmon7fixture10CxxFixtureEi"), "kmon::fixture::CxxFixture(int)");
  EXPECT_EQ(Demangle("nanosleep"), "nanosleep");
  EXPECT_EQ(Demangle("_Znot_valid"), "_Znot_valid");
}

// The mapping of this process that holds `addr`, from the real /proc/self/maps.
std::optional<MapEntry> MappingOf(uint64_t addr) {
  std::ifstream in("/proc/self/maps");
  std::stringstream ss;
  ss << in.rdbuf();
  for (const auto& m : ParseProcMaps(ss.str())) {
    if (addr >= m.start && addr < m.end) return m;
  }
  return std::nullopt;
}

TEST(ElfSymbolsTest, NamesFunctionsOfThisBinaryByFileOffset) {
  auto elf = ElfSymbols::Load("/proc/self/exe");
  ASSERT_TRUE(elf.ok()) << elf.status();
  for (auto [fn, want] : {std::pair{reinterpret_cast<uint64_t>(&kmon_symbolizer_fixture_c),
                                    "kmon_symbolizer_fixture_c"},
                          std::pair{reinterpret_cast<uint64_t>(&fixture::CxxFixture),
                                    "kmon::fixture::CxxFixture(int)"}}) {
    auto m = MappingOf(fn);
    ASSERT_TRUE(m.has_value());
    const uint64_t off = fn + 2 - m->start + m->offset;  // inside the function
    EXPECT_EQ((*elf)->LookupFileOffset(off), want);
  }
  EXPECT_FALSE(ElfSymbols::Load("/nonexistent/kmon").ok());
  EXPECT_FALSE(ElfSymbols::Load("/proc/self/status").ok());  // not ELF
}

uint64_t NsPerTick() { return 1000000000ULL / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)); }

// A process as the kernel's aggregates name it, from its /proc/PID/stat.
ProcessId IdOf(pid_t pid) {
  std::optional<uint64_t> ticks = ReadProcessStartTicks("/proc", static_cast<uint32_t>(pid));
  EXPECT_TRUE(ticks.has_value()) << pid;
  return ProcessId{static_cast<uint32_t>(pid), ticks.value_or(0) * NsPerTick()};
}

TEST(ProcessIdTest, StartTimeComesFromStatField22) {
  EXPECT_EQ(BootNsToTicks(15 * NsPerTick() + NsPerTick() - 1), 15u);  // rounds down
  const ProcessId me = IdOf(getpid());
  EXPECT_GT(me.start_ns, 0u);
  Symbolizer s("/proc", nullptr);
  EXPECT_TRUE(s.Alive(me));
  EXPECT_FALSE(s.Alive(ProcessId{me.tgid, me.start_ns + NsPerTick()}));  // another process
  EXPECT_EQ(ReadProcessStartTicks("/proc", 0x7ffffff0), std::nullopt);
}

TEST(SymbolizerTest, NamesUserFramesThroughProcAndKernelFramesThroughKallsyms) {
  auto ksyms = std::make_shared<KernelSymbols>(KernelSymbols::Parse(kKallsyms));
  Symbolizer s("/proc", ksyms);
  const ProcessId me = IdOf(getpid());
  ASSERT_TRUE(s.Capture(me));
  EXPECT_TRUE(s.Captured(me));
  const uint64_t c_fn = reinterpret_cast<uint64_t>(&kmon_symbolizer_fixture_c);
  EXPECT_EQ(s.UserFrame(me, c_fn + 1, /*leaf=*/true), "kmon_symbolizer_fixture_c");
  // A return address just past a function's start belongs to it when not a leaf.
  EXPECT_EQ(s.UserFrame(me, c_fn + 1, /*leaf=*/false), "kmon_symbolizer_fixture_c");
  // A libc function, named from .dynsym (Debian's libc has no .symtab).
  void* getpid_addr = dlsym(RTLD_DEFAULT, "getpid");
  ASSERT_NE(getpid_addr, nullptr);
  std::string libc_name = s.UserFrame(me, reinterpret_cast<uint64_t>(getpid_addr), true);
  EXPECT_NE(libc_name.find("getpid"), std::string::npos) << libc_name;
  EXPECT_EQ(s.UserFrame(me, 0x10, true), kUnknownFrame);  // nothing mapped there
  EXPECT_EQ(s.UserFrame(ProcessId{me.tgid + 1000000, 1}, c_fn, true),
            kUnknownFrame);  // never captured
  EXPECT_GE(s.CachedBinaries(), 1u);
  s.Trim();  // what the profiler does after each round of naming
  EXPECT_LE(s.CachedElfBytes(), Symbolizer::kMaxElfBytes);
  // Trimmed or not, frames are still named (a table evicted is read again).
  EXPECT_EQ(s.UserFrame(me, c_fn + 1, true), "kmon_symbolizer_fixture_c");

  EXPECT_EQ(s.KernelFrame(0xffffffff81002901ULL), "schedule");
  EXPECT_EQ(s.KernelFrame(0xffffffff81002900ULL), "__schedule");  // return address: ip-1
  Symbolizer no_kernel("/proc", nullptr);
  EXPECT_EQ(no_kernel.KernelFrame(0xffffffff81002901ULL), kUnknownFrame);
  // A source is asked at each frame (the shared table may have been replaced).
  int asked = 0;
  Symbolizer sourced("/proc", Symbolizer::KernelSource([&] {
                       ++asked;
                       return std::shared_ptr<const KernelSymbols>(ksyms);
                     }));
  EXPECT_EQ(sourced.KernelFrame(0xffffffff81002901ULL), "schedule");
  EXPECT_EQ(asked, 2);  // once at construction (to hold it), once for the frame

  s.Forget(me);
  EXPECT_FALSE(s.Captured(me));
  EXPECT_EQ(s.UserFrame(me, c_fn + 1, true), kUnknownFrame);
}

// Removes a directory tree however the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/kmon-fakeproc-XXXXXX";
    if (mkdtemp(tmpl) != nullptr) path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

void WriteText(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

std::string StatWithStart(uint32_t pid, uint64_t ticks) {
  // The command name may hold spaces and parentheses: fields count from the last ')'.
  std::string stat = std::to_string(pid) + " (a (b) c) S 1 1 1 0 -1 4194304";
  for (int field = 10; field <= 21; ++field) stat += " 0";
  return stat + " " + std::to_string(ticks) + " 1000 200 18446744073709551615\n";
}

std::string SelfMaps() {
  std::ifstream in("/proc/self/maps");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(SymbolizerTest, AReusedPidIsNamedFromItsOwnMaps) {
  TempDir proc;
  ASSERT_FALSE(proc.path.empty());
  // PID 42 of a fake /proc: this process's maps, its files reached through root/.
  std::filesystem::create_directories(proc.path / "42");
  std::filesystem::create_directory_symlink("/", proc.path / "42" / "root");
  WriteText(proc.path / "42" / "stat", StatWithStart(42, 150));
  WriteText(proc.path / "42" / "maps", SelfMaps());
  EXPECT_EQ(ReadProcessStartTicks(proc.path, 42), 150u);

  Symbolizer s(proc.path, nullptr);
  const ProcessId first{42, 150 * NsPerTick()};
  EXPECT_FALSE(s.Capture(ProcessId{42, 149 * NsPerTick()}));  // not the process PID 42 is
  ASSERT_TRUE(s.Capture(first));
  const uint64_t fn = reinterpret_cast<uint64_t>(&fixture::CxxFixture);
  EXPECT_EQ(s.UserFrame(first, fn + 3, true), "kmon::fixture::CxxFixture(int)");

  // The process exits and PID 42 goes to another, which maps nothing of ours.
  WriteText(proc.path / "42" / "stat", StatWithStart(42, 300));
  WriteText(proc.path / "42" / "maps",
            "00400000-00401000 r-xp 00000000 00:00 0                          [vdso]\n");
  const ProcessId second{42, 300 * NsPerTick()};
  EXPECT_FALSE(s.Alive(first));
  EXPECT_TRUE(s.Alive(second));
  // The first is still named from the maps captured while it lived...
  EXPECT_EQ(s.UserFrame(first, fn + 3, true), "kmon::fixture::CxxFixture(int)");
  // ...and the second from its own, never from the first's.
  EXPECT_EQ(s.UserFrame(second, fn + 3, true), kUnknownFrame);
  ASSERT_TRUE(s.Capture(second));
  EXPECT_EQ(s.UserFrame(second, fn + 3, true), kUnknownFrame);
  EXPECT_EQ(s.UserFrame(second, 0x400010, true), "[vdso]");
  // A first capture of the old process now fails: its PID is not its own any more.
  s.Forget(first);
  EXPECT_FALSE(s.Capture(first));
}

TEST(SymbolizerTest, CachedProcessesAreCapped) {
  TempDir proc;
  ASSERT_FALSE(proc.path.empty());
  const std::string maps = SelfMaps();
  const uint32_t n = Symbolizer::kMaxProcesses + 8;
  for (uint32_t pid = 1; pid <= n; ++pid) {
    std::filesystem::create_directories(proc.path / std::to_string(pid));
    std::filesystem::create_directory_symlink("/", proc.path / std::to_string(pid) / "root");
    WriteText(proc.path / std::to_string(pid) / "stat", StatWithStart(pid, 7));
    WriteText(proc.path / std::to_string(pid) / "maps", maps);
  }
  Symbolizer s(proc.path, nullptr);
  const uint64_t fn = reinterpret_cast<uint64_t>(&kmon_symbolizer_fixture_c);
  const ProcessId kept{1, 7 * NsPerTick()};
  for (uint32_t pid = 1; pid <= n; ++pid) {
    const ProcessId p{pid, 7 * NsPerTick()};
    ASSERT_TRUE(s.Capture(p));
    EXPECT_EQ(s.UserFrame(p, fn + 1, true), "kmon_symbolizer_fixture_c");
    s.UserFrame(kept, fn + 1, true);  // process 1 stays in use
  }
  EXPECT_EQ(s.CachedProcesses(), Symbolizer::kMaxProcesses);
  EXPECT_TRUE(s.Captured(kept));                            // recently used: kept
  EXPECT_FALSE(s.Captured(ProcessId{2, 7 * NsPerTick()}));  // least recently used: gone
  EXPECT_TRUE(s.Captured(ProcessId{n, 7 * NsPerTick()}));
  // Every process maps the same files: each table is read and kept once.
  EXPECT_LE(s.CachedBinaries(), 8u);
  s.Trim();
  EXPECT_LE(s.CachedElfBytes(), Symbolizer::kMaxElfBytes);
}

TEST(SymbolizerTest, AProcessGoneBeforeItsFirstCaptureIsUnknown) {
  Symbolizer s("/proc", nullptr);
  pid_t child = fork();
  if (child == 0) _exit(0);
  int status;
  waitpid(child, &status, 0);
  const ProcessId gone{static_cast<uint32_t>(child), 1};
  EXPECT_FALSE(s.Capture(gone));
  EXPECT_FALSE(s.Alive(gone));
  EXPECT_EQ(s.UserFrame(gone, 0x400000, true), kUnknownFrame);
}

// A pipe whose ends are closed however the test ends.
struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() {
    if (pipe(fd) != 0) fd[0] = fd[1] = -1;
  }
  ~Pipe() {
    for (int f : fd) {
      if (f >= 0) close(f);
    }
  }
};

// A child killed and reaped however the test ends.
struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  int Wait() {
    int status = -1;
    if (pid > 0 && waitpid(pid, &status, 0) == pid) pid = -1;
    return status;
  }
};

// A forked child that says it is ready, waits for Go(), then exits with then()'s
// result; killed and reaped however the test ends.
struct ReadyChild : Child {
  Pipe ready, go;
  explicit ReadyChild(int (*then)()) {
    if (ready.fd[0] < 0 || go.fd[0] < 0) return;
    pid = fork();
    if (pid == 0) {
      char c = 'r';
      if (write(ready.fd[1], &c, 1) != 1) _exit(1);
      if (read(go.fd[0], &c, 1) != 1) _exit(1);
      _exit(then());
    }
    char c;
    if (pid > 0 && read(ready.fd[0], &c, 1) != 1) pid = -1;
  }
  bool Go() { return write(go.fd[1], "g", 1) == 1; }
};

TEST(SymbolizerTest, FramesOfAnExitedProcessStayNamedOnceCaptured) {
  ReadyChild child([] { return kmon_symbolizer_fixture_c(0) == 1 ? 0 : 1; });
  ASSERT_GT(child.pid, 0);
  Symbolizer s("/proc", nullptr);
  const ProcessId id = IdOf(child.pid);
  ASSERT_TRUE(s.Capture(id));
  // Naming a first frame while it lives reads the binary's symbol table (as the
  // profiler does when it first sees a process's stack).
  const uint64_t c_fn = reinterpret_cast<uint64_t>(&kmon_symbolizer_fixture_c);
  EXPECT_EQ(s.UserFrame(id, c_fn + 1, true), "kmon_symbolizer_fixture_c");
  ASSERT_TRUE(child.Go());
  const int status = child.Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_FALSE(s.Alive(id));
  // The child was a fork of this process: same addresses, maps captured while it
  // lived, and another function of the binary named after it has gone.
  const uint64_t fn = reinterpret_cast<uint64_t>(&fixture::CxxFixture);
  EXPECT_EQ(s.UserFrame(id, fn + 3, true), "kmon::fixture::CxxFixture(int)");
}

// The root test's flake: under load the profiler captured a process's maps and only
// then, after it had exited, read its binary for the first frame; with map_files
// unreadable (kmon drops CAP_SYS_ADMIN) and /proc/PID/root gone with the process the
// frames were "[unknown]"/"[binary]". The binary at its own path, when it is the same
// file (device and inode), names them now.
TEST(SymbolizerTest, AnExitedProcessCapturedButNotYetNamedIsNamedFromTheSameFile) {
  ReadyChild child([] { return 0; });
  ASSERT_GT(child.pid, 0);
  Symbolizer s("/proc", nullptr);
  const ProcessId id = IdOf(child.pid);
  ASSERT_TRUE(s.Capture(id));  // maps only: no frame named while it lives
  ASSERT_TRUE(child.Go());
  child.Wait();
  ASSERT_FALSE(s.Alive(id));
  const uint64_t c_fn = reinterpret_cast<uint64_t>(&kmon_symbolizer_fixture_c);
  EXPECT_EQ(s.UserFrame(id, c_fn + 1, true), "kmon_symbolizer_fixture_c");
}

}  // namespace
}  // namespace kmon
