// The Kubernetes API client, the endpoint readers (kubeconfig, in-cluster) and the
// pod watcher, against tests/kube_api_server: a real HTTP server speaking the
// list/watch protocol, with faults on demand. Counts are exact; waits poll with a
// deadline.
#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "provider/kubernetes/api_client.h"
#include "provider/kubernetes/pod_watcher.h"
#include "tests/kube_api_server.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

double ElapsedMs(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

// A sink that logs every call and keeps a store with the seam's list semantics.
class RecordingSink : public PodWatchSink {
 public:
  void BeginList() override {
    std::lock_guard lock(mu_);
    ++begins_;
    listing_ = true;
    seen_.clear();
    log_.push_back("BEGIN");
  }
  void EndList() override {
    std::lock_guard lock(mu_);
    ++ends_;
    for (auto it = store_.begin(); it != store_.end();) {
      it = seen_.count(it->first) ? std::next(it) : store_.erase(it);
    }
    listing_ = false;
    log_.push_back("END");
  }
  void Apply(WatchEventType type, const nlohmann::json& pod) override {
    std::lock_guard lock(mu_);
    const std::string key = absl::StrCat(pod["metadata"]["namespace"].get<std::string>(), "/",
                                         pod["metadata"]["name"].get<std::string>());
    const char* name = type == WatchEventType::kAdded      ? "ADDED"
                       : type == WatchEventType::kModified ? "MODIFIED"
                                                           : "DELETED";
    if (!listing_) log_.push_back(absl::StrCat(name, " ", key));
    ++applies_;
    if (type == WatchEventType::kDeleted) {
      store_.erase(key);
    } else {
      store_[key] = pod;
      if (listing_) seen_.insert(key);
    }
  }

  int begins() const {
    return Locked([&] { return begins_; });
  }
  int ends() const {
    return Locked([&] { return ends_; });
  }
  int applies() const {
    return Locked([&] { return applies_; });
  }
  /// Calls outside lists ("ADDED ns/name"), and BEGIN/END.
  std::vector<std::string> log() const {
    return Locked([&] { return log_; });
  }
  std::vector<std::string> events() const {
    return Locked([&] {
      std::vector<std::string> out;
      for (const auto& l : log_) {
        if (l != "BEGIN" && l != "END") out.push_back(l);
      }
      return out;
    });
  }
  std::set<std::string> keys() const {
    return Locked([&] {
      std::set<std::string> out;
      for (const auto& [k, v] : store_) out.insert(k);
      return out;
    });
  }
  nlohmann::json pod(const std::string& key) const {
    return Locked([&] { return store_.count(key) ? store_.at(key) : nlohmann::json(); });
  }

 private:
  template <typename F>
  auto Locked(F f) const -> decltype(f()) {
    std::lock_guard lock(mu_);
    return f();
  }
  mutable std::mutex mu_;
  int begins_ = 0, ends_ = 0, applies_ = 0;
  bool listing_ = false;
  std::set<std::string> seen_;
  std::map<std::string, nlohmann::json> store_;
  std::vector<std::string> log_;
};

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/kmon-kube-XXXXXX";
    path_ = mkdtemp(tmpl) != nullptr ? tmpl : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    std::ofstream(p, std::ios::trunc) << text;
    return p;
  }

 private:
  std::string path_;
};

std::shared_ptr<KubeApiClient> ClientFor(const KubeApiServer& server, std::string token = "") {
  KubeEndpoint ep;
  ep.server = server.url();
  ep.token = std::move(token);
  return std::make_shared<KubeApiClient>(ep);
}

PodWatcherOptions NodeOptions(const std::string& node = "node-a") {
  PodWatcherOptions o;
  o.scope = "node";
  o.field_selector = "spec.nodeName=" + node;
  o.backoff_initial = milliseconds(10);
  o.backoff_max = milliseconds(80);
  return o;
}

std::string Rv(int64_t rv) { return std::to_string(rv); }

// A service-account JWT as the kubelet projects it (claims only; nobody checks
// the signature here).
std::string ServiceAccountJwt(const std::string& ns, const std::string& name) {
  const std::string claims = absl::StrCat(
      "{\"iss\":\"https://kubernetes.default.svc\",\"sub\":\"system:serviceaccount:", ns, ":", name,
      "\"}");
  return absl::StrCat(absl::WebSafeBase64Escape("{\"alg\":\"RS256\"}"), ".",
                      absl::WebSafeBase64Escape(claims), ".c2ln");
}

