// The HTTP layer over real sockets: a server on 127.0.0.1:0 with fake hooks, driven by
// libcurl, asserting status codes, bodies and headers exactly.
#include "exporter/http_server.h"

#include <absl/strings/ascii.h>
#include <absl/strings/escaping.h>
#include <civetweb.h>
#include <crypt.h>
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/gzip.h"
#include "exporter/exposition.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

struct Response {
  long status = 0;  // 0: no HTTP response (connection or TLS failure)
  std::string body;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string curl_error;
  std::string header(const std::string& lower_name) const {
    const auto it = headers.find(lower_name);
    return it == headers.end() ? "(absent)" : it->second;
  }
};

struct Request {
  std::string method = "GET";
  std::vector<std::string> headers;  // "Name: value"
  bool tls = false;
  std::string client_cert, client_key;
  long ssl_version = CURL_SSLVERSION_DEFAULT;
};

size_t CollectBody(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

size_t CollectHeader(char* data, size_t size, size_t n, void* out) {
  const std::string line(data, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    auto* headers = static_cast<std::map<std::string, std::string>*>(out);
    (*headers)[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * n;
}

Response Fetch(int port, const std::string& path_and_query, const Request& req = {}) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  Response r;
  CURL* curl = curl_easy_init();
  const std::string url = (req.tls ? "https://127.0.0.1:" : "http://127.0.0.1:") +
                          std::to_string(port) + path_and_query;
  curl_slist* headers = nullptr;
  for (const auto& h : req.headers) headers = curl_slist_append(headers, h.c_str());
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 20L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &CollectBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &CollectHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r.headers);
  if (req.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (req.method == "POST") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
  } else if (req.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  if (req.tls) {
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);  // self-signed test certificate
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(curl, CURLOPT_SSLVERSION, req.ssl_version);
    if (!req.client_cert.empty()) {
      curl_easy_setopt(curl, CURLOPT_SSLCERT, req.client_cert.c_str());
      curl_easy_setopt(curl, CURLOPT_SSLKEY, req.client_key.c_str());
    }
  }
  const CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  } else {
    r.curl_error = error[0] != 0 ? error : curl_easy_strerror(rc);
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return r;
}

// One series, and `extra` more of another family (for responses worth gzipping).
std::vector<prometheus::MetricFamily> TestFamilies(int extra = 0) {
  prometheus::MetricFamily f;
  f.name = "kmon_test_scrapes_total";
  f.help = "Scrapes.";
  f.type = prometheus::MetricType::Counter;
  prometheus::ClientMetric m;
  m.label = {{"collector", "tcp"}};
  m.counter.value = 3;
  f.metric.push_back(m);
  if (extra == 0) return {f};
  prometheus::MetricFamily g;
  g.name = "kmon_test_workload_bytes_total";
  g.help = "Bytes by workload.";
  g.type = prometheus::MetricType::Counter;
  for (int i = 0; i < extra; ++i) {
    prometheus::ClientMetric w;
    w.label = {{"namespace", "shop"}, {"pod", "cart-" + std::to_string(i)}, {"container", "app"}};
    w.counter.value = 1000.0 * i;
    g.metric.push_back(w);
  }
  return {f, g};
}

// Hooks whose behaviour a test can steer and whose calls it can count.
struct FakeHooks {
  std::atomic<bool> ready{true};
  std::atomic<int> gathers{0};
  std::atomic<int> gather_throws{0};  // the next N gathers throw
  std::atomic<int> reloads{0};
  std::atomic<int> extra_series{0};
  std::mutex mu;
  absl::Status reload_result = absl::OkStatus();

  HttpHooks Hooks() {
    HttpHooks h;
    h.gather = [this] {
      ++gathers;
      if (gather_throws.load() > 0) {
        --gather_throws;
        throw std::runtime_error("map read failed");
      }
      return TestFamilies(extra_series.load());
    };
    h.ready = [this] { return ready.load(); };
    h.reload = [this] {
      ++reloads;
      std::lock_guard lock(mu);
      return reload_result;
    };
    h.landing_page = [] { return std::string("<html><body>kmon</body></html>"); };
    return h;
  }
};

HttpServerOptions LocalOptions() {
  HttpServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.num_threads = 2;
  return o;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = LocalOptions()) {
    auto s = HttpServer::Start(options, fake_.Hooks());
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_EQ(server_->ListeningPorts().size(), 1u);
    port_ = server_->ListeningPorts()[0];
    ASSERT_GT(port_, 0);
  }
  FakeHooks fake_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
};

