// /debug/offcpu's three renderings of fixed stacks: folded text exactly, the SVG's
// geometry and well-formedness, and the pprof profile decoded back.
#include "collectors/offcpu/offcpu_render.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <regex>

#include "collectors/offcpu/profile.pb.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

std::vector<OffCpuStack> FixedStacks() {
  OffCpuStack a;
  a.labels = {"", "", "nginx.service"};
  a.process = "nginx";
  a.user = {"main", "serve", "kmon_test_sleepy_function"};
  a.kernel = {"entry_SYSCALL_64_after_hwframe",
              "do_syscall_64",
              "hrtimer_nanosleep",
              "do_nanosleep",
              "schedule",
              "__schedule"};
  a.ns = 3'000'000'000;
  a.count = 300;
  OffCpuStack b;
  b.labels = {"shop", "cart-7d9f", "cart"};
  b.process = "cart;server";
  b.user = {"main", "std::vector<int, std::allocator<int> >::push_back(int&&)"};
  b.kernel = {"entry_SYSCALL_64_after_hwframe", "io_schedule"};
  b.ns = 1'000'000'000;
  b.count = 2;
  OffCpuStack k;  // a kernel thread: no user frames
  k.labels = {"", "", "/"};
  k.kernel = {"ret_from_fork_asm", "kthread", "worker;thread"};
  k.ns = 500;
  k.count = 1;
  return {a, b, k};
}

TEST(OffCpuRenderTest, WorkloadFrameNamesPodsFully) {
  EXPECT_EQ(WorkloadFrame({"shop", "cart-7d9f", "cart"}), "shop/cart-7d9f/cart");
  EXPECT_EQ(WorkloadFrame({"", "", "nginx.service"}), "nginx.service");
}

// Workload, then process (when known: the kernel thread's is not), then frames.
TEST(OffCpuRenderTest, FoldedIsOneLinePerStackUserOutermostToKernelInnermost) {
  std::vector<OffCpuStack> stacks = FixedStacks();
  stacks.push_back(stacks[0]);  // the same stack twice: one line, summed
  EXPECT_EQ(RenderFolded(stacks),
            "/;ret_from_fork_asm;kthread;worker:thread 500\n"
            "nginx.service;nginx;main;serve;kmon_test_sleepy_function;"
            "entry_SYSCALL_64_after_hwframe;"
            "do_syscall_64;hrtimer_nanosleep;do_nanosleep;schedule;__schedule 6000000000\n"
            "shop/cart-7d9f/cart;cart:server;main;"
            "std::vector<int, std::allocator<int> >::push_back(int&&);"
            "entry_SYSCALL_64_after_hwframe;io_schedule 1000000000\n");
  EXPECT_EQ(RenderFolded({}), "");
}

// Width in px of the frame whose data-n is `name` (first match).
double WidthOf(const std::string& svg, const std::string& name) {
  std::regex re("data-n=\"" +
                std::regex_replace(name, std::regex(R"([\[\]\(\)\.\*\+\?])"), R"(\$&)") +
                "\"><title>[^<]*</title><rect x=\"[0-9.]+\" y=\"[0-9]+\" width=\"([0-9.]+)\"");
  std::smatch m;
  if (!std::regex_search(svg, m, re)) return -1;
  return std::stod(m[1]);
}

