// The HTTP layer over real sockets: a server on 127.0.0.1:0 with fake hooks, driven by
// libcurl, asserting status codes, bodies and headers exactly.
#include "exporter/http_server.h"

#include <absl/strings/escaping.h>
#include <absl/strings/str_cat.h>
#include <crypt.h>
#include <curl/curl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/gzip.h"
#include "exporter/exposition.h"
#include "tests/http_test_client.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

class HttpServerTest : public HttpServerFixture {};

std::string Show(const absl::StatusOr<ListenAddress>& a) {
  if (!a.ok()) return a.status().ToString();
  return absl::StrCat(a->ipv6 ? "v6 " : "", "host=\"", a->host, "\" port=", a->port);
}

TEST(ParseListenAddress, Parses) {
  EXPECT_EQ(Show(ParseListenAddress(":9877")), "host=\"\" port=9877");
  EXPECT_EQ(Show(ParseListenAddress("127.0.0.1:9877")), "host=\"127.0.0.1\" port=9877");
  EXPECT_EQ(Show(ParseListenAddress("[::1]:9877")), "v6 host=\"::1\" port=9877");
  EXPECT_EQ(Show(ParseListenAddress("[::]:0")), "v6 host=\"::\" port=0");
  EXPECT_EQ(Show(ParseListenAddress("localhost:80")), "host=\"localhost\" port=80");
  EXPECT_EQ(Show(ParseListenAddress(":0")), "host=\"\" port=0");
  EXPECT_EQ(Show(ParseListenAddress(":65535")), "host=\"\" port=65535");
}

TEST(ParseListenAddress, RejectsMalformedAddresses) {
  for (const std::string bad :
       {"abc", "host:", ":99999", ":65536", "", ":", "1.2.3.4", "999.1.1.1:80", "::1:80", "[::1]",
        "[::1]80", "[nothost]:80", ":-1", ":80a", "bad_host:80", "[::1:80"}) {
    auto r = ParseListenAddress(bad);
    ASSERT_FALSE(r.ok()) << "accepted \"" << bad << "\" as " << Show(r);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("\"" + bad + "\""), absl::string_view::npos) << r.status();
  }
  EXPECT_EQ(ParseListenAddress(":99999").status().message(),
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
       {"Accept-Encoding: gzip", "Accept-Encoding: deflate, gzip;q=0.8, br", "Accept-Encoding: *",
        "Accept-Encoding: GZIP"}) {
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

TEST_F(HttpServerTest, HandlerExceptionsBecome500) {
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

// civetweb 1.15 as Debian builds it had no IPv6; libmicrohttpd does.
TEST(HttpServerStart, ServesOnIpv6) {
  FakeHooks fake;
  HttpServerOptions o = LocalOptions();
  o.listen_address = "[::1]:0";
  auto s = HttpServer::Start(o, fake.Hooks());
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->ListeningPorts().at(0);
  EXPECT_GT(port, 0);
  Request v6;
  v6.host = "[::1]";
  const Response r = Fetch(port, "/-/healthy", v6);
  EXPECT_EQ(r.status, 200) << r.curl_error;
  EXPECT_EQ(r.body, "OK");
  EXPECT_EQ(Fetch(port, "/-/healthy").status, 0) << "bound to ::1 only, not 127.0.0.1";
}

// --- TLS ---------------------------------------------------------------------------

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { certs_ = new TestCertificates; }
  static void TearDownTestSuite() { delete certs_; }
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(Path("server.crt"))) << "openssl CLI failed";
    ASSERT_TRUE(std::filesystem::exists(Path("client.crt"))) << "openssl CLI failed";
  }
  static std::string Path(const std::string& name) { return certs_->Path(name); }
  HttpServerOptions TlsOptions(WebConfig web) {
    HttpServerOptions o = LocalOptions();
    o.web = std::move(web);
    return o;
  }
  WebConfig ServerCert() { return certs_->ServerCert(); }
  static TestCertificates* certs_;
  FakeHooks fake_;
};
TestCertificates* TlsTest::certs_ = nullptr;

TEST_F(TlsTest, ServesHttps) {
  auto s = HttpServer::Start(TlsOptions(ServerCert()), fake_.Hooks());
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

// Every client_auth_type, as the exporter-toolkit means it: the statuses seen by a client
// without a certificate, with one client_ca_file does not vouch for, and with a good one
// (0: no HTTP answer at all).
TEST_F(TlsTest, ClientAuthTypes) {
  auto statuses = [&](const std::string& type) {
    WebConfig web = ServerCert();
    web.client_auth_type = type;
    web.client_ca_file = Path("client.crt");
    auto s = HttpServer::Start(TlsOptions(web), fake_.Hooks());
    if (!s.ok()) return s.status().ToString();
    const int port = (*s)->ListeningPorts().at(0);
    std::string out;
    for (const std::string cert : {"", "server", "client"}) {
      Request req;
      req.tls = true;
      if (!cert.empty()) {
        req.client_cert = Path(cert + ".crt");
        req.client_key = Path(cert + ".key");
      }
      absl::StrAppend(&out, out.empty() ? "" : " ", Fetch(port, "/-/healthy", req).status);
    }
    return out;
  };
  EXPECT_EQ(statuses("RequireAndVerifyClientCert"), "0 0 200");
  EXPECT_EQ(statuses("VerifyClientCertIfGiven"), "200 0 200");
  EXPECT_EQ(statuses("RequireAnyClientCert"), "0 200 200");
  EXPECT_EQ(statuses("RequestClientCert"), "200 200 200");
  EXPECT_EQ(statuses("NoClientCert"), "200 200 200");
}

TEST_F(TlsTest, UnreadableKeyNamesTheFile) {
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