// ---------------------------------------------------------------- KubeApiClient

TEST(KubeApiClientTest, GetSendsBearerTokenAndReturnsAnyStatus) {
  KubeApiServer server;
  ASSERT_TRUE(server.ok());
  server.Upsert(KubeApiServer::MakePod("default", "web", "node-a"));
  auto client = ClientFor(server, "s3cret");
  absl::StatusOr<KubeResponse> r = client->Get("/api/v1/pods?limit=10", milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  const nlohmann::json list = nlohmann::json::parse(r->body);
  EXPECT_EQ(list["kind"], "PodList");
  ASSERT_EQ(list["items"].size(), 1u);
  EXPECT_EQ(list["items"][0]["metadata"]["name"], "web");
  absl::StatusOr<KubeResponse> missing = client->Get("/api/v1/nothing", milliseconds(5000));
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  const std::vector<KubeSeenRequest> seen = server.Seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].token, "s3cret");
  EXPECT_EQ(seen[0].query.at("limit"), "10");
}

TEST(KubeApiClientTest, ConnectionRefusedIsUnavailable) {
  int port;
  {
    KubeApiServer gone;
    ASSERT_TRUE(gone.ok());
    port = gone.port();
  }
  KubeEndpoint ep;
  ep.server = absl::StrCat("http://127.0.0.1:", port);
  KubeApiClient client(ep);
  absl::StatusOr<KubeResponse> r = client.Get("/api/v1/pods", milliseconds(2000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(HttpStatusOf(r.status()), 0);
}

TEST(KubeApiClientTest, StreamErrorCarriesHttpStatusAndStatusMessage) {
  KubeApiServer server;
  ASSERT_TRUE(server.ok());
  server.FailRequests(403);
  auto client = ClientFor(server);
  std::atomic<bool> stop{false};
  int chunks = 0, opens = 0;
  KubeStreamOptions opts;
  opts.on_open = [&] { ++opens; };
  const absl::Status s = client->Stream(
      "/api/v1/pods?watch=1", [&](std::string_view) { return ++chunks, true; }, &stop, opts);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(HttpStatusOf(s), 403);
  EXPECT_NE(s.message().find("cannot list resource \"pods\""), std::string::npos) << s;
  EXPECT_EQ(chunks, 0);
  EXPECT_EQ(opens, 0);
}

TEST(KubeApiClientTest, StreamReturnsPromptlyWhenStopped) {
  KubeApiServer server;
  ASSERT_TRUE(server.ok());
  auto client = ClientFor(server);
  std::atomic<bool> stop{false};
  std::atomic<int> opens{0};
  KubeStreamOptions opts;
  opts.on_open = [&] { ++opens; };
  absl::Status result;
  std::thread t([&] {
    result = client->Stream(
        absl::StrCat("/api/v1/pods?watch=1&resourceVersion=", server.ResourceVersion()),
        [](std::string_view) { return true; }, &stop, opts);
  });
  ASSERT_TRUE(Eventually([&] { return opens.load() == 1 && server.OpenWatches() == 1; }));
  const auto t0 = Clock::now();
  stop = true;
  t.join();
  EXPECT_LT(ElapsedMs(t0), 500);
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled) << result;
}

TEST(KubeApiClientTest, SilentStreamIsGivenUpAfterIdleTimeout) {
  KubeApiServer server;
  ASSERT_TRUE(server.ok());
  auto client = ClientFor(server);
  std::atomic<bool> stop{false};
  KubeStreamOptions opts;
  opts.idle_timeout = milliseconds(300);
  const auto t0 = Clock::now();
  const absl::Status s = client->Stream(
      absl::StrCat("/api/v1/pods?watch=1&resourceVersion=", server.ResourceVersion()),
      [](std::string_view) { return true; }, &stop, opts);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(ElapsedMs(t0), 300);
  EXPECT_LT(ElapsedMs(t0), 1500);
}

TEST(KubeApiClientTest, TokenFileIsReReadWhenItChanges) {
  TempDir dir;
  KubeEndpoint ep;
  ep.server = "http://127.0.0.1:1";
  ep.token_file = dir.Write("token", "first\n");
  KubeApiClient client(ep);
  EXPECT_EQ(client.Token(), "first");
  dir.Write("token", "second-token");
  EXPECT_EQ(client.Token(), "second-token");
  EXPECT_EQ(client.Token(), "second-token");
}

TEST(KubeApiClientTest, ServiceAccountOfTokenAndQueryEscape) {
  EXPECT_EQ(ServiceAccountOfToken(ServiceAccountJwt("monitoring", "kmon")), "monitoring/kmon");
  EXPECT_EQ(ServiceAccountOfToken("not-a-jwt"), "");
  EXPECT_EQ(ServiceAccountOfToken("a.b.c"), "");
  EXPECT_EQ(QueryEscape("spec.nodeName=node-1"), "spec.nodeName%3Dnode-1");
  EXPECT_EQ(QueryEscape("eyJ2Ijo+/w=="), "eyJ2Ijo%2B%2Fw%3D%3D");
}

// ---------------------------------------------------------------- KubeConfig

constexpr char kCaPem[] = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
constexpr char kCertPem[] = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n";
constexpr char kKeyPem[] = "-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n";

std::string Kubeconfig(const std::string& cluster, const std::string& user,
                       const std::string& current = "dev") {
  return absl::StrCat(R"(apiVersion: v1
kind: Config
current-context: )",
                      current, R"(
contexts:
- name: dev
  context: {cluster: dev-cluster, user: dev-user, namespace: default}
- name: other
  context: {cluster: other-cluster, user: other-user}
clusters:
- name: other-cluster
  cluster: {server: "https://other:6443"}
- name: dev-cluster
  cluster:
)",
                      cluster, R"(
users:
- name: other-user
  user: {token: other-token}
- name: dev-user
  user:
)",
                      user, "\n");
}