TEST(OffCpuRenderTest, SvgWidthsAreProportionalToTime) {
  const std::string svg = RenderFlameGraphSvg(FixedStacks(), "Off-CPU", "last 60 s");
  const double total = 1200 - 2 * 10;
  EXPECT_NEAR(WidthOf(svg, "all"), total, 0.01);
  EXPECT_NEAR(WidthOf(svg, "nginx.service"), total * 3e9 / (4e9 + 500), 0.01);
  EXPECT_NEAR(WidthOf(svg, "shop/cart-7d9f/cart"), total * 1e9 / (4e9 + 500), 0.01);
  EXPECT_NEAR(WidthOf(svg, "kmon_test_sleepy_function"), total * 3e9 / (4e9 + 500), 0.01);
  EXPECT_EQ(WidthOf(svg, "/"), -1);  // 500 ns of 4 s: below 0.1 px, not drawn
  // Names are escaped; the script and the controls are there.
  EXPECT_NE(
      svg.find("std::vector&lt;int, std::allocator&lt;int&gt; &gt;::push_back(int&amp;&amp;)"),
      std::string::npos);
  EXPECT_EQ(svg.find("std::vector<int"), std::string::npos);
  EXPECT_NE(svg.find("function search(term)"), std::string::npos);
  EXPECT_NE(svg.find("function zoom(z)"), std::string::npos);
  EXPECT_NE(svg.find(">Search</text>"), std::string::npos);
  EXPECT_NE(svg.find("3.000 s, 300 episodes, 75.00%"), std::string::npos);
  // Deeper frames sit higher: y of the leaf < y of the root.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      svg, m, std::regex("data-n=\"all\"><title>[^<]*</title><rect x=\"[0-9.]+\" y=\"([0-9]+)\"")));
  const int root_y = std::stoi(m[1]);
  ASSERT_TRUE(std::regex_search(
      svg, m,
      std::regex("data-n=\"__schedule\"><title>[^<]*</title><rect x=\"[0-9.]+\" y=\"([0-9]+)\"")));
  EXPECT_EQ(root_y - std::stoi(m[1]), 11 * 16);  // 11 frames above "all" (with the process)
}

TEST(OffCpuRenderTest, SvgIsWellFormedXml) {
  const std::string svg = RenderFlameGraphSvg(FixedStacks(), "Off-CPU <test>", "a & b");
  char tmpl[] = "/tmp/kmon-svg-XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, svg.data(), svg.size()), static_cast<ssize_t>(svg.size()));
  close(fd);
  std::string cmd = std::string(
                        "python3 -c 'import sys, xml.dom.minidom; "
                        "d = xml.dom.minidom.parse(sys.argv[1]); "
                        "print(len(d.getElementsByTagName(\"rect\")))' ") +
                    tmpl + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int rc = pclose(p);
  unlink(tmpl);
  EXPECT_EQ(rc, 0) << out;
  // Background + all + 2 workloads + 2 processes + 3 + 6 (nginx) + 2 + 2 (cart) frames;
  // "/" is too thin.
  EXPECT_EQ(out, "19\n");
}

TEST(OffCpuRenderTest, EmptySvgSaysSo) {
  const std::string svg = RenderFlameGraphSvg({}, "Off-CPU", "");
  EXPECT_NE(svg.find("No off-CPU stacks recorded"), std::string::npos);
  EXPECT_EQ(svg.find("class=\"f\""), std::string::npos);
}

// /debug/offcpu runs on an HTTP worker thread, whose stack is small (civetweb's is
// about 100 KiB): the deepest stacks (127 user and 127 kernel frames) render in 64 KiB.
TEST(OffCpuRenderTest, DeepStacksRenderOnASmallThreadStack) {
  struct Job {
    std::vector<OffCpuStack> stacks;
    std::string svg, folded;
    absl::StatusOr<std::string> pprof;
  } job;
  for (int variant = 0; variant < 3; ++variant) {
    OffCpuStack s;
    s.labels = {"", "", "deep.service"};
    for (int i = 0; i < 127; ++i) s.user.push_back("user_fn_" + std::to_string(i));
    for (int i = 0; i < 127; ++i) s.kernel.push_back("kernel_fn_" + std::to_string(i + variant));
    s.ns = 1000 * (variant + 1);
    s.count = 1;
    job.stacks.push_back(s);
  }
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 64 * 1024), 0);
  pthread_t t;
  ASSERT_EQ(pthread_create(
                &t, &attr,
                [](void* arg) -> void* {
                  auto* j = static_cast<Job*>(arg);
                  j->svg = RenderFlameGraphSvg(j->stacks, "deep", "");
                  j->folded = RenderFolded(j->stacks);
                  j->pprof = RenderPprof(j->stacks, 0, 1);
                  return nullptr;
                },
                &job),
            0);
  pthread_join(t, nullptr);
  pthread_attr_destroy(&attr);
  // Root, workload, 254 frames: every level drawn, the innermost of each variant too.
  EXPECT_NE(job.svg.find("data-d=\"255\""), std::string::npos);
  EXPECT_EQ(job.svg.find("data-d=\"256\""), std::string::npos);
  for (int variant = 0; variant < 3; ++variant) {
    EXPECT_NE(job.svg.find("data-n=\"kernel_fn_" + std::to_string(126 + variant) + "\""),
              std::string::npos);
  }
  EXPECT_EQ(std::count(job.folded.begin(), job.folded.end(), '\n'), 3);
  ASSERT_TRUE(job.pprof.ok());
}