TEST(CivetListeningPorts, Translates) {
  EXPECT_EQ(*CivetListeningPorts(":9877", false), "9877");
  EXPECT_EQ(*CivetListeningPorts(":9877", true), "9877s");
  EXPECT_EQ(*CivetListeningPorts("127.0.0.1:9877", false), "127.0.0.1:9877");
  EXPECT_EQ(*CivetListeningPorts("127.0.0.1:9877", true), "127.0.0.1:9877s");
  EXPECT_EQ(*CivetListeningPorts("[::1]:9877", false), "[::1]:9877");
  EXPECT_EQ(*CivetListeningPorts("[::]:0", true), "[::]:0s");
  EXPECT_EQ(*CivetListeningPorts("localhost:80", false), "localhost:80");
  EXPECT_EQ(*CivetListeningPorts(":0", false), "0");
  EXPECT_EQ(*CivetListeningPorts(":65535", false), "65535");
}

TEST(CivetListeningPorts, RejectsMalformedAddresses) {
  for (const std::string bad :
       {"abc", "host:", ":99999", ":65536", "", ":", "1.2.3.4", "999.1.1.1:80", "::1:80", "[::1]",
        "[::1]80", "[nothost]:80", ":-1", ":80a", "bad_host:80", "[::1:80"}) {
    auto r = CivetListeningPorts(bad, false);
    ASSERT_FALSE(r.ok()) << "accepted \"" << bad << "\" as " << *r;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("\"" + bad + "\""), absl::string_view::npos) << r.status();
  }
  EXPECT_EQ(CivetListeningPorts(":99999", false).status().message(),
            "invalid listen address \":99999\": bad port \"99999\" (want 0-65535) (want "
            "host:port, :port or [v6-address]:port)");
}

TEST_F(HttpServerTest, MetricsInTextFormat) {
  StartServer();
  const Response r = Fetch(port_, "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.body,
            "# HELP kmon_test_scrapes_total Scrapes.\n"
            "# TYPE kmon_test_scrapes_total counter\n"
            "kmon_test_scrapes_total{collector=\"tcp\"} 3\n");
  EXPECT_EQ(fake_.gathers.load(), 1);
}

TEST_F(HttpServerTest, MetricsInOpenMetricsWhenAsked) {
  StartServer();
  Request req;
  req.headers = {"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"};
  const Response r = Fetch(port_, "/metrics", req);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "application/openmetrics-text; version=1.0.0; charset=utf-8");
  EXPECT_EQ(r.body,
            "# TYPE kmon_test_scrapes counter\n"
            "# HELP kmon_test_scrapes Scrapes.\n"
            "kmon_test_scrapes_total{collector=\"tcp\"} 3\n"
            "# EOF\n");
  req.headers = {"Accept: application/openmetrics-text;q=0"};
  EXPECT_EQ(Fetch(port_, "/metrics", req).header("content-type"),
            "text/plain; version=0.0.4; charset=utf-8");
}