TEST(KubeConfigTest, TokenInsecureAndCaData) {
  TempDir dir;
  const std::string path =
      dir.Write("config", Kubeconfig(absl::StrCat("    server: https://10.1.2.3:6443\n"
                                                  "    insecure-skip-tls-verify: true\n"
                                                  "    certificate-authority-data: ",
                                                  absl::Base64Escape(kCaPem)),
                                     "    token: abc.def"));
  absl::StatusOr<KubeEndpoint> ep = KubeconfigEndpoint(path);
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->server, "https://10.1.2.3:6443");
  EXPECT_TRUE(ep->insecure_skip_tls_verify);
  EXPECT_EQ(ep->ca_data, kCaPem);
  EXPECT_EQ(ep->ca_file, "");
  EXPECT_EQ(ep->token, "abc.def");
  EXPECT_EQ(ep->token_file, "");
}

TEST(KubeConfigTest, RelativeFilesAreRelativeToTheKubeconfig) {
  TempDir dir;
  const std::string path =
      dir.Write("kube/config", Kubeconfig("    server: https://api:6443\n"
                                          "    certificate-authority: certs/ca.crt",
                                          "    tokenFile: ../secrets/token\n"
                                          "    client-certificate: /abs/client.crt\n"
                                          "    client-key: client.key"));
  absl::StatusOr<KubeEndpoint> ep = KubeconfigEndpoint(path);
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->ca_file, dir.path() + "/kube/certs/ca.crt");
  EXPECT_EQ(ep->token_file, dir.path() + "/secrets/token");
  EXPECT_EQ(ep->client_cert_file, "/abs/client.crt");
  EXPECT_EQ(ep->client_key_file, dir.path() + "/kube/client.key");
  EXPECT_FALSE(ep->insecure_skip_tls_verify);
}

TEST(KubeConfigTest, ClientCertificateData) {
  TempDir dir;
  const std::string path = dir.Write(
      "config",
      Kubeconfig("    server: https://api:6443",
                 absl::StrCat("    client-certificate-data: ", absl::Base64Escape(kCertPem),
                              "\n    client-key-data: ", absl::Base64Escape(kKeyPem))));
  absl::StatusOr<KubeEndpoint> ep = KubeconfigEndpoint(path);
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->client_cert_data, kCertPem);
  EXPECT_EQ(ep->client_key_data, kKeyPem);
  EXPECT_EQ(ep->token, "");
}

