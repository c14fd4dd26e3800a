// HTTP test helpers over real sockets: a libcurl client that records status, headers and
// body, hooks a test can steer, and throwaway TLS certificates made with the openssl CLI.
#pragma once

#include <absl/strings/ascii.h>
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "exporter/http_server.h"

namespace kmon {

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
  std::string host = "127.0.0.1";  // "[::1]" for IPv6
  long timeout_ms = 20000;
};

inline size_t CollectBody(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

inline size_t CollectHeader(char* data, size_t size, size_t n, void* out) {
  const std::string line(data, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    auto* headers = static_cast<std::map<std::string, std::string>*>(out);
    (*headers)[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * n;
}

inline Response Fetch(int port, const std::string& path_and_query, const Request& req = {}) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  Response r;
  CURL* curl = curl_easy_init();
  const std::string url =
      (req.tls ? "https://" : "http://") + req.host + ":" + std::to_string(port) + path_and_query;
  curl_slist* headers = nullptr;
  for (const auto& h : req.headers) headers = curl_slist_append(headers, h.c_str());
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, req.timeout_ms);
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
inline std::vector<prometheus::MetricFamily> TestFamilies(int extra = 0) {
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

inline HttpServerOptions LocalOptions() {
  HttpServerOptions o;
  o.listen_address = "127.0.0.1:0";
  return o;
}

/// A server on 127.0.0.1:0 with FakeHooks.
class HttpServerFixture : public ::testing::Test {
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

inline int RunCommand(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Self-signed EC certificates "server" and "client" in a temporary directory.
class TestCertificates {
 public:
  TestCertificates()
      : dir_(
            (std::filesystem::temp_directory_path() / ("kmon-tls-test-" + std::to_string(getpid())))
                .string()) {
    std::filesystem::create_directories(dir_);
    for (const std::string name : {"server", "client"}) {
      RunCommand(
          "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
          "-subj /CN=" +
          name + " -keyout " + Path(name + ".key") + " -out " + Path(name + ".crt") +
          " >/dev/null 2>&1");
    }
  }
  ~TestCertificates() { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  WebConfig ServerCert() const {
    WebConfig web;
    web.cert_file = Path("server.crt");
    web.key_file = Path("server.key");
    return web;
  }

 private:
  std::string dir_;
};

}  // namespace kmon
