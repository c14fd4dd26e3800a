// Unit tests of the YAML config: defaults as SPEC shows them, strict checking
// with the right key and line for every problem, ${VAR} expansion, durations,
// syscall resolution, and the shipped config/kmon.yaml being the defaults.
#include "exporter/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "collectors/blockio.h"
#include "collectors/cpu.h"
#include "collectors/dns.h"
#include "collectors/drops.h"
#include "collectors/pagecache.h"
#include "collectors/syscalls.h"
#include "collectors/tcp.h"
#include "collectors/topology.h"

namespace kmon {
namespace {

using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::nanoseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// An environment made of exactly these variables.
EnvLookup FakeEnv(std::map<std::string, std::string> vars = {}) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string Problems(const ConfigResult& result) {
  std::string out;
  for (const ConfigProblem& p : result.problems) out += p.ToString() + "\n";
  return out;
}

// Parses text that must be valid and returns the config.
Config MustParse(const std::string& yaml, const EnvLookup& env = FakeEnv()) {
  ConfigResult result = ParseConfig(yaml, env);
  EXPECT_THAT(result.problems, IsEmpty()) << Problems(result);
  EXPECT_TRUE(result.config.has_value());
  return result.config.value_or(Config{});
}

const std::vector<double> kSpecBuckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const std::vector<std::string> kSpecSyscalls{"read",    "write",      "sendto",  "recvfrom",
                                             "sendmsg", "recvmsg",    "openat",  "close",
                                             "futex",   "epoll_wait", "connect", "accept4"};

// Compares every field, so a key that the parser forgets to apply (or a default
// that drifts from config/kmon.yaml) shows up by name.
void ExpectSameConfig(const Config& a, const Config& b) {
  EXPECT_EQ(a.interval, b.interval);
  EXPECT_EQ(a.targets.namespaces, b.targets.namespaces);
  EXPECT_EQ(a.targets.exclude_namespaces, b.targets.exclude_namespaces);
  EXPECT_EQ(a.targets.pod_selector, b.targets.pod_selector);
  EXPECT_EQ(a.targets.host_processes, b.targets.host_processes);
  EXPECT_EQ(a.kubernetes.enabled, b.kubernetes.enabled);
  EXPECT_EQ(a.kubernetes.node_name, b.kubernetes.node_name);
  EXPECT_EQ(a.kubernetes.kubeconfig, b.kubernetes.kubeconfig);
  EXPECT_EQ(a.limits.max_series_per_collector, b.limits.max_series_per_collector);
  EXPECT_EQ(a.limits.bpf_map_entries, b.limits.bpf_map_entries);
  const CollectorSections& x = a.collectors;
  const CollectorSections& y = b.collectors;
  EXPECT_EQ(x.Get<TcpConfig>().enabled, y.Get<TcpConfig>().enabled);
  EXPECT_EQ(x.Get<TcpConfig>().ports, y.Get<TcpConfig>().ports);
  EXPECT_EQ(x.Get<TcpConfig>().latency_buckets, y.Get<TcpConfig>().latency_buckets);
  EXPECT_EQ(x.Get<TopologyConfig>().enabled, y.Get<TopologyConfig>().enabled);
  EXPECT_EQ(x.Get<TopologyConfig>().granularity, y.Get<TopologyConfig>().granularity);
  EXPECT_EQ(x.Get<TopologyConfig>().external_peers, y.Get<TopologyConfig>().external_peers);
  EXPECT_EQ(x.Get<TopologyConfig>().service_graph_metrics,
            y.Get<TopologyConfig>().service_graph_metrics);
  EXPECT_EQ(x.Get<DropsConfig>().enabled, y.Get<DropsConfig>().enabled);
  EXPECT_EQ(x.Get<BlockioConfig>().enabled, y.Get<BlockioConfig>().enabled);
  EXPECT_EQ(x.Get<BlockioConfig>().devices, y.Get<BlockioConfig>().devices);
  EXPECT_EQ(x.Get<SyscallsConfig>().enabled, y.Get<SyscallsConfig>().enabled);
  EXPECT_EQ(x.Get<SyscallsConfig>().syscalls, y.Get<SyscallsConfig>().syscalls);
  EXPECT_EQ(x.Get<SyscallsConfig>().numbers, y.Get<SyscallsConfig>().numbers);
  EXPECT_EQ(x.Get<SyscallsConfig>().unavailable, y.Get<SyscallsConfig>().unavailable);
  EXPECT_EQ(x.Get<SyscallsConfig>().hook, y.Get<SyscallsConfig>().hook);
  EXPECT_EQ(x.Get<CpuConfig>().enabled, y.Get<CpuConfig>().enabled);
  EXPECT_EQ(x.Get<CpuConfig>().offcpu_min, y.Get<CpuConfig>().offcpu_min);
  EXPECT_EQ(x.Get<CpuConfig>().stacks, y.Get<CpuConfig>().stacks);
  EXPECT_EQ(x.Get<DnsConfig>().enabled, y.Get<DnsConfig>().enabled);
  EXPECT_EQ(x.Get<DnsConfig>().ports, y.Get<DnsConfig>().ports);
  EXPECT_EQ(x.Get<DnsConfig>().timeout, y.Get<DnsConfig>().timeout);
  EXPECT_EQ(x.Get<DnsConfig>().latency_buckets, y.Get<DnsConfig>().latency_buckets);
  EXPECT_EQ(x.Get<PagecacheConfig>().enabled, y.Get<PagecacheConfig>().enabled);
  EXPECT_EQ(x.Get<PagecacheConfig>().hooks, y.Get<PagecacheConfig>().hooks);
}

TEST(DefaultConfigTest, MatchesSpec) {
  const Config c = DefaultConfig();
  EXPECT_EQ(c.interval, seconds(15));
  EXPECT_THAT(c.targets.namespaces, IsEmpty());
  EXPECT_THAT(c.targets.exclude_namespaces, ElementsAre("kube-system"));
  EXPECT_THAT(c.targets.pod_selector, IsEmpty());
  EXPECT_TRUE(c.targets.host_processes);
  EXPECT_EQ(c.kubernetes.enabled, "auto");
  EXPECT_EQ(c.kubernetes.node_name, "");
  EXPECT_EQ(c.kubernetes.kubeconfig, "");
  EXPECT_EQ(c.kubernetes.series_grace, std::chrono::minutes(5));
  EXPECT_EQ(c.limits.max_series_per_collector, 20000);
  EXPECT_THAT(c.limits.bpf_map_entries, IsEmpty());  // every map at its object's size
  EXPECT_TRUE(c.collectors.Get<TcpConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<TcpConfig>().ports, IsEmpty());
  EXPECT_EQ(c.collectors.Get<TcpConfig>().latency_buckets, kSpecBuckets);
  EXPECT_TRUE(c.collectors.Get<TopologyConfig>().enabled);
  EXPECT_EQ(c.collectors.Get<TopologyConfig>().granularity, "pod");
  EXPECT_EQ(c.collectors.Get<TopologyConfig>().external_peers, "aggregate");
  EXPECT_FALSE(c.collectors.Get<TopologyConfig>().service_graph_metrics);
  EXPECT_TRUE(c.collectors.Get<DropsConfig>().enabled);
  EXPECT_TRUE(c.collectors.Get<BlockioConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<BlockioConfig>().devices, IsEmpty());
  EXPECT_FALSE(c.collectors.Get<SyscallsConfig>().enabled);  // SPEC: off by default
  EXPECT_TRUE(c.collectors.Get<CpuConfig>().enabled);
  EXPECT_EQ(c.collectors.Get<CpuConfig>().offcpu_min, milliseconds(1));
  EXPECT_EQ(c.collectors.Get<CpuConfig>().stacks, OffCpuStacks::kOnDemand);
  EXPECT_TRUE(c.collectors.Get<DnsConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<DnsConfig>().ports, ElementsAre(53));
  EXPECT_TRUE(c.collectors.Get<PagecacheConfig>().enabled);
}

TEST(DefaultConfigTest, ResolvesDefaultSyscallNumbers) {
  const Config c = DefaultConfig();
  const SyscallsConfig& s = c.collectors.Get<SyscallsConfig>();
#if defined(__x86_64__)
  // Every default name is native on x86-64, in SPEC's order.
  EXPECT_EQ(s.syscalls, kSpecSyscalls);
  EXPECT_THAT(s.numbers, ElementsAre(SYS_read, SYS_write, SYS_sendto, SYS_recvfrom, SYS_sendmsg,
                                     SYS_recvmsg, SYS_openat, SYS_close, SYS_futex, SYS_epoll_wait,
                                     SYS_connect, SYS_accept4));
  EXPECT_THAT(s.unavailable, IsEmpty());
#else
  ASSERT_EQ(s.syscalls.size(), s.numbers.size());
  EXPECT_EQ(s.syscalls.size() + s.unavailable.size(), kSpecSyscalls.size());
  EXPECT_EQ(s.syscalls[0], "read");
  EXPECT_EQ(s.numbers[0], SYS_read);
#endif
}

TEST(ParseConfigTest, EmptyAndCommentOnlyFilesAreDefaults) {
  for (const char* text : {"", "\n", "# only a comment\n", "---\n", "~\n", "---\n---\n"}) {
    SCOPED_TRACE(text);
    ExpectSameConfig(MustParse(text), DefaultConfig());
  }
}

TEST(ParseConfigTest, AbsentKeysKeepDefaults) {
  const Config c = MustParse(
      "collectors:\n"
      "  tcp:\n"
      "    ports: [8080, 443]\n"
      "  pagecache:\n"  // empty section: all of its defaults
      "limits: {max_series_per_collector: 500}\n");
  EXPECT_THAT(c.collectors.Get<TcpConfig>().ports, ElementsAre(8080, 443));
  EXPECT_TRUE(c.collectors.Get<TcpConfig>().enabled);
  EXPECT_EQ(c.collectors.Get<TcpConfig>().latency_buckets, kSpecBuckets);
  EXPECT_TRUE(c.collectors.Get<PagecacheConfig>().enabled);
  EXPECT_EQ(c.limits.max_series_per_collector, 500);
  EXPECT_EQ(c.interval, seconds(15));
  EXPECT_THAT(c.targets.exclude_namespaces, ElementsAre("kube-system"));
  EXPECT_EQ(c.collectors.Get<SyscallsConfig>().numbers,
            DefaultConfig().collectors.Get<SyscallsConfig>().numbers);
}

TEST(ParseConfigTest, EmptyExtraDocumentsAreIgnored) {
  EXPECT_EQ(MustParse("interval: 30s\n---\n").interval, seconds(30));
  EXPECT_EQ(MustParse("---\n# nothing yet\n---\ninterval: 1m\n...\n").interval, minutes(1));
}

TEST(ParseConfigTest, EveryKeyIsApplied) {
  const Config c = MustParse(R"(
interval: 1m30s
targets:
  namespaces: [shop, payments]
  exclude_namespaces: []
  pod_selector: {app: checkout, tier: "1"}
  host_processes: false
kubernetes:
  enabled: false
  node_name: node-a
  kubeconfig: /etc/kube/config
  series_grace: 90s
limits:
  max_series_per_collector: 1
  bpf_map_entries:
    tcp: {client_socks: 131072, edges: 1}
    shared: {watched_cgroups: 32768}
collectors:
  tcp: {enabled: false, ports: [0, 65535], latency_buckets: [0.5, 1, 1e1]}
  topology: {enabled: false, granularity: workload, external_peers: address, service_graph_metrics: true}
  drops: {enabled: false}
  blockio: {enabled: false, devices: [nvme0n1, vda]}
  syscalls: {enabled: false, syscalls: [getppid, read]}
  cpu: {enabled: false, offcpu_min: 0, stacks: off}
  dns: {enabled: false, ports: [53, 5353]}
  pagecache: {enabled: false}
)");
  EXPECT_EQ(c.interval, seconds(90));
  EXPECT_THAT(c.targets.namespaces, ElementsAre("shop", "payments"));
  EXPECT_THAT(c.targets.exclude_namespaces, IsEmpty());
  EXPECT_EQ(c.targets.pod_selector,
            (std::map<std::string, std::string>{{"app", "checkout"}, {"tier", "1"}}));
  EXPECT_FALSE(c.targets.host_processes);
  EXPECT_EQ(c.kubernetes.enabled, "false");
  EXPECT_EQ(c.kubernetes.node_name, "node-a");
  EXPECT_EQ(c.kubernetes.kubeconfig, "/etc/kube/config");
  EXPECT_EQ(c.kubernetes.series_grace, seconds(90));
  EXPECT_EQ(c.limits.max_series_per_collector, 1);
  EXPECT_EQ(c.limits.MapEntriesOf("tcp"),
            (std::map<std::string, uint32_t>{{"client_socks", 131072}, {"edges", 1}}));
  EXPECT_EQ(c.limits.MapEntriesOf("shared"),
            (std::map<std::string, uint32_t>{{"watched_cgroups", 32768}}));
  EXPECT_THAT(c.limits.MapEntriesOf("cpu"), IsEmpty());
  EXPECT_FALSE(c.collectors.Get<TcpConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<TcpConfig>().ports, ElementsAre(0, 65535));
  EXPECT_THAT(c.collectors.Get<TcpConfig>().latency_buckets, ElementsAre(0.5, 1.0, 10.0));
  EXPECT_FALSE(c.collectors.Get<TopologyConfig>().enabled);
  EXPECT_EQ(c.collectors.Get<TopologyConfig>().granularity, "workload");
  EXPECT_EQ(c.collectors.Get<TopologyConfig>().external_peers, "address");
  EXPECT_TRUE(c.collectors.Get<TopologyConfig>().service_graph_metrics);
  EXPECT_FALSE(c.collectors.Get<DropsConfig>().enabled);
  EXPECT_FALSE(c.collectors.Get<BlockioConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<BlockioConfig>().devices, ElementsAre("nvme0n1", "vda"));
  EXPECT_FALSE(c.collectors.Get<SyscallsConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<SyscallsConfig>().syscalls, ElementsAre("getppid", "read"));
  EXPECT_THAT(c.collectors.Get<SyscallsConfig>().numbers, ElementsAre(SYS_getppid, SYS_read));
  EXPECT_FALSE(c.collectors.Get<CpuConfig>().enabled);
  EXPECT_EQ(c.collectors.Get<CpuConfig>().offcpu_min, nanoseconds(0));
  EXPECT_EQ(c.collectors.Get<CpuConfig>().stacks, OffCpuStacks::kOff);
  EXPECT_FALSE(c.collectors.Get<DnsConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<DnsConfig>().ports, ElementsAre(53, 5353));
  EXPECT_FALSE(c.collectors.Get<PagecacheConfig>().enabled);
}

TEST(ParseConfigTest, KubernetesEnabledAcceptsWordsAndBooleans) {
  EXPECT_EQ(MustParse("kubernetes: {enabled: auto}").kubernetes.enabled, "auto");
  EXPECT_EQ(MustParse("kubernetes: {enabled: true}").kubernetes.enabled, "true");
  EXPECT_EQ(MustParse("kubernetes: {enabled: True}").kubernetes.enabled, "true");
  EXPECT_EQ(MustParse("kubernetes: {enabled: \"false\"}").kubernetes.enabled, "false");
  EXPECT_EQ(MustParse("kubernetes: {enabled: FALSE}").kubernetes.enabled, "false");
}

TEST(ParseConfigTest, SpecExampleIsTheDefaults) {
  // The YAML block of SPEC.md's "Config file" section, verbatim.
  const Config c = MustParse(R"yaml(
interval: 15s                    # how often collectors fold kernel data (scrapes also drain)
targets:                          # which workloads are watched (a control map of cgroup ids)
  namespaces: []                  # empty: all; K8s namespaces to include
  exclude_namespaces: [kube-system]
  pod_selector: {}                # matchLabels
  host_processes: true            # also watch processes outside any pod
kubernetes:
  enabled: auto                   # auto: on when running in a cluster (KUBERNETES_SERVICE_HOST)
  node_name: ${NODE_NAME}
  kubeconfig: ""                  # out-of-cluster use
  series_grace: 5m                # how long a gone pod's series stay
limits:
  max_series_per_collector: 20000 # beyond: folded into label value "__overflow__", counted
collectors:
  tcp:      {enabled: true, ports: [], latency_buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]}
  topology: {enabled: true, granularity: pod, external_peers: aggregate, service_graph_metrics: false}   # pod|workload; aggregate|address
  drops:    {enabled: true}
  blockio:  {enabled: true, devices: []}
  syscalls: {enabled: false, syscalls: [read, write, sendto, recvfrom, sendmsg, recvmsg, openat, close, futex, epoll_wait, connect, accept4]}
  cpu:      {enabled: true, offcpu_min: 1ms, stacks: on_demand}   # on_demand|always|off
  dns:      {enabled: true, ports: [53]}
  pagecache: {enabled: true}
)yaml");
  ExpectSameConfig(c, DefaultConfig());
}

struct BadCase {
  const char* name;
  const char* yaml;
  const char* key;
  int line;
  const char* message;  // expected substring
};

class BadConfigTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfigTest, ReportsKeyLineAndMessage) {
  const BadCase& c = GetParam();
  const ConfigResult result = ParseConfig(c.yaml, FakeEnv());
  EXPECT_FALSE(result.config.has_value());
  ASSERT_EQ(result.problems.size(), 1u) << Problems(result);
  const ConfigProblem& p = result.problems[0];
  EXPECT_EQ(p.key, c.key);
  EXPECT_EQ(p.line, c.line);
  EXPECT_THAT(p.message, HasSubstr(c.message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfigTest,
    ::testing::Values(
        // Found by fuzzing and probing: each once accepted, looped or wrapped.
        BadCase{"LoneComma", ",", "", 1, "not a YAML document"},
        BadCase{"SeriesGraceBeyondADay", "kubernetes:\n  series_grace: 25h\n",
                "kubernetes.series_grace", 2, "must be between 0s and 24h"},
        BadCase{"SeriesGraceNotADuration", "kubernetes:\n  series_grace: soon\n",
                "kubernetes.series_grace", 2, "duration"},
        BadCase{"CommasAfterAMap", "interval: 15s\n,,\n", "", 2, "end of map not found"},
        BadCase{"TooManyBuckets",
                "collectors:\n  tcp:\n    latency_buckets: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "
                "12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, "
                "32, 33]\n",
                "collectors.tcp.latency_buckets", 3,
                "has 33 bounds; at most 32 fit the kernel's histogram"},
        BadCase{"BucketBelowANanosecond", "collectors:\n  tcp:\n    latency_buckets: [1e-10]\n",
                "collectors.tcp.latency_buckets[0]", 3,
                "must be from 1e-09 (1 ns) to 1e+09 seconds, got 1e-10"},
        BadCase{"BucketBeyondInt64Nanoseconds",
                "collectors:\n  tcp:\n    latency_buckets: [1, 1e300]\n",
                "collectors.tcp.latency_buckets[1]", 3, "got 1e+300"},
        BadCase{"BucketsEqualInNanoseconds",
                "collectors:\n  tcp:\n    latency_buckets: [1.0000000001, 1.0000000002]\n",
                "collectors.tcp.latency_buckets[1]", 3,
                "must be greater than the previous bucket (1.0000000001) by at least 1 ns"},
        BadCase{"IntervalThatWrapsTheClock", "interval: 106751d\n", "interval", 1,
                "must be at most 24h"},
        BadCase{"NulInAString", "kubernetes:\n  node_name: \"a\\0b\"\n", "kubernetes.node_name", 2,
                "must not contain a NUL byte"},
        // Unknown keys, anywhere.
        BadCase{"UnknownTopLevel", "interval: 15s\nbogus: 1\n", "bogus", 2, "unknown key"},
        BadCase{"UnknownInTargets", "targets:\n  bogus: 1\n", "targets.bogus", 2,
                "unknown key (expected one of: namespaces, exclude_namespaces, pod_selector, "
                "host_processes)"},
        BadCase{"UnknownInCollector", "collectors:\n  tcp:\n    enable: true\n",
                "collectors.tcp.enable", 3, "unknown key"},
        BadCase{"UnknownCollector", "collectors:\n  gpu: {enabled: true}\n", "collectors.gpu", 2,
                "unknown key"},
        BadCase{"DuplicateKey", "interval: 15s\ninterval: 30s\n", "interval", 2,
                "duplicate key (first set on line 1)"},
        // Document shape and YAML syntax.
        BadCase{"TopLevelList", "- interval\n", "", 1,
                "the config must be a map of keys, got a list"},
        BadCase{"TopLevelScalar", "hello\n", "", 1,
                "the config must be a map of keys, got \"hello\""},
        BadCase{"SyntaxError", "targets:\n  namespaces: [a, b\nlimits: {}\n", "", 3,
                "end of sequence flow not found"},
        BadCase{"TabIndent", "targets:\n\tnamespaces: []\n", "", 2, "illegal map value"},
        BadCase{"TwoDocuments", "interval: 15s\n---\ninterval: 30s\n", "", 3,
                "single YAML document"},
        // Wrong types.
        BadCase{"SectionNotMap", "targets: all\n", "targets", 1, "must be a map, got \"all\""},
        BadCase{"BoolYes", "targets:\n  host_processes: yes\n", "targets.host_processes", 2,
                "must be true or false, got \"yes\""},
        BadCase{"BoolQuoted", "collectors:\n  drops:\n    enabled: \"true\"\n",
                "collectors.drops.enabled", 3, "must be true or false, got the string \"true\""},
        BadCase{"BoolList", "collectors:\n  drops:\n    enabled: [true]\n",
                "collectors.drops.enabled", 3, "must be true or false, got a list"},
        BadCase{"StacksList", "collectors:\n  cpu:\n    stacks: [always]\n",
                "collectors.cpu.stacks", 3, "must be one of on_demand, always, off, got a list"},
        BadCase{"StacksUnknown", "collectors:\n  cpu:\n    stacks: sometimes\n",
                "collectors.cpu.stacks", 3,
                "must be one of on_demand, always, off; got \"sometimes\""},
        // The boolean it was: refused, with what each value became.
        BadCase{"StacksOldBooleanTrue", "collectors:\n  cpu:\n    stacks: true\n",
                "collectors.cpu.stacks", 3,
                "a boolean is no longer taken (true was what is now always, false off)"},
        BadCase{"StacksOldBooleanFalse", "collectors:\n  cpu: {stacks: false}\n",
                "collectors.cpu.stacks", 2, "must be one of on_demand, always, off"},
        BadCase{"ListIsString", "targets:\n  namespaces: default\n", "targets.namespaces", 2,
                "must be a list, got \"default\""},
        BadCase{"ListIsEmptyValue", "targets:\n  namespaces:\ninterval: 15s\n",
                "targets.namespaces", 2, "must be a list, got an empty value"},
        BadCase{"StringIsEmptyValue", "kubernetes:\n  kubeconfig:\n  node_name: n\n",
                "kubernetes.kubeconfig", 2, "write \"\" for an empty string"},
        BadCase{"StringIsMap", "kubernetes:\n  node_name: {a: b}\n", "kubernetes.node_name", 2,
                "must be a string, got a map"},
        BadCase{"SelectorIsList", "targets:\n  pod_selector: [app]\n", "targets.pod_selector", 2,
                "must be a map of label: value, got a list"},
        BadCase{"SelectorValueIsList", "targets:\n  pod_selector:\n    app: [a, b]\n",
                "targets.pod_selector.app", 3, "must be a string, got a list"},
        BadCase{"NamespaceRepeated", "targets:\n  namespaces: [a, b, a]\n", "targets.namespaces[2]",
                2, "duplicate namespace \"a\" (also at index 0)"},
        // Histogram buckets.
        BadCase{"BucketNotNumber", "collectors:\n  tcp:\n    latency_buckets: [0.1, fast, 1]\n",
                "collectors.tcp.latency_buckets[1]", 3, "must be a number, got \"fast\""},
        BadCase{"BucketQuoted", "collectors:\n  tcp:\n    latency_buckets: [\"0.1\"]\n",
                "collectors.tcp.latency_buckets[0]", 3, "must be a number, got the string"},
        BadCase{"BucketUnsorted",
                "collectors:\n  tcp:\n    latency_buckets:\n      - 0.1\n      - 0.5\n"
                "      - 0.25\n",
                "collectors.tcp.latency_buckets[2]", 6,
                "must be greater than the previous bucket (0.5)"},
        BadCase{"BucketRepeated", "collectors:\n  tcp:\n    latency_buckets: [1, 2, 2]\n",
                "collectors.tcp.latency_buckets[2]", 3,
                "must be greater than the previous bucket (2)"},
        BadCase{"BucketNegative", "collectors:\n  tcp:\n    latency_buckets: [-1, 1]\n",
                "collectors.tcp.latency_buckets[0]", 3, "must be greater than 0, got -1"},
        BadCase{"BucketZero", "collectors:\n  tcp:\n    latency_buckets: [0, 1]\n",
                "collectors.tcp.latency_buckets[0]", 3, "must be greater than 0, got 0"},
        BadCase{"BucketInfinite", "collectors:\n  tcp:\n    latency_buckets: [1, .inf]\n",
                "collectors.tcp.latency_buckets[1]", 3, "must be finite"},
        BadCase{"BucketNaN", "collectors:\n  tcp:\n    latency_buckets: [.nan]\n",
                "collectors.tcp.latency_buckets[0]", 3, "must be finite"},
        BadCase{"BucketsEmpty", "collectors:\n  tcp:\n    latency_buckets: []\n",
                "collectors.tcp.latency_buckets", 3, "must not be empty"},
        // Ports.
        BadCase{"PortTooBig", "collectors:\n  tcp:\n    ports: [80, 70000]\n",
                "collectors.tcp.ports[1]", 3, "must be a port number from 0 to 65535, got 70000"},
        BadCase{"PortNegative", "collectors:\n  dns:\n    ports: [-1]\n", "collectors.dns.ports[0]",
                3, "must be a port number from 0 to 65535, got -1"},
        BadCase{"PortFraction", "collectors:\n  dns:\n    ports: [53.5]\n",
                "collectors.dns.ports[0]", 3, "got \"53.5\""},
        BadCase{"PortQuoted", "collectors:\n  dns:\n    ports: [\"53\"]\n",
                "collectors.dns.ports[0]", 3, "got the string \"53\""},
        BadCase{"PortRepeated", "collectors:\n  dns:\n    ports: [53, 53]\n",
                "collectors.dns.ports[1]", 3, "duplicate port 53 (also at index 0)"},
        // Durations.
        BadCase{"IntervalNoUnit", "interval: 15\n", "interval", 1,
                "must be a duration such as 15s, 1m30s or 100ms, got \"15\""},
        BadCase{"IntervalZero", "interval: 0s\n", "interval", 1, "must be greater than 0"},
        BadCase{"IntervalNegative", "interval: -5s\n", "interval", 1, "must be a duration"},
        BadCase{"OffcpuBad", "collectors:\n  cpu:\n    offcpu_min: 1 ms\n",
                "collectors.cpu.offcpu_min", 3, "got \"1 ms\""},
        // Limits and enumerations.
        BadCase{"MapEntriesOfAnUnknownMap",
                "limits:\n  bpf_map_entries:\n    tcp: {client_sockets: 10}\n",
                "limits.bpf_map_entries.tcp.client_sockets", 3,
                "unknown key (expected one of: listen_ports, listen_socks, peer_addrs, "
                "client_socks, req_hist, edges, connect_hist, stats)"},
        BadCase{"MapEntriesOfACollectorWithoutMaps",
                "limits:\n  bpf_map_entries:\n    topology: {edges: 10}\n",
                "limits.bpf_map_entries.topology", 3, "unknown key"},
        BadCase{"MapEntriesZero", "limits:\n  bpf_map_entries:\n    drops: {counts: 0}\n",
                "limits.bpf_map_entries.drops.counts", 3, "must be between 1 and 16777216, got 0"},
        BadCase{"MapEntriesBeyondTheCap",
                "limits:\n  bpf_map_entries:\n    shared:\n      watched_cgroups: 16777217\n",
                "limits.bpf_map_entries.shared.watched_cgroups", 4,
                "must be between 1 and 16777216, got 16777217"},
        BadCase{"MapEntriesNotANumber", "limits:\n  bpf_map_entries:\n    cpu: {cg_hists: many}\n",
                "limits.bpf_map_entries.cpu.cg_hists", 3, "must be a whole number of entries"},
        BadCase{"SeriesNegative", "limits:\n  max_series_per_collector: -5\n",
                "limits.max_series_per_collector", 2, "must be at least 1, got -5"},
        BadCase{"SeriesZero", "limits:\n  max_series_per_collector: 0\n",
                "limits.max_series_per_collector", 2, "must be at least 1, got 0"},
        BadCase{"SeriesNotNumber", "limits:\n  max_series_per_collector: lots\n",
                "limits.max_series_per_collector", 2, "must be a whole number"},
        BadCase{"KubernetesMaybe", "kubernetes:\n  enabled: maybe\n", "kubernetes.enabled", 2,
                "must be one of auto, true, false; got \"maybe\""},
        BadCase{"KubernetesYes", "kubernetes:\n  enabled: yes\n", "kubernetes.enabled", 2,
                "must be one of auto, true, false"},
        BadCase{"Granularity", "collectors:\n  topology: {granularity: namespace}\n",
                "collectors.topology.granularity", 2, "must be one of pod, workload"},
        BadCase{"ExternalPeers", "collectors:\n  topology:\n    external_peers: ip\n",
                "collectors.topology.external_peers", 3, "must be one of aggregate, address"},
        // Syscalls.
        BadCase{"SyscallUnknown", "collectors:\n  syscalls:\n    syscalls: [read, bogus_call]\n",
                "collectors.syscalls.syscalls[1]", 3, "unknown syscall \"bogus_call\""},
        BadCase{"SyscallRepeated", "collectors:\n  syscalls:\n    syscalls: [read, read]\n",
                "collectors.syscalls.syscalls[1]", 3, "duplicate syscall \"read\""},
        BadCase{"SyscallsEmpty", "collectors:\n  syscalls:\n    syscalls: []\n",
                "collectors.syscalls.syscalls", 3, "must not be empty"},
        // ${VAR} syntax.
        BadCase{"UnclosedVar", "kubernetes:\n  node_name: ${NODE_NAME\n", "kubernetes.node_name", 2,
                "\"${\" without a closing \"}\""},
        BadCase{"BadVarName", "kubernetes:\n  node_name: ${1NODE}\n", "kubernetes.node_name", 2,
                "invalid environment variable name \"1NODE\""}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return info.param.name; });

TEST(ParseConfigTest, ReportsEveryProblemInDocumentOrder) {
  const ConfigResult result = ParseConfig(
      "interval: soon\n"                              // 1
      "targets:\n"                                    // 2
      "  host_processes: maybe\n"                     // 3
      "  bogus: 1\n"                                  // 4
      "collectors:\n"                                 // 5
      "  tcp:\n"                                      // 6
      "    latency_buckets: [0.1, 0.2, 0.3, 0.25]\n"  // 7
      "  syscalls: {syscalls: [read, nope]}\n"        // 8
      "  dns: {ports: [99999]}\n",                    // 9
      FakeEnv());
  EXPECT_FALSE(result.config.has_value());
  ASSERT_EQ(result.problems.size(), 6u) << Problems(result);
  EXPECT_EQ(Problems(result),
            "line 1: interval: must be a duration such as 15s, 1m30s or 100ms, got \"soon\"\n"
            "line 3: targets.host_processes: must be true or false, got \"maybe\"\n"
            "line 4: targets.bogus: unknown key (expected one of: namespaces, "
            "exclude_namespaces, pod_selector, host_processes)\n"
            "line 7: collectors.tcp.latency_buckets[3]: must be greater than the previous "
            "bucket (0.3)\n"
            "line 8: collectors.syscalls.syscalls[1]: unknown syscall \"nope\"\n"
            "line 9: collectors.dns.ports[0]: must be a port number from 0 to 65535, got "
            "99999\n");
}

TEST(ParseConfigTest, ProblemToString) {
  const ConfigResult result = ParseConfig(
      "\n\n\n\n\n\n\n\n\n\n\n"
      "collectors: {tcp: {latency_buckets: [0.1, 0.25, 0.5, 0.5]}}\n",
      FakeEnv());
  ASSERT_EQ(result.problems.size(), 1u);
  EXPECT_EQ(result.problems[0].ToString(),
            "line 12: collectors.tcp.latency_buckets[3]: must be greater than the previous "
            "bucket (0.5)");
  EXPECT_EQ((ConfigProblem{"", 0, "cannot read x: No such file or directory"}.ToString()),
            "cannot read x: No such file or directory");
  EXPECT_EQ((ConfigProblem{"", 3, "oops"}.ToString()), "line 3: oops");
}

TEST(ParseConfigTest, ExpandsEnvironmentVariables) {
  const EnvLookup env = FakeEnv({{"NODE_NAME", "node-7"},
                                 {"NS", "shop"},
                                 {"MAX", "500"},
                                 {"ON", "false"},
                                 {"PORT", "8080"},
                                 {"EMPTY", ""}});
  // In block style ${VAR} can stay unquoted; in flow style ({...}, [...]) the
  // braces would end a plain scalar, so it is quoted, and a quoted reference
  // still gives a boolean or number when the expanded value is one.
  const Config c = MustParse(
      "kubernetes:\n"
      "  node_name: ${NODE_NAME}\n"
      "  kubeconfig: /home/${UNSET}/${EMPTY}kube-$$HOME-$x-${NS}$\n"
      "targets:\n"
      "  namespaces:\n"
      "    - ${NS}\n"
      "    - \"${NS}-canary\"\n"
      "  pod_selector: {team: \"${NS}\"}\n"
      "limits:\n"
      "  max_series_per_collector: ${MAX}\n"
      "collectors:\n"
      "  tcp: {enabled: \"${ON}\", ports: [\"${PORT}\"]}\n",
      env);
  EXPECT_EQ(c.kubernetes.node_name, "node-7");
  // Unset and empty give "", $$ is one $, a $ not followed by { or $ is kept.
  EXPECT_EQ(c.kubernetes.kubeconfig, "/home//kube-$HOME-$x-shop$");
  EXPECT_THAT(c.targets.namespaces, ElementsAre("shop", "shop-canary"));
  EXPECT_EQ(c.targets.pod_selector.at("team"), "shop");
  EXPECT_EQ(c.limits.max_series_per_collector, 500);
  EXPECT_FALSE(c.collectors.Get<TcpConfig>().enabled);
  EXPECT_THAT(c.collectors.Get<TcpConfig>().ports, ElementsAre(8080));
}

TEST(ParseConfigTest, ExpandedValueIsStillChecked) {
  // Expansion happens per scalar after parsing: a variable cannot inject YAML
  // structure, and its value must still have the right type.
  const ConfigResult result =
      ParseConfig("\nlimits: {max_series_per_collector: \"${MAX}\"}\n", FakeEnv({{"MAX", "-3"}}));
  ASSERT_EQ(result.problems.size(), 1u) << Problems(result);
  EXPECT_EQ(result.problems[0].ToString(),
            "line 2: limits.max_series_per_collector: must be at least 1, got -3");
  const ConfigResult empty_bool =
      ParseConfig("collectors: {drops: {enabled: \"${UNSET}\"}}\n", FakeEnv());
  ASSERT_EQ(empty_bool.problems.size(), 1u) << Problems(empty_bool);
  EXPECT_EQ(empty_bool.problems[0].ToString(),
            "line 1: collectors.drops.enabled: must be true or false, got \"\"");
  const Config c =
      MustParse("kubernetes: {node_name: \"${V}\"}\n", FakeEnv({{"V", "a: [b]\n- c"}}));
  EXPECT_EQ(c.kubernetes.node_name, "a: [b]\n- c");
}

TEST(ParseConfigTest, SyscallNamesResolveToNativeNumbers) {
  const Config c = MustParse("collectors:\n  syscalls:\n    syscalls: [getppid, openat, read]\n");
  const SyscallsConfig& s = c.collectors.Get<SyscallsConfig>();
  EXPECT_THAT(s.syscalls, ElementsAre("getppid", "openat", "read"));
  EXPECT_THAT(s.numbers, ElementsAre(SYS_getppid, SYS_openat, SYS_read));
  EXPECT_THAT(s.unavailable, IsEmpty());
}

TEST(ParseConfigTest, SyscallMissingOnThisArchitectureIsSetAside) {
#if defined(__x86_64__)
  const char* other_arch_only = "socketcall";  // i386, s390 multiplexer
#elif defined(__aarch64__)
  const char* other_arch_only = "epoll_wait";
#else
  GTEST_SKIP() << "no known other-architecture-only syscall for this CPU";
  const char* other_arch_only = "";
#endif
  const Config c = MustParse(std::string("collectors: {syscalls: {syscalls: [getppid, ") +
                             other_arch_only + ", read]}}\n");
  const SyscallsConfig& s = c.collectors.Get<SyscallsConfig>();
  EXPECT_THAT(s.syscalls, ElementsAre("getppid", "read"));
  EXPECT_THAT(s.numbers, ElementsAre(SYS_getppid, SYS_read));
  EXPECT_THAT(s.unavailable, ElementsAre(other_arch_only));
}

TEST(ParseDurationTest, Valid) {
  EXPECT_EQ(ParseDuration("0"), nanoseconds(0));
  EXPECT_EQ(ParseDuration("0s"), nanoseconds(0));
  EXPECT_EQ(ParseDuration("15s"), seconds(15));
  EXPECT_EQ(ParseDuration("1ms"), milliseconds(1));
  EXPECT_EQ(ParseDuration("100us"), microseconds(100));
  EXPECT_EQ(ParseDuration("250ns"), nanoseconds(250));
  EXPECT_EQ(ParseDuration("1m30s"), seconds(90));
  EXPECT_EQ(ParseDuration("2h"), hours(2));
  EXPECT_EQ(ParseDuration("1h1m1s1ms1us1ns"), hours(1) + minutes(1) + seconds(1) + milliseconds(1) +
                                                  microseconds(1) + nanoseconds(1));
  EXPECT_EQ(ParseDuration("1d"), hours(24));
  EXPECT_EQ(ParseDuration("1w"), hours(24 * 7));
  EXPECT_EQ(ParseDuration("1y"), hours(24 * 365));
  EXPECT_EQ(ParseDuration("90m"), minutes(90));
}

TEST(ParseDurationTest, Invalid) {
  for (const char* text :
       {"",      "15",  "s",    "1.5s", "-1s",   "+1s",   "1 s",
        " 1s",   "1s ", "1sec", "1S",   "30s1m", "1s1s",  "1m1m",
        "1ms1s", "1x",  "ms",   "00",   "1h-1m", "1000y", "99999999999999999999s"}) {
    EXPECT_EQ(ParseDuration(text), std::nullopt) << text;
  }
}

TEST(TargetsConfigTest, Filters) {
  TargetsConfig t;
  EXPECT_FALSE(t.Filters());  // the default excludes kube-system, but must stay unfiltered
  t.exclude_namespaces = {"a", "b"};
  EXPECT_FALSE(t.Filters());
  t = TargetsConfig{};
  t.namespaces = {"shop"};
  EXPECT_TRUE(t.Filters());
  t = TargetsConfig{};
  t.pod_selector = {{"app", "x"}};
  EXPECT_TRUE(t.Filters());
  t = TargetsConfig{};
  t.host_processes = false;
  EXPECT_TRUE(t.Filters());
}

TEST(ConfigTest, EnabledFlagPointsAtEachCollector) {
  Config c;
  EXPECT_EQ(c.EnabledFlag("tcp"), &c.collectors.Mutable<TcpConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("topology"), &c.collectors.Mutable<TopologyConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("drops"), &c.collectors.Mutable<DropsConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("blockio"), &c.collectors.Mutable<BlockioConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("syscalls"), &c.collectors.Mutable<SyscallsConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("cpu"), &c.collectors.Mutable<CpuConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("dns"), &c.collectors.Mutable<DnsConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("pagecache"), &c.collectors.Mutable<PagecacheConfig>().enabled);
  EXPECT_EQ(c.EnabledFlag("gpu"), nullptr);
  EXPECT_EQ(c.EnabledFlag(""), nullptr);
  *c.EnabledFlag("dns") = false;
  EXPECT_FALSE(c.collectors.Get<DnsConfig>().enabled);
  const Config& cc = c;
  EXPECT_EQ(cc.EnabledFlag("cpu"), &c.collectors.Mutable<CpuConfig>().enabled);
  EXPECT_EQ(cc.EnabledFlag("TCP"), nullptr);
}

TEST(LoadConfigFileTest, ShippedConfigIsTheDefaults) {
  const std::string path = std::string(KMON_SOURCE_DIR) + "/config/kmon.yaml";
  const ConfigResult result = LoadConfigFile(path, FakeEnv());
  ASSERT_THAT(result.problems, IsEmpty()) << Problems(result);
  ASSERT_TRUE(result.config.has_value());
  ExpectSameConfig(*result.config, DefaultConfig());

  // node_name is ${NODE_NAME}, as a DaemonSet sets it from the downward API.
  const ConfigResult with_node = LoadConfigFile(path, FakeEnv({{"NODE_NAME", "worker-3"}}));
  ASSERT_TRUE(with_node.config.has_value()) << Problems(with_node);
  EXPECT_EQ(with_node.config->kubernetes.node_name, "worker-3");
}

TEST(LoadConfigFileTest, UnreadableFileIsOneProblem) {
  const ConfigResult missing = LoadConfigFile("/nonexistent/kmon.yaml", FakeEnv());
  EXPECT_FALSE(missing.config.has_value());
  ASSERT_EQ(missing.problems.size(), 1u);
  EXPECT_EQ(missing.problems[0].key, "");
  EXPECT_EQ(missing.problems[0].line, 0);
  EXPECT_EQ(missing.problems[0].ToString(),
            "cannot read /nonexistent/kmon.yaml: No such file or directory");

  const ConfigResult directory = LoadConfigFile("/", FakeEnv());
  ASSERT_EQ(directory.problems.size(), 1u);
  EXPECT_EQ(directory.problems[0].ToString(), "cannot read /: Is a directory");
}

TEST(ProcessEnvTest, ReadsTheEnvironment) {
  const EnvLookup env = ProcessEnv();
  ASSERT_EQ(setenv("KMON_CONFIG_TEST_VAR", "v1", 1), 0);
  EXPECT_EQ(env("KMON_CONFIG_TEST_VAR"), "v1");
  ASSERT_EQ(unsetenv("KMON_CONFIG_TEST_VAR"), 0);
  EXPECT_EQ(env("KMON_CONFIG_TEST_VAR"), std::nullopt);
}

}  // namespace
}  // namespace kmon