TEST(KubeConfigTest, NamedContextOverridesCurrent) {
  TempDir dir;
  const std::string path =
      dir.Write("config", Kubeconfig("    server: https://api:6443", "    token: t"));
  absl::StatusOr<KubeEndpoint> ep = KubeconfigEndpoint(path, "other");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->server, "https://other:6443");
  EXPECT_EQ(ep->token, "other-token");
}

TEST(KubeConfigTest, ErrorsNameWhatIsWrong) {
  TempDir dir;
  const std::string ok_cluster = "    server: https://api:6443";
  const std::string missing_ctx = dir.Write("a", Kubeconfig(ok_cluster, "    token: t", "prod"));
  absl::StatusOr<KubeEndpoint> ep = KubeconfigEndpoint(missing_ctx);
  EXPECT_EQ(ep.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ep.status().message(),
            absl::StrCat("kubeconfig ", missing_ctx, ": no context named \"prod\""));

  const std::string exec =
      dir.Write("b", Kubeconfig(ok_cluster,
                                "    exec:\n      apiVersion: "
                                "client.authentication.k8s.io/v1\n      command: aws"));
  ep = KubeconfigEndpoint(exec);
  EXPECT_EQ(ep.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(ep.status().message().find("user \"dev-user\" gets its credentials from an exec "
                                       "plugin, which kmon does not run"),
            std::string::npos)
      << ep.status();

  const std::string provider =
      dir.Write("c", Kubeconfig(ok_cluster, "    auth-provider: {name: gcp}"));
  EXPECT_EQ(KubeconfigEndpoint(provider).status().code(), absl::StatusCode::kUnimplemented);

  ep = KubeconfigEndpoint(dir.path() + "/nope");
  EXPECT_EQ(ep.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ep.status().message(),
            absl::StrCat("kubeconfig ", dir.path(), "/nope: No such file or directory"));

  const std::string half = dir.Write(
      "d", Kubeconfig(ok_cluster, "    client-certificate-data: " + absl::Base64Escape(kCertPem)));
  ep = KubeconfigEndpoint(half);
  EXPECT_EQ(ep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ep.status().message().find("has a client certificate but no key"), std::string::npos);

  const std::string no_current = dir.Write("e", "apiVersion: v1\nkind: Config\n");
  ep = KubeconfigEndpoint(no_current);
  EXPECT_EQ(ep.status().message(), absl::StrCat("kubeconfig ", no_current,
                                                ": no current-context set and no context given"));

  const std::string bad_yaml = dir.Write("f", "clusters: [\n");
  EXPECT_EQ(KubeconfigEndpoint(bad_yaml).status().code(), absl::StatusCode::kInvalidArgument);
}

using Env = std::map<std::string, std::string>;
EnvLookup FakeEnv(Env env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    const auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

TEST(KubeConfigTest, InClusterFromServiceAccountDir) {
  TempDir sa;
  sa.Write("token", "tok");
  sa.Write("ca.crt", kCaPem);
  const Env env = {{"KUBERNETES_SERVICE_HOST", "10.96.0.1"}, {"KUBERNETES_SERVICE_PORT", "443"}};
  EXPECT_TRUE(InCluster(FakeEnv(env)));
  absl::StatusOr<KubeEndpoint> ep = InClusterEndpoint(FakeEnv(env), sa.path());
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->server, "https://10.96.0.1:443");
  EXPECT_EQ(ep->token_file, sa.path() + "/token");
  EXPECT_EQ(ep->ca_file, sa.path() + "/ca.crt");
  EXPECT_EQ(ep->token, "");
  EXPECT_FALSE(ep->insecure_skip_tls_verify);
}

TEST(KubeConfigTest, InClusterIpv6HostIsBracketed) {
  TempDir sa;
  sa.Write("token", "tok");
  sa.Write("ca.crt", kCaPem);
  absl::StatusOr<KubeEndpoint> ep = InClusterEndpoint(
      FakeEnv({{"KUBERNETES_SERVICE_HOST", "fd00:10:96::1"}, {"KUBERNETES_SERVICE_PORT", "6443"}}),
      sa.path());
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->server, "https://[fd00:10:96::1]:6443");
}