// Prometheus asks for gzip on every scrape; the body is the same text, compressed.
TEST_F(HttpServerTest, MetricsGzippedWhenTheClientAcceptsIt) {
  fake_.extra_series = 500;
  StartServer();
  const Response plain = Fetch(port_, "/metrics");
  ASSERT_EQ(plain.status, 200);
  EXPECT_EQ(plain.header("content-encoding"), "(absent)");
  EXPECT_EQ(plain.header("vary"), "Accept-Encoding");
  ASSERT_GT(plain.body.size(), 30000u);

  for (const std::string accept :
       {"Accept-Encoding: gzip", "Accept-Encoding: deflate, gzip;q=0.8, br",
        "Accept-Encoding: *", "Accept-Encoding: GZIP"}) {
    Request req;
    req.headers = {accept};
    const Response gz = Fetch(port_, "/metrics", req);
    ASSERT_EQ(gz.status, 200) << accept;
    EXPECT_EQ(gz.header("content-encoding"), "gzip") << accept;
    EXPECT_EQ(gz.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_EQ(gz.header("content-length"), std::to_string(gz.body.size()));
    EXPECT_LT(gz.body.size() * 5, plain.body.size()) << "500 similar series compress well";
    EXPECT_EQ(Gunzip(gz.body), plain.body) << accept;
  }
  // OpenMetrics too.
  Request om;
  om.headers = {"Accept: application/openmetrics-text;version=1.0.0", "Accept-Encoding: gzip"};
  const Response gz_om = Fetch(port_, "/metrics", om);
  EXPECT_EQ(gz_om.header("content-encoding"), "gzip");
  const std::string text = Gunzip(gz_om.body);
  EXPECT_EQ(text.substr(text.size() - 6), "# EOF\n");
  // Refused, or not offered: plain.
  for (const std::string accept : {"Accept-Encoding: gzip;q=0", "Accept-Encoding: identity",
                                   "Accept-Encoding: *, gzip;q=0", "Accept-Encoding: br"}) {
    Request req;
    req.headers = {accept};
    const Response r = Fetch(port_, "/metrics", req);
    EXPECT_EQ(r.header("content-encoding"), "(absent)") << accept;
    EXPECT_EQ(r.body, plain.body) << accept;
  }
}

TEST(AcceptsGzip, ReadsTheHeaderLikeRfc9110) {
  EXPECT_TRUE(AcceptsGzip("gzip"));
  EXPECT_TRUE(AcceptsGzip("x-gzip"));
  EXPECT_TRUE(AcceptsGzip(" deflate , Gzip ; q=0.001"));
  EXPECT_TRUE(AcceptsGzip("*"));
  EXPECT_TRUE(AcceptsGzip("br;q=1, *;q=0.1"));
  EXPECT_FALSE(AcceptsGzip(""));
  EXPECT_FALSE(AcceptsGzip("identity"));
  EXPECT_FALSE(AcceptsGzip("gzip;q=0"));
  EXPECT_FALSE(AcceptsGzip("gzip;q=0.000"));
  EXPECT_FALSE(AcceptsGzip("*;q=0"));
  EXPECT_FALSE(AcceptsGzip("*, gzip;q=0"));  // named beats the wildcard
  EXPECT_FALSE(AcceptsGzip("gzip;q=abc"));   // malformed: as if absent
  EXPECT_FALSE(AcceptsGzip("gzip;q=2"));
}

TEST_F(HttpServerTest, CustomTelemetryPath) {
  HttpServerOptions o = LocalOptions();
  o.telemetry_path = "/kmon/metrics";
  StartServer(o);
  EXPECT_EQ(Fetch(port_, "/kmon/metrics").status, 200);
  EXPECT_EQ(Fetch(port_, "/metrics").status, 404);
}

TEST_F(HttpServerTest, HeadAndWrongMethodsOnMetrics) {
  StartServer();
  Request head;
  head.method = "HEAD";
  const Response h = Fetch(port_, "/metrics", head);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "");
  EXPECT_EQ(h.header("content-length"),
            std::to_string(Serialize(TestFamilies(), ExpositionFormat::kText004).size()));

  Request del;
  del.method = "DELETE";
  const Response d = Fetch(port_, "/metrics", del);
  EXPECT_EQ(d.status, 405);
  EXPECT_EQ(d.header("allow"), "GET, HEAD");
}

