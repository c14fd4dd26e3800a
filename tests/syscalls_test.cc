// Pure parts of the syscalls collector: the kernel function behind each syscall
// name, the planning of fexit slots against a BTF (a small fake one, and the
// running kernel's), how the chosen hook is described, and the `hook` key.
#include "collectors/syscalls.h"

#include <bpf/btf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>

#include <memory>
#include <string>
#include <vector>

#include "bpf/syscalls.h"
#include "exporter/config.h"

namespace kmon {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

struct BtfDeleter {
  void operator()(btf* b) const { btf__free(b); }
};
using BtfPtr = std::unique_ptr<btf, BtfDeleter>;

// A BTF holding FUNCs of these names, each `long f(const struct pt_regs *regs)` as
// vmlinux holds the syscall functions, and `no_argument` ones `long f(void)`.
BtfPtr FakeBtf(const std::vector<std::string>& functions,
               const std::vector<std::string>& no_argument = {}) {
  BtfPtr b(btf__new_empty());
  const int long_id = btf__add_int(b.get(), "long", 8, BTF_INT_SIGNED);
  const int regs = btf__add_struct(b.get(), "pt_regs", 0);
  const int regs_ptr = btf__add_ptr(b.get(), regs);
  const int void_proto = btf__add_func_proto(b.get(), long_id);
  const int proto = btf__add_func_proto(b.get(), long_id);
  btf__add_func_param(b.get(), "regs", regs_ptr);
  for (const std::string& f : functions) btf__add_func(b.get(), f.c_str(), BTF_FUNC_GLOBAL, proto);
  for (const std::string& f : no_argument) {
    btf__add_func(b.get(), f.c_str(), BTF_FUNC_STATIC, void_proto);
  }
  return b;
}

TEST(SyscallFunctionTest, NamesTheEntryPointOfTheSyscallTable) {
  EXPECT_EQ(SyscallFunction("__x64_sys_", "getppid"), "__x64_sys_getppid");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "read"), "__x64_sys_read");
  // The plain names are the old variants 32-bit tasks call: the table names these.
  EXPECT_EQ(SyscallFunction("__x64_sys_", "uname"), "__x64_sys_newuname");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "stat"), "__x64_sys_newstat");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "fstat"), "__x64_sys_newfstat");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "lstat"), "__x64_sys_newlstat");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "sendfile"), "__x64_sys_sendfile64");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "umount2"), "__x64_sys_umount");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "newfstatat"), "__x64_sys_newfstatat");
  EXPECT_EQ(SyscallFunction("__x64_sys_", "fadvise64"), "__x64_sys_fadvise64");
  EXPECT_EQ(SyscallFunction("__arm64_sys_", "fadvise64"), "__arm64_sys_fadvise64_64");
  EXPECT_EQ(SyscallFunction("__arm64_sys_", "fstat"), "__arm64_sys_newfstat");
  EXPECT_EQ(SyscallFunction("__arm64_sys_", "openat"), "__arm64_sys_openat");
}

TEST(PlanFexitSlotsTest, OneSlotPerSyscallOnItsFunction) {
  BtfPtr b =
      FakeBtf({"__x64_sys_getppid", "__x64_sys_read", "__x64_sys_newuname", "__x64_sys_uname"});
  FexitPlan plan = PlanFexitSlots(b.get(), "__x64_sys_", {"getppid", "read", "uname"}, {110, 0, 63},
                                  KMON_SYSCALL_FEXIT_SLOTS);
  ASSERT_TRUE(plan.ok) << plan.reason;
  EXPECT_THAT(plan.functions,
              ElementsAre("__x64_sys_getppid", "__x64_sys_read", "__x64_sys_newuname"));
  EXPECT_THAT(plan.numbers, ElementsAre(110, 0, 63));
  EXPECT_EQ(plan.reason, "");
}

TEST(PlanFexitSlotsTest, ZeroArgumentSyscallsAreTheirDoSysFunction) {
  // x86: __x64_sys_getppid is an alias of __do_sys_getppid, the one name BTF keeps.
  BtfPtr b = FakeBtf({"__do_sys_getppid", "__x64_sys_read", "__do_sys_read"}, {"__do_sys_sync"});
  FexitPlan plan = PlanFexitSlots(b.get(), "__x64_sys_", {"getppid", "read"}, {110, 0}, 32);
  ASSERT_TRUE(plan.ok) << plan.reason;
  EXPECT_THAT(plan.functions, ElementsAre("__do_sys_getppid", "__x64_sys_read"));
  // Only a function of the syscall functions' shape (one argument) stands in.
  plan = PlanFexitSlots(b.get(), "__x64_sys_", {"sync"}, {162}, 32);
  EXPECT_FALSE(plan.ok);
  EXPECT_EQ(plan.reason, "the kernel has no function __x64_sys_sync for syscall sync");
}

TEST(PlanFexitSlotsTest, AMissingFunctionMeansNoPlanAtAll) {
  // uname's entry point is newuname: the old __x64_sys_uname does not stand in.
  BtfPtr b = FakeBtf({"__x64_sys_getppid", "__x64_sys_uname"});
  FexitPlan plan = PlanFexitSlots(b.get(), "__x64_sys_", {"getppid", "uname"}, {110, 63}, 32);
  EXPECT_FALSE(plan.ok);
  EXPECT_THAT(plan.functions, IsEmpty());
  EXPECT_THAT(plan.numbers, IsEmpty());
  EXPECT_EQ(plan.reason, "the kernel has no function __x64_sys_newuname for syscall uname");
  // No BTF at all: nothing is there.
  plan = PlanFexitSlots(nullptr, "__x64_sys_", {"getppid"}, {110}, 32);
  EXPECT_FALSE(plan.ok);
  EXPECT_EQ(plan.reason, "the kernel has no function __x64_sys_getppid for syscall getppid");
}