TEST(OffCpuRenderTest, PprofDecodesToTheSameStacks) {
  auto gz = RenderPprof(FixedStacks(), 1'700'000'000'000'000'000, 60'000'000'000);
  ASSERT_TRUE(gz.ok()) << gz.status();
  ASSERT_GE(gz->size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>((*gz)[0]), 0x1f);  // gzip magic
  EXPECT_EQ(static_cast<unsigned char>((*gz)[1]), 0x8b);
  perftools::profiles::Profile p;
  ASSERT_TRUE(p.ParseFromString(Gunzip(*gz)));
  auto str = [&](int64_t i) { return p.string_table(static_cast<int>(i)); };
  EXPECT_EQ(str(0), "");
  ASSERT_EQ(p.sample_type_size(), 2);
  EXPECT_EQ(str(p.sample_type(0).type()), "episodes");
  EXPECT_EQ(str(p.sample_type(0).unit()), "count");
  EXPECT_EQ(str(p.sample_type(1).type()), "offcpu");
  EXPECT_EQ(str(p.sample_type(1).unit()), "nanoseconds");
  EXPECT_EQ(str(p.default_sample_type()), "offcpu");
  EXPECT_EQ(p.time_nanos(), 1'700'000'000'000'000'000);
  EXPECT_EQ(p.duration_nanos(), 60'000'000'000);
  ASSERT_EQ(p.sample_size(), 3);

  std::map<uint64_t, std::pair<std::string, std::string>> loc_name;  // id -> name, file
  std::map<uint64_t, std::pair<std::string, std::string>> fn;
  for (const auto& f : p.function()) fn[f.id()] = {str(f.name()), str(f.filename())};
  for (const auto& l : p.location()) {
    ASSERT_EQ(l.line_size(), 1);
    loc_name[l.id()] = fn[l.line(0).function_id()];
  }
  const auto& s0 = p.sample(0);
  ASSERT_EQ(s0.value_size(), 2);
  EXPECT_EQ(s0.value(0), 300);
  EXPECT_EQ(s0.value(1), 3'000'000'000);
  std::vector<std::string> names;
  for (uint64_t id : s0.location_id()) names.push_back(loc_name[id].first);
  // Leaf first: kernel innermost ... user outermost, then the process and the workload.
  EXPECT_EQ(names, (std::vector<std::string>{
                       "__schedule", "schedule", "do_nanosleep", "hrtimer_nanosleep",
                       "do_syscall_64", "entry_SYSCALL_64_after_hwframe",
                       "kmon_test_sleepy_function", "serve", "main", "nginx", "nginx.service"}));
  EXPECT_EQ(loc_name[s0.location_id(0)].second, "[kernel.kallsyms]");
  EXPECT_EQ(loc_name[s0.location_id(8)].second, "");
  EXPECT_EQ(loc_name[s0.location_id(9)].second, "[process]");
  EXPECT_EQ(loc_name[s0.location_id(10)].second, "[workload]");
  // The kernel thread has no process frame: kernel frames, then its workload.
  ASSERT_EQ(p.sample(2).location_id_size(), 4);
  EXPECT_EQ(loc_name[p.sample(2).location_id(3)].first, "/");
  std::map<std::string, std::string> labels;
  for (const auto& l : p.sample(1).label()) labels[str(l.key())] = str(l.str());
  EXPECT_EQ(labels, (std::map<std::string, std::string>{{"namespace", "shop"},
                                                        {"pod", "cart-7d9f"},
                                                        {"container", "cart"},
                                                        {"process", "cart;server"}}));
  // "main" is one function shared by two samples.
  int mains = 0;
  for (const auto& f : p.function()) mains += str(f.name()) == "main";
  EXPECT_EQ(mains, 1);
}

}  // namespace
}  // namespace kmon