TEST_F(HttpServerTest, LandingHealthAndReadiness) {
  StartServer();
  const Response landing = Fetch(port_, "/");
  EXPECT_EQ(landing.status, 200);
  EXPECT_EQ(landing.header("content-type"), "text/html; charset=utf-8");
  EXPECT_EQ(landing.body, "<html><body>kmon</body></html>");

  const Response healthy = Fetch(port_, "/-/healthy");
  EXPECT_EQ(healthy.status, 200);
  EXPECT_EQ(healthy.body, "OK");
  EXPECT_EQ(healthy.header("content-type"), "text/plain; charset=utf-8");

  const Response ready = Fetch(port_, "/-/ready");
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(ready.body, "Ready");
  fake_.ready = false;
  const Response not_ready = Fetch(port_, "/-/ready");
  EXPECT_EQ(not_ready.status, 503);
  EXPECT_EQ(not_ready.body, "Not ready");

  const Response missing = Fetch(port_, "/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.body, "Not Found");
  EXPECT_EQ(Fetch(port_, "/-/healthy/extra").status, 404);  // paths match exactly
}

TEST_F(HttpServerTest, ReloadIsRefusedWithoutEnableLifecycle) {
  StartServer();
  Request post;
  post.method = "POST";
  const Response refused = Fetch(port_, "/-/reload", post);
  EXPECT_EQ(refused.status, 403);
  EXPECT_EQ(refused.body,
            "Lifecycle API is not enabled: start kmon_exporter with --web.enable-lifecycle to "
            "reload over HTTP (SIGHUP and a change of the config file always reload)");
  const Response get = Fetch(port_, "/-/reload");
  EXPECT_EQ(get.status, 405);
  EXPECT_EQ(get.header("allow"), "POST");
  EXPECT_EQ(fake_.reloads.load(), 0);
}

TEST_F(HttpServerTest, ReloadIsPostOnly) {
  HttpServerOptions o = LocalOptions();
  o.enable_lifecycle = true;
  StartServer(o);
  const Response get = Fetch(port_, "/-/reload");
  EXPECT_EQ(get.status, 405);
  EXPECT_EQ(get.header("allow"), "POST");
  EXPECT_EQ(fake_.reloads.load(), 0);

  Request post;
  post.method = "POST";
  const Response ok = Fetch(port_, "/-/reload", post);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, "OK");
  EXPECT_EQ(fake_.reloads.load(), 1);

  {
    std::lock_guard lock(fake_.mu);
    fake_.reload_result = absl::InvalidArgumentError("line 3: collectors.tcp.portz: unknown key");
  }
  const Response failed = Fetch(port_, "/-/reload", post);
  EXPECT_EQ(failed.status, 500);
  EXPECT_EQ(failed.body, "line 3: collectors.tcp.portz: unknown key");
  EXPECT_EQ(fake_.reloads.load(), 2);
}

TEST_F(HttpServerTest, GatherThatThrowsGives500AndServerLivesOn) {
  StartServer();
  fake_.gather_throws = 1;
  const Response failed = Fetch(port_, "/metrics");
  EXPECT_EQ(failed.status, 500);
  EXPECT_EQ(failed.body, "An error has occurred while serving metrics:\n\nmap read failed");
  const Response next = Fetch(port_, "/metrics");
  EXPECT_EQ(next.status, 200);
  EXPECT_EQ(next.body, Serialize(TestFamilies(), ExpositionFormat::kText004));
  EXPECT_EQ(fake_.gathers.load(), 2);
}

TEST_F(HttpServerTest, ExtraHandlersSeeQueryAndHeaders) {
  StartServer();
  // Registered after Start, as collectors do.
  server_->Handle("/api/v1/topology", [](const HttpRequest& req) {
    HttpResponse r;
    r.content_type = "application/json";
    r.headers["X-Kmon-Test"] = "yes";
    r.body = req.method + "|" + req.path + "|" + req.query.at("namespace") + "|" +
             req.query.at("pod") + "|" + std::to_string(req.query.count("empty")) + "|" +
             req.headers.at("x-custom");
    return r;
  });
  Request req;
  req.headers = {"X-Custom: hello"};
  const Response r = Fetch(port_, "/api/v1/topology?namespace=kube%2Dsystem&pod=a+b&empty=", req);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.header("x-kmon-test"), "yes");
  EXPECT_EQ(r.body, "GET|/api/v1/topology|kube-system|a b|1|hello");
}

TEST_F(HttpServerTest, HandlerExceptionsNeverReachCivetweb) {
  StartServer();
  server_->Handle("/throws", [](const HttpRequest&) -> HttpResponse {
    throw std::logic_error("bug in a handler");
  });
  server_->Handle("/throws-int", [](const HttpRequest&) -> HttpResponse { throw 42; });
  const Response a = Fetch(port_, "/throws");
  EXPECT_EQ(a.status, 500);
  EXPECT_EQ(a.body, "Internal Server Error: bug in a handler");
  const Response b = Fetch(port_, "/throws-int");
  EXPECT_EQ(b.status, 500);
  EXPECT_EQ(b.body, "Internal Server Error");
  EXPECT_EQ(Fetch(port_, "/-/healthy").status, 200);
}