TEST(PlanFexitSlotsTest, MoreSyscallsThanSlotsOrAnUnknownArchitecture) {
  std::vector<std::string> names;
  std::vector<int> numbers;
  std::vector<std::string> functions;
  for (int i = 0; i < 33; ++i) {
    names.push_back("s" + std::to_string(i));
    numbers.push_back(i);
    functions.push_back("__x64_sys_s" + std::to_string(i));
  }
  BtfPtr b = FakeBtf(functions);
  FexitPlan plan = PlanFexitSlots(b.get(), "__x64_sys_", names, numbers, 32);
  EXPECT_FALSE(plan.ok);
  EXPECT_EQ(plan.reason, "33 syscalls chosen, more than the 32 fexit slots");
  names.pop_back();
  numbers.pop_back();
  plan = PlanFexitSlots(b.get(), "__x64_sys_", names, numbers, 32);
  EXPECT_TRUE(plan.ok) << plan.reason;
  EXPECT_EQ(plan.functions.size(), 32u);
  EXPECT_EQ(plan.functions[31], "__x64_sys_s31");

  plan = PlanFexitSlots(b.get(), "", {"s0"}, {0}, 32);
  EXPECT_FALSE(plan.ok);
  EXPECT_EQ(plan.reason, "kmon knows no syscall function names for this CPU architecture");
}

TEST(PlanFexitSlotsTest, TheRunningKernelHasEveryDefaultSyscallsFunction) {
  // The machine's own BTF (kmon needs it to load anything): the built-in syscalls,
  // and the renamed ones, are found under their table names.
  BtfPtr vmlinux(btf__parse("/sys/kernel/btf/vmlinux", nullptr));
  ASSERT_NE(vmlinux, nullptr) << "no /sys/kernel/btf/vmlinux";
  const std::string_view prefix = SyscallFunctionPrefix();
  ASSERT_FALSE(prefix.empty()) << "kmon knows no syscall function prefix for this build";
  std::unique_ptr<SyscallsConfig> s = DefaultSyscallsSection();
  FexitPlan plan =
      PlanFexitSlots(vmlinux.get(), prefix, s->syscalls, s->numbers, KMON_SYSCALL_FEXIT_SLOTS);
  ASSERT_TRUE(plan.ok) << plan.reason;
  ASSERT_EQ(plan.functions.size(), s->syscalls.size());
  EXPECT_EQ(plan.functions[0], std::string(prefix) + "read");
  EXPECT_EQ(plan.numbers[0], SYS_read);
  plan = PlanFexitSlots(vmlinux.get(), prefix, {"getppid", "uname", "umount2", "sendfile"},
                        {SYS_getppid, SYS_uname, SYS_umount2, SYS_sendfile}, 32);
  ASSERT_TRUE(plan.ok) << plan.reason;
  EXPECT_EQ(plan.functions[1], std::string(prefix) + "newuname");
  // x86 kernels' BTF name zero-argument syscalls by their __do_sys_ function.
  EXPECT_THAT(plan.functions[0],
              ::testing::AnyOf(std::string(prefix) + "getppid", std::string("__do_sys_getppid")));
}

TEST(SyscallHookStateTest, DescribesTheHookAndWhy) {
  SyscallHookState tp{.fexit = false,
                      .reason = "fexit refused by this kernel: load: Operation not permitted"};
  EXPECT_EQ(tp.Describe(),
            "hook: tp_btf/sys_exit (fexit refused by this kernel: load: Operation not permitted)");
  SyscallHookState fx{.fexit = true, .hooked = {0, 1}, .reason = "collectors.syscalls.hook: fexit"};
  EXPECT_EQ(fx.Describe(), "hook: fexit on 2 syscall functions (collectors.syscalls.hook: fexit)");
}

ConfigResult Parse(const std::string& yaml) {
  return ParseConfig(yaml, [](const std::string&) { return std::nullopt; });
}

TEST(SyscallsConfigTest, OffByDefaultWithTheAutomaticHook) {
  const Config config = DefaultConfig();  // alive while `s` points into it
  const SyscallsConfig& s = config.collectors.Get<SyscallsConfig>();
  EXPECT_FALSE(s.enabled);
  EXPECT_EQ(s.hook, SyscallHookMode::kAuto);
  EXPECT_EQ(s.syscalls.size(), 12u);
}

TEST(SyscallsConfigTest, HookKeyTakesAutoFexitOrTracepoint) {
  const auto hook = [](const std::string& word) {
    ConfigResult r = Parse("collectors:\n  syscalls: {enabled: true, hook: " + word + "}\n");
    EXPECT_THAT(r.problems, IsEmpty()) << word;
    return r.config ? r.config->collectors.Get<SyscallsConfig>().hook : SyscallHookMode::kAuto;
  };
  EXPECT_EQ(hook("auto"), SyscallHookMode::kAuto);
  EXPECT_EQ(hook("fexit"), SyscallHookMode::kFexit);
  EXPECT_EQ(hook("tracepoint"), SyscallHookMode::kTracepoint);
  ConfigResult bad = Parse("collectors:\n  syscalls:\n    hook: kprobe\n");
  ASSERT_EQ(bad.problems.size(), 1u);
  EXPECT_THAT(bad.problems[0].ToString(), HasSubstr("collectors.syscalls.hook"));
  EXPECT_THAT(bad.problems[0].ToString(), HasSubstr("line 3"));
}

}  // namespace
}  // namespace kmon