TEST(KubeConfigTest, InClusterErrorsNameWhatIsMissing) {
  TempDir sa;
  EXPECT_FALSE(InCluster(FakeEnv({})));
  EXPECT_FALSE(InCluster(FakeEnv({{"KUBERNETES_SERVICE_HOST", "10.96.0.1"}})));
  absl::StatusOr<KubeEndpoint> ep =
      InClusterEndpoint(FakeEnv({{"KUBERNETES_SERVICE_PORT", "443"}}), sa.path());
  EXPECT_EQ(ep.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(ep.status().message().find("KUBERNETES_SERVICE_HOST is not set"), std::string::npos);
  const Env env = {{"KUBERNETES_SERVICE_HOST", "10.96.0.1"}, {"KUBERNETES_SERVICE_PORT", "443"}};
  ep = InClusterEndpoint(FakeEnv(env), sa.path());
  EXPECT_EQ(ep.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(ep.status().message().find("service account token " + sa.path() + "/token"),
            std::string::npos)
      << ep.status();
  sa.Write("token", "tok");
  ep = InClusterEndpoint(FakeEnv(env), sa.path());
  EXPECT_NE(ep.status().message().find("service account CA " + sa.path() + "/ca.crt"),
            std::string::npos)
      << ep.status();
}

// ---------------------------------------------------------------- PodWatcher

// A server with pods on two nodes and a watcher of node-a's, stopped first.
class PodWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.ok()); }
  void TearDown() override {
    if (watcher_) watcher_->Stop();
  }
  void StartWatcher(PodWatcherOptions options = NodeOptions(),
                    std::shared_ptr<KubeApiClient> client = nullptr) {
    watcher_ = std::make_unique<PodWatcher>(client ? client : ClientFor(server_), &sink_,
                                            std::move(options));
    watcher_->Start();
  }
  bool WaitUp() {
    return Eventually([&] { return watcher_->Up(); });
  }
  int64_t AddPod(const std::string& name, const std::string& node = "node-a") {
    return server_.Upsert(KubeApiServer::MakePod("default", name, node));
  }

  KubeApiServer server_;
  RecordingSink sink_;
  std::unique_ptr<PodWatcher> watcher_;
};

TEST_F(PodWatcherTest, ListsTheNodesPodsThenWatchesFromTheListVersion) {
  AddPod("a1");
  AddPod("b1", "node-b");
  const int64_t rv = AddPod("a2");
  const double before =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  EXPECT_EQ(sink_.log(), (std::vector<std::string>{"BEGIN", "END"}));
  EXPECT_EQ(sink_.applies(), 2);
  EXPECT_EQ(sink_.keys(), (std::set<std::string>{"default/a1", "default/a2"}));
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 1);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kListContinue), 0);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kWatch), 1);
  EXPECT_EQ(server_.WatchVersions(), std::vector<std::string>{Rv(rv)});
  const std::vector<KubeSeenRequest> seen = server_.Seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].query.at("fieldSelector"), "spec.nodeName=node-a");
  EXPECT_EQ(seen[0].query.at("limit"), "500");
  EXPECT_EQ(seen[1].query.at("fieldSelector"), "spec.nodeName=node-a");
  EXPECT_EQ(seen[1].query.at("allowWatchBookmarks"), "true");
  int64_t timeout_s = 0;
  ASSERT_TRUE(absl::SimpleAtoi(seen[1].query.at("timeoutSeconds"), &timeout_s));
  EXPECT_GE(timeout_s, 300);
  EXPECT_LT(timeout_s, 600);
  EXPECT_GE(watcher_->LastSyncUnix(), before);
}

TEST_F(PodWatcherTest, ClusterScopeListsEveryPod) {
  AddPod("a1");
  AddPod("b1", "node-b");
  PodWatcherOptions options = NodeOptions();
  options.scope = "cluster";
  options.field_selector = "";
  StartWatcher(options);
  ASSERT_TRUE(WaitUp());
  EXPECT_EQ(sink_.keys(), (std::set<std::string>{"default/a1", "default/b1"}));
  EXPECT_EQ(server_.Seen()[0].query.count("fieldSelector"), 0u);
}