TEST_F(HttpServerTest, BasicAuthGuardsEveryPath) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  ASSERT_NE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt)), nullptr);
  crypt_data data;
  std::memset(&data, 0, sizeof(data));
  WebConfig web;
  web.basic_auth_users["prom"] = crypt_rn("scrape-me", salt, &data, sizeof(data));
  HttpServerOptions o = LocalOptions();
  o.web = web;
  o.enable_lifecycle = true;
  StartServer(o);

  for (const std::string path : {"/metrics", "/", "/-/healthy", "/-/ready", "/nope"}) {
    const Response anon = Fetch(port_, path);
    EXPECT_EQ(anon.status, 401) << path;
    EXPECT_EQ(anon.header("www-authenticate"), "Basic realm=\"kmon\"") << path;
    EXPECT_EQ(anon.body, "Unauthorized") << path;
  }
  Request wrong;
  wrong.headers = {"Authorization: Basic " + absl::Base64Escape("prom:wrong")};
  EXPECT_EQ(Fetch(port_, "/metrics", wrong).status, 401);

  Request right;
  right.headers = {"Authorization: Basic " + absl::Base64Escape("prom:scrape-me")};
  const Response ok = Fetch(port_, "/metrics", right);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, Serialize(TestFamilies(), ExpositionFormat::kText004));
  EXPECT_EQ(Fetch(port_, "/nope", right).status, 404);
  right.method = "POST";
  EXPECT_EQ(Fetch(port_, "/-/reload", right).status, 200);
  EXPECT_EQ(fake_.reloads.load(), 1);
  EXPECT_EQ(fake_.gathers.load(), 1);  // the refused scrapes never gathered
}

TEST_F(HttpServerTest, PortTakenIsAnErrorNotAnAbort) {
  StartServer();
  HttpServerOptions o = LocalOptions();
  o.listen_address = "127.0.0.1:" + std::to_string(port_);
  FakeHooks other;
  auto second = HttpServer::Start(o, other.Hooks());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(o.listen_address), absl::string_view::npos)
      << second.status();
  EXPECT_NE(second.status().message().find("Address already in use"), absl::string_view::npos)
      << second.status();
  EXPECT_EQ(Fetch(port_, "/-/healthy").status, 200);  // the first server is unharmed
}

TEST(HttpServerStart, RejectsBadOptions) {
  FakeHooks fake;
  HttpServerOptions o = LocalOptions();
  o.listen_address = "abc";
  auto bad_address = HttpServer::Start(o, fake.Hooks());
  ASSERT_FALSE(bad_address.ok());
  EXPECT_EQ(bad_address.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_address.status().message().find("\"abc\""), absl::string_view::npos);

  o = LocalOptions();
  o.telemetry_path = "metrics";
  EXPECT_EQ(HttpServer::Start(o, fake.Hooks()).status().code(), absl::StatusCode::kInvalidArgument);

  HttpHooks missing = fake.Hooks();
  missing.reload = nullptr;
  EXPECT_EQ(HttpServer::Start(LocalOptions(), missing).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HttpServerStart, Ipv6DependsOnCivetwebBuild) {
  FakeHooks fake;
  HttpServerOptions o = LocalOptions();
  o.listen_address = "[::1]:0";
  auto s = HttpServer::Start(o, fake.Hooks());
  if (mg_check_feature(MG_FEATURES_IPV6) == 0) {
    // Debian 12's civetweb 1.15 is built without IPv6.
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.status().message(),
              "listen address [::1]:0: this civetweb was built without IPv6 support");
  } else {
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_GT((*s)->ListeningPorts().at(0), 0);
  }
}

// --- TLS ---------------------------------------------------------------------------

int RunCommand(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Certificates made with the openssl CLI, and the OpenSSL 3 compat library that Debian's
// civetweb 1.15 needs (exporter/openssl_compat.c, built next to kmon_exporter).
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        (std::filesystem::temp_directory_path() / ("kmon-tls-test-" + std::to_string(getpid())))
            .string());
    std::filesystem::create_directories(*dir_);
    const std::string d = *dir_;
    for (const std::string name : {"server", "client"}) {
      RunCommand(
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
          "-subj /CN=" +
          name + " -keyout " + d + "/" + name + ".key -out " + d + "/" + name +
          ".crt >/dev/null 2>&1");
    }
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override {
    if (mg_check_feature(MG_FEATURES_TLS) == 0) return;  // the test checks the error instead
    ASSERT_TRUE(std::filesystem::exists(Path("server.crt"))) << "openssl CLI failed";
    ASSERT_TRUE(std::filesystem::exists(Path("client.crt"))) << "openssl CLI failed";
    ASSERT_TRUE(std::filesystem::exists(CompatLibrary())) << CompatLibrary();
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }
  static std::string CompatLibrary() {
    return std::string(KMON_BINARY_DIR) + "/libkmon_openssl_compat.so";
  }
  HttpServerOptions TlsOptions(WebConfig web) {
    HttpServerOptions o = LocalOptions();
    o.web = std::move(web);
    o.openssl_compat_library = CompatLibrary();
    return o;
  }
  WebConfig ServerCert() {
    WebConfig web;
    web.cert_file = Path("server.crt");
    web.key_file = Path("server.key");
    return web;
  }
  static std::string* dir_;
  FakeHooks fake_;
};
std::string* TlsTest::dir_ = nullptr;

TEST_F(TlsTest, ServesHttps) {
  auto s = HttpServer::Start(TlsOptions(ServerCert()), fake_.Hooks());
  if (mg_check_feature(MG_FEATURES_TLS) == 0) {
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().message(),
              "TLS requested in --web.config.file but civetweb was built without TLS");
    return;
  }
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->ListeningPorts().at(0);
  Request req;
  req.tls = true;
  const Response r = Fetch(port, "/metrics", req);
  EXPECT_EQ(r.status, 200) << r.curl_error;
  EXPECT_EQ(r.body, Serialize(TestFamilies(), ExpositionFormat::kText004));
  EXPECT_EQ(Fetch(port, "/metrics").status, 0) << "plain HTTP on the TLS port must fail";
}

TEST_F(TlsTest, MinVersionTls13RefusesTls12) {
  if (mg_check_feature(MG_FEATURES_TLS) == 0) GTEST_SKIP() << "civetweb without TLS";
  WebConfig web = ServerCert();
  web.min_version = "TLS13";
  auto s = HttpServer::Start(TlsOptions(web), fake_.Hooks());
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->ListeningPorts().at(0);
  Request tls12;
  tls12.tls = true;
  tls12.ssl_version =
      static_cast<long>(CURL_SSLVERSION_TLSv1_2) | static_cast<long>(CURL_SSLVERSION_MAX_TLSv1_2);
  EXPECT_EQ(Fetch(port, "/-/healthy", tls12).status, 0);
  Request tls13;
  tls13.tls = true;
  tls13.ssl_version = CURL_SSLVERSION_TLSv1_3;
  EXPECT_EQ(Fetch(port, "/-/healthy", tls13).status, 200);
}

TEST_F(TlsTest, RequireAndVerifyClientCert) {
  if (mg_check_feature(MG_FEATURES_TLS) == 0) GTEST_SKIP() << "civetweb without TLS";
  WebConfig web = ServerCert();
  web.client_auth_type = "RequireAndVerifyClientCert";
  web.client_ca_file = Path("client.crt");  // the self-signed client cert is its own CA
  auto s = HttpServer::Start(TlsOptions(web), fake_.Hooks());
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->ListeningPorts().at(0);
  Request anonymous;
  anonymous.tls = true;
  EXPECT_EQ(Fetch(port, "/-/healthy", anonymous).status, 0);
  Request wrong_cert = anonymous;  // a certificate the CA file does not vouch for
  wrong_cert.client_cert = Path("server.crt");
  wrong_cert.client_key = Path("server.key");
  EXPECT_EQ(Fetch(port, "/-/healthy", wrong_cert).status, 0);
  Request with_cert = anonymous;
  with_cert.client_cert = Path("client.crt");
  with_cert.client_key = Path("client.key");
  const Response r = Fetch(port, "/-/healthy", with_cert);
  EXPECT_EQ(r.status, 200) << r.curl_error;
  EXPECT_EQ(r.body, "OK");
}

TEST_F(TlsTest, UnreadableKeyNamesTheFile) {
  if (mg_check_feature(MG_FEATURES_TLS) == 0) GTEST_SKIP() << "civetweb without TLS";
  WebConfig web = ServerCert();
  web.key_file = Path("missing.key");
  auto s = HttpServer::Start(TlsOptions(web), fake_.Hooks());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.status().message(),
            "reading key_file " + Path("missing.key") + ": No such file or directory");
}

}  // namespace
}  // namespace kmon