TEST_F(PodWatcherTest, PagedListAppliesEveryPodOnceAndEndsOnce) {
  for (int i = 0; i < 7; ++i) AddPod(absl::StrCat("p", i));
  PodWatcherOptions options = NodeOptions();
  options.page_limit = 3;
  StartWatcher(options);
  ASSERT_TRUE(WaitUp());
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 1);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kListContinue), 2);
  EXPECT_EQ(sink_.begins(), 1);
  EXPECT_EQ(sink_.applies(), 7);
  EXPECT_EQ(sink_.ends(), 1);
  EXPECT_EQ(sink_.keys().size(), 7u);
}

TEST_F(PodWatcherTest, ExpiredContinueTokenRestartsTheList) {
  for (int i = 0; i < 7; ++i) AddPod(absl::StrCat("p", i));
  server_.ExpireNextContinue(1);
  PodWatcherOptions options = NodeOptions();
  options.page_limit = 3;
  StartWatcher(options);
  ASSERT_TRUE(WaitUp());
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 2);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kListContinue), 3);  // one answered 410
  EXPECT_EQ(server_.Responses(410), 1);
  EXPECT_EQ(sink_.log(), (std::vector<std::string>{"BEGIN", "BEGIN", "END"}));
  EXPECT_EQ(sink_.applies(), 3 + 7);
  EXPECT_EQ(sink_.keys().size(), 7u);
}

TEST_F(PodWatcherTest, WatchEventsArriveInOrder) {
  AddPod("a1");
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  AddPod("a2");
  AddPod("b2", "node-b");  // another node's: not this watch's business
  nlohmann::json changed = KubeApiServer::MakePod("default", "a2", "node-a", "10.0.0.7");
  const int64_t modified_rv = server_.Upsert(changed);
  server_.Delete("default", "a1");
  ASSERT_TRUE(Eventually([&] { return sink_.events().size() >= 3; }));
  EXPECT_EQ(sink_.events(), (std::vector<std::string>{"ADDED default/a2", "MODIFIED default/a2",
                                                      "DELETED default/a1"}));
  EXPECT_EQ(sink_.keys(), std::set<std::string>{"default/a2"});
  EXPECT_EQ(sink_.pod("default/a2")["status"]["podIP"], "10.0.0.7");
  EXPECT_EQ(sink_.pod("default/a2")["metadata"]["resourceVersion"], Rv(modified_rv));
  EXPECT_EQ(server_.EventsSent(), 3);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kWatch), 1);
}

TEST_F(PodWatcherTest, EventsStraddlingReadsAreReassembled) {
  server_.SplitWrites(13);
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  for (int i = 0; i < 3; ++i) AddPod(absl::StrCat("split-", i));
  ASSERT_TRUE(Eventually([&] { return sink_.events().size() >= 3; }));
  EXPECT_EQ(sink_.events(),
            (std::vector<std::string>{"ADDED default/split-0", "ADDED default/split-1",
                                      "ADDED default/split-2"}));
  EXPECT_EQ(server_.Requests(KubeRequestKind::kWatch), 1);  // no parse error, no reconnect
}

TEST_F(PodWatcherTest, BookmarkVersionIsWhereTheNextWatchResumes) {
  AddPod("a1");
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  const int64_t elsewhere = AddPod("b1", "node-b");  // moves the version, sends nothing here
  server_.SendBookmarks();
  ASSERT_TRUE(Eventually([&] { return server_.BookmarksSent() == 1; }));
  server_.EndWatches();  // as at timeoutSeconds
  ASSERT_TRUE(Eventually([&] { return server_.Requests(KubeRequestKind::kWatch) == 2; }));
  EXPECT_EQ(server_.WatchVersions()[1], Rv(elsewhere));
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 1);
  EXPECT_TRUE(sink_.events().empty());
  EXPECT_TRUE(WaitUp());
}

TEST_F(PodWatcherTest, ExpiredWatchRelistsAndDropsPodsDeletedMeanwhile) {
  AddPod("a1");
  AddPod("a2");
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  // The DELETED event never reaches the watcher: its stream stalls, then the
  // version is compacted away.
  server_.HoldWatches();
  server_.Delete("default", "a2");
  server_.ExpireWatches();
  ASSERT_TRUE(Eventually([&] { return sink_.ends() == 2 && watcher_->Up(); }));
  EXPECT_EQ(sink_.log(), (std::vector<std::string>{"BEGIN", "END", "BEGIN", "END"}));
  EXPECT_EQ(sink_.keys(), std::set<std::string>{"default/a1"});
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 2);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kWatch), 2);
  EXPECT_EQ(server_.WatchVersions()[1], Rv(server_.ResourceVersion()));
}

TEST_F(PodWatcherTest, HttpGoneOnWatchRelists) {
  AddPod("a1");
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  server_.FailRequests(410, 1);
  server_.DropWatches();
  ASSERT_TRUE(Eventually([&] { return sink_.ends() == 2 && watcher_->Up(); }));
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 2);
  EXPECT_EQ(server_.Requests(KubeRequestKind::kWatch), 3);  // open, 410, open
  EXPECT_EQ(server_.Responses(410), 1);
}

TEST_F(PodWatcherTest, DroppedConnectionResumesWithoutLosingOrRepeatingEvents) {
  AddPod("a1");
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  const int64_t seen_rv = AddPod("a2");
  ASSERT_TRUE(Eventually([&] { return sink_.events().size() == 1; }));
  // These two are in the server's history but not yet on the wire when it breaks.
  server_.HoldWatches();
  AddPod("a3");
  server_.Upsert(KubeApiServer::MakePod("default", "a1", "node-a", "10.0.0.1"));
  server_.DropWatches();
  ASSERT_TRUE(Eventually([&] { return sink_.events().size() >= 3; }));
  EXPECT_TRUE(WaitUp());
  EXPECT_EQ(sink_.events(), (std::vector<std::string>{"ADDED default/a2", "ADDED default/a3",
                                                      "MODIFIED default/a1"}));
  EXPECT_EQ(server_.WatchVersions().size(), 2u);
  EXPECT_EQ(server_.WatchVersions()[1], Rv(seen_rv));
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 1);
  EXPECT_EQ(sink_.begins(), 1);
}

TEST_F(PodWatcherTest, OversizedEventLineIsAnErrorAndNotApplied) {
  PodWatcherOptions options = NodeOptions();
  options.max_event_bytes = 1024;
  StartWatcher(options);
  ASSERT_TRUE(WaitUp());
  const int64_t listed = server_.ResourceVersion();
  nlohmann::json big = KubeApiServer::MakePod("default", "big", "node-a");
  big["metadata"]["annotations"]["blob"] = std::string(4096, 'x');
  server_.Upsert(big);
  // The same event comes again on every watch: the watcher keeps resuming from the
  // version before it, never applying a part of it.
  ASSERT_TRUE(Eventually([&] { return server_.Requests(KubeRequestKind::kWatch) >= 3; }));
  const std::vector<std::string> versions = server_.WatchVersions();
  for (const std::string& v : versions) EXPECT_EQ(v, Rv(listed));
  EXPECT_TRUE(sink_.events().empty());
  EXPECT_EQ(server_.Requests(KubeRequestKind::kList), 1);
}

TEST_F(PodWatcherTest, UnauthorizedLogsOnceAndRecoversWhenTheTokenFileIsFixed) {
  TempDir dir;
  const std::string token = ServiceAccountJwt("monitoring", "kmon");
  server_.RequireToken(token);
  AddPod("a1");
  KubeEndpoint ep;
  ep.server = server_.url();
  ep.token_file = dir.Write("token", "expired-token");
  ::testing::internal::CaptureStderr();
  StartWatcher(NodeOptions(), std::make_shared<KubeApiClient>(ep));
  ASSERT_TRUE(Eventually([&] { return server_.Responses(401) >= 4; }));
  EXPECT_FALSE(watcher_->Up());
  EXPECT_EQ(watcher_->LastSyncUnix(), 0);
  EXPECT_EQ(sink_.ends(), 0);
  dir.Write("token", token);
  EXPECT_TRUE(WaitUp());
  watcher_->Stop();
  const std::string log = ::testing::internal::GetCapturedStderr();
  size_t lines = 0;
  for (size_t at = 0; (at = log.find("401 Unauthorized", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 1u) << log;
  EXPECT_NE(log.find("level=error"), std::string::npos) << log;
  EXPECT_NE(log.find("works again"), std::string::npos) << log;
  size_t changes = 0;
  for (size_t at = 0; (at = log.find("token file changed", at)) != std::string::npos; ++at) {
    ++changes;
  }
  EXPECT_EQ(changes, 1u) << log;
  EXPECT_EQ(sink_.keys(), std::set<std::string>{"default/a1"});
  EXPECT_EQ(server_.Seen().back().token, token);
}

TEST_F(PodWatcherTest, ForbiddenNamesTheMissingRbacAndServiceAccount) {
  server_.FailRequests(403);
  ::testing::internal::CaptureStderr();
  StartWatcher(NodeOptions(), ClientFor(server_, ServiceAccountJwt("monitoring", "kmon")));
  ASSERT_TRUE(Eventually([&] { return server_.Responses(403) >= 3; }));
  EXPECT_FALSE(watcher_->Up());
  server_.FailRequests(0, 0);
  EXPECT_TRUE(WaitUp());
  watcher_->Stop();
  const std::string log = ::testing::internal::GetCapturedStderr();
  size_t lines = 0;
  for (size_t at = 0; (at = log.find("403 Forbidden", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 1u) << log;
  EXPECT_NE(log.find("get/list/watch on pods at cluster scope"), std::string::npos) << log;
  EXPECT_NE(log.find("serviceaccount=monitoring/kmon"), std::string::npos) << log;
}

TEST_F(PodWatcherTest, SlowAnswerBlocksNoCallerAndStopIsPrompt) {
  server_.SetDelay(milliseconds(10'000));
  StartWatcher();
  ASSERT_TRUE(Eventually([&] { return server_.Requests(KubeRequestKind::kList) == 1; }));
  auto t0 = Clock::now();
  EXPECT_FALSE(watcher_->Up());
  EXPECT_EQ(watcher_->LastSyncUnix(), 0);
  EXPECT_LT(ElapsedMs(t0), 50);
  t0 = Clock::now();
  watcher_->Stop();
  EXPECT_LT(ElapsedMs(t0), 1000);
  EXPECT_EQ(sink_.begins(), 1);
  EXPECT_EQ(sink_.ends(), 0);
}

TEST_F(PodWatcherTest, StopIsPromptMidStreamAndMidBackoff) {
  StartWatcher();
  ASSERT_TRUE(WaitUp());
  auto t0 = Clock::now();
  watcher_->Stop();
  EXPECT_LT(ElapsedMs(t0), 1000);
  EXPECT_FALSE(watcher_->Up());

  RecordingSink sink;
  PodWatcherOptions options = NodeOptions();
  options.backoff_initial = milliseconds(20'000);
  server_.FailRequests(500);
  PodWatcher backing_off(ClientFor(server_), &sink, options);
  backing_off.Start();
  ASSERT_TRUE(Eventually([&] { return server_.Responses(500) == 1; }));
  std::this_thread::sleep_for(milliseconds(50));  // into the 10-20 s sleep
  t0 = Clock::now();
  backing_off.Stop();
  EXPECT_LT(ElapsedMs(t0), 1000);
  EXPECT_EQ(server_.Responses(500), 1);
}

TEST_F(PodWatcherTest, KubeconfigWithTokenFileReachesTheServer) {
  TempDir dir;
  server_.RequireToken("from-file");
  AddPod("a1");
  dir.Write("secrets/token", "from-file\n");
  const std::string path = dir.Write(
      "config",
      Kubeconfig(absl::StrCat("    server: ", server_.url()), "    tokenFile: secrets/token"));
  absl::StatusOr<KubeEndpoint> ep = KubeconfigEndpoint(path);
  ASSERT_TRUE(ep.ok()) << ep.status();
  StartWatcher(NodeOptions(), std::make_shared<KubeApiClient>(*ep));
  ASSERT_TRUE(WaitUp());
  EXPECT_EQ(sink_.keys(), std::set<std::string>{"default/a1"});
  EXPECT_EQ(server_.Responses(401), 0);
}

}  // namespace
}  // namespace kmon
