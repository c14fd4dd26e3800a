#include "exporter/http_server.h"

#include <CivetServer.h>
#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <arpa/inet.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <string_view>
#include <utility>

#include "base/buffer_pool.h"
#include "base/gzip.h"
#include "base/log.h"
#include "exporter/exposition.h"

namespace kmon {
namespace {

struct ListenAddress {
  std::string host;  // empty: every interface
  int port = 0;
  bool ipv6 = false;
};

absl::Status BadAddress(const std::string& address, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("invalid listen address \"", address, "\": ", why,
                                                 " (want host:port, :port or [v6-address]:port)"));
}

bool IsHostname(absl::string_view host) {
  for (absl::string_view label : absl::StrSplit(host, '.')) {
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      if (!absl::ascii_isalnum(c) && c != '-') return false;
    }
  }
  return true;
}

absl::StatusOr<ListenAddress> ParseListenAddress(const std::string& address) {
  ListenAddress out;
  absl::string_view port;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == std::string::npos) return BadAddress(address, "missing ']'");
    out.host = address.substr(1, close - 1);
    out.ipv6 = true;
    in6_addr a6;
    if (inet_pton(AF_INET6, out.host.c_str(), &a6) != 1) {
      return BadAddress(address, "not an IPv6 address between the brackets");
    }
    if (close + 1 >= address.size() || address[close + 1] != ':') {
      return BadAddress(address, "missing port");
    }
    port = absl::string_view(address).substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return BadAddress(address, "missing port");
    out.host = address.substr(0, colon);
    port = absl::string_view(address).substr(colon + 1);
    if (out.host.find(':') != std::string::npos) {
      return BadAddress(address, "IPv6 addresses go in brackets");
    }
    if (!out.host.empty()) {
      const bool dotted = out.host.find_first_not_of("0123456789.") == std::string::npos;
      in_addr a4;
      if (dotted ? inet_pton(AF_INET, out.host.c_str(), &a4) != 1 : !IsHostname(out.host)) {
        return BadAddress(address, absl::StrCat("bad host \"", out.host, "\""));
      }
    }
  }
  if (port.empty()) return BadAddress(address, "missing port");
  if (port.size() > 5 || port.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(port, &out.port) || out.port > 65535) {
    return BadAddress(address, absl::StrCat("bad port \"", port, "\" (want 0-65535)"));
  }
  return out;
}

// civetweb reports why mg_start failed only through the log_message callback, while the
// CivetServer constructor throws a generic "null context" exception. During Start the
// starting thread points this at a buffer, so the error can carry civetweb's reason.
thread_local std::vector<std::string>* start_messages = nullptr;

int LogCivetMessage(const mg_connection* /*conn*/, const char* message) {
  if (start_messages != nullptr) {
    start_messages->emplace_back(message);
  } else {
    LogWarn("civetweb", {{"msg", message}});
  }
  return 1;  // handled: civetweb prints nothing itself
}

HttpResponse TextResponse(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse MethodNotAllowed(std::string allow) {
  HttpResponse r = TextResponse(405, "Method Not Allowed");
  r.headers["Allow"] = std::move(allow);
  return r;
}

bool IsGetOrHead(const HttpRequest& req) { return req.method == "GET" || req.method == "HEAD"; }

std::string Header(const HttpRequest& req, const std::string& lower_name) {
  const auto it = req.headers.find(lower_name);
  return it == req.headers.end() ? std::string() : it->second;
}

HttpRequest ReadRequest(mg_connection* conn) {
  const mg_request_info* ri = mg_get_request_info(conn);
  HttpRequest req;
  req.method = ri->request_method != nullptr ? ri->request_method : "";
  req.path = ri->local_uri != nullptr ? ri->local_uri : "/";
  if (ri->query_string != nullptr) {
    for (absl::string_view pair : absl::StrSplit(ri->query_string, '&', absl::SkipEmpty())) {
      const size_t eq = pair.find('=');
      const absl::string_view raw_key = pair.substr(0, eq);
      const absl::string_view raw_value =
          eq == absl::string_view::npos ? absl::string_view() : pair.substr(eq + 1);
      std::string key, value;
      CivetServer::urlDecode(raw_key.data(), raw_key.size(), key, true);
      CivetServer::urlDecode(raw_value.data(), raw_value.size(), value, true);
      req.query.emplace(std::move(key), std::move(value));  // the first one wins
    }
  }
  for (int i = 0; i < ri->num_headers; ++i) {
    const mg_header& h = ri->http_headers[i];
    if (h.name == nullptr) continue;
    std::string name = absl::AsciiStrToLower(h.name);
    const std::string value = h.value != nullptr ? h.value : "";
    auto [it, inserted] = req.headers.emplace(std::move(name), value);
    if (!inserted) absl::StrAppend(&it->second, ", ", value);  // RFC 9110 5.3
  }
  return req;
}

bool SafeHeaderValue(absl::string_view s) { return s.find_first_of("\r\n") == std::string::npos; }

// Below this a gzip header and trailer (18 bytes) eat most of what deflate saves.
constexpr size_t kMinGzipBody = 256;

// Bodies of this size or more are scrapes worth giving memory back after (about 4k
// series of text); below, what they leave in the heap is not worth the walk.
constexpr size_t kTrimAfterBody = 512 * 1024;

// `gzip_buffers` lends the compressed body's buffer.
void WriteResponse(mg_connection* conn, const HttpRequest& req, const HttpResponse& resp,
                   BufferPool* gzip_buffers) {
  // gzip for clients that take it (Prometheus sends "Accept-Encoding: gzip" on
  // every scrape): a scrape of 20k series is ~2.5 MB of text, ~10x less gzipped.
  std::string gzipped;
  if (resp.compressible && resp.body.size() >= kMinGzipBody &&
      AcceptsGzip(Header(req, "accept-encoding"))) {
    gzipped = gzip_buffers->Take();
    absl::Status gz = GzipInto(resp.body, kGzipFastest, &gzipped);
    if (!gz.ok()) {
      gzipped.clear();
      LogWarn("gzip failed; sending the response uncompressed", {{"err", gz.ToString()}});
    }
  }
  const bool gzip = !gzipped.empty();
  const std::string& body = gzip ? gzipped : resp.body;
  mg_response_header_start(conn, resp.status);
  mg_response_header_add(conn, "Content-Type", resp.content_type.c_str(), -1);
  for (const auto& [name, value] : resp.headers) {
    // Content-Length is ours to set; CR/LF in a handler's header would split the response.
    if (absl::EqualsIgnoreCase(name, "content-length") || !SafeHeaderValue(name) ||
        !SafeHeaderValue(value)) {
      continue;
    }
    mg_response_header_add(conn, name.c_str(), value.c_str(), -1);
  }
  if (resp.compressible) mg_response_header_add(conn, "Vary", "Accept-Encoding", -1);
  if (gzip) mg_response_header_add(conn, "Content-Encoding", "gzip", -1);
  const std::string length = std::to_string(body.size());
  mg_response_header_add(conn, "Content-Length", length.c_str(), -1);
  mg_response_header_send(conn);
  if (req.method != "HEAD" && !body.empty()) mg_write(conn, body.data(), body.size());
  if (gzip) gzip_buffers->Give(std::move(gzipped));
}

// Cert and key in one PEM: civetweb 1.15 has no separate key option and reads both from
// `ssl_certificate`. The file is mode 0600 (mkstemp) and removed once civetweb has read it.
class CombinedPem {
 public:
  ~CombinedPem() { Remove(); }
  absl::Status Write(const std::string& cert_file, const std::string& key_file) {
    std::string cert, key;
    if (absl::Status s = ReadAll(cert_file, "cert_file", &cert); !s.ok()) return s;
    if (absl::Status s = ReadAll(key_file, "key_file", &key); !s.ok()) return s;
    std::string tmpl = (std::filesystem::temp_directory_path() / "kmon-tls-XXXXXX").string();
    const int fd = mkstemp(tmpl.data());
    if (fd < 0) {
      const int err = errno;
      return absl::Status(absl::ErrnoToStatusCode(err),
                          absl::StrCat("creating ", tmpl, ": ", std::strerror(err)));
    }
    path_ = tmpl;
    // The certificate (and its chain) first: civetweb takes the first certificate in the
    // file as the server's, and OpenSSL finds the key wherever it is.
    const std::string pem =
        absl::StrCat(cert, cert.empty() || cert.back() == '\n' ? "" : "\n", key);
    size_t done = 0;
    while (done < pem.size()) {
      const ssize_t n = ::write(fd, pem.data() + done, pem.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = errno;
        ::close(fd);
        return absl::Status(absl::ErrnoToStatusCode(err),
                            absl::StrCat("writing ", path_, ": ", std::strerror(err)));
      }
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    return absl::OkStatus();
  }
  const std::string& path() const { return path_; }
  void Remove() {
    if (!path_.empty()) ::unlink(path_.c_str());
    path_.clear();
  }

 private:
  static absl::Status ReadAll(const std::string& file, absl::string_view what, std::string* out) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      const int err = errno;
      return absl::Status(absl::ErrnoToStatusCode(err),
                          absl::StrCat("reading ", what, " ", file, ": ", std::strerror(err)));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    *out = ss.str();
    return absl::OkStatus();
  }
  std::string path_;
};

// exporter-toolkit min_version -> civetweb ssl_protocol_version (2: TLS 1.0+, 3: TLS 1.1+,
// 4: TLS 1.2+, 5: TLS 1.3 only; checked against civetweb 1.15 with openssl s_client).
const char* CivetProtocolVersion(const std::string& min_version) {
  if (min_version == "TLS10") return "2";
  if (min_version == "TLS11") return "3";
  if (min_version == "TLS13") return "5";
  return "4";  // TLS12, the exporter-toolkit default
}

const char* CivetVerifyPeer(const std::string& client_auth_type) {
  if (client_auth_type == "RequireAndVerifyClientCert") return "yes";
  if (client_auth_type == "VerifyClientCertIfGiven") return "optional";
  return "no";
}

class HttpServerImpl;

// The one civetweb handler, on "/" (which civetweb matches for every URI): routing,
// basic auth and exception containment happen here, where every path gets them alike.
class Dispatcher final : public CivetHandler {
 public:
  explicit Dispatcher(HttpServerImpl* server) : server_(server) {}

  using CivetHandler::handleDelete;
  using CivetHandler::handleGet;
  using CivetHandler::handleHead;
  using CivetHandler::handleOptions;
  using CivetHandler::handlePatch;
  using CivetHandler::handlePost;
  using CivetHandler::handlePut;
  bool handleGet(CivetServer*, mg_connection* c, int* status) override { return Serve(c, status); }
  bool handlePost(CivetServer*, mg_connection* c, int* status) override { return Serve(c, status); }
  bool handleHead(CivetServer*, mg_connection* c, int* status) override { return Serve(c, status); }
  bool handlePut(CivetServer*, mg_connection* c, int* status) override { return Serve(c, status); }
  bool handleDelete(CivetServer*, mg_connection* c, int* status) override {
    return Serve(c, status);
  }
  bool handleOptions(CivetServer*, mg_connection* c, int* status) override {
    return Serve(c, status);
  }
  bool handlePatch(CivetServer*, mg_connection* c, int* status) override {
    return Serve(c, status);
  }

 private:
  bool Serve(mg_connection* conn, int* status);
  HttpServerImpl* server_;
};

class HttpServerImpl final : public HttpServer {
 public:
  HttpServerImpl(std::optional<WebConfig> web, std::string metrics_path)
      : web_(std::move(web)), metrics_path_(std::move(metrics_path)), dispatcher_(this) {}
  ~HttpServerImpl() override {
    // Stop civetweb (joining its threads) before the routes and dispatcher go away.
    server_.reset();
  }

  void Handle(const std::string& path, HttpHandler handler) override {
    std::unique_lock lock(routes_mutex_);
    routes_[path] = std::move(handler);
  }

  std::vector<int> ListeningPorts() const override { return ports_; }

  absl::Status Listen(const std::vector<std::string>& options, const std::string& address) {
    CivetCallbacks callbacks;
    callbacks.log_message = &LogCivetMessage;
    std::vector<std::string> messages;
    start_messages = &messages;
    try {
      server_ = std::make_unique<CivetServer>(options, &callbacks);
    } catch (const CivetException& e) {
      start_messages = nullptr;
      if (messages.empty()) messages.emplace_back(e.what());
      return absl::UnavailableError(
          absl::StrCat("listen address ", address, ": ", absl::StrJoin(messages, "; ")));
    }
    start_messages = nullptr;
    server_->addHandler("/", dispatcher_);
    ports_ = server_->getListeningPorts();
    return absl::OkStatus();
  }

  /// A scrape's text buffer, lent by the pool.
  std::string TakeMetricsBuffer() { return metrics_buffers_.Take(); }
  BufferPool* gzip_buffers() { return &gzip_buffers_; }

  /// After a response went out: a scrape's buffer goes back to the pool, and after a
  /// large one, or one that freed a buffer a burst had grown, the heap's free pages
  /// go back to the kernel (the families and labels of thousands of series, freed).
  void Sent(const HttpRequest& req, HttpResponse* resp) {
    if (req.path != metrics_path_ || resp->status != 200) return;
    const bool large = resp->body.size() >= kTrimAfterBody;
    const size_t freed = metrics_buffers_.Give(std::move(resp->body));
    if (large || freed >= kTrimAfterBody) ReturnFreeMemory();
  }

  HttpResponse Route(const HttpRequest& req) {
    if (web_.has_value() && !web_->basic_auth_users.empty() &&
        !CheckBasicAuth(*web_, Header(req, "authorization"))) {
      HttpResponse r = TextResponse(401, "Unauthorized");
      r.headers["WWW-Authenticate"] = "Basic realm=\"kmon\"";
      return r;
    }
    HttpHandler handler;
    {
      std::shared_lock lock(routes_mutex_);
      const auto it = routes_.find(req.path);
      if (it != routes_.end()) handler = it->second;
    }
    if (!handler) return TextResponse(404, "Not Found");
    return handler(req);
  }

 private:
  std::optional<WebConfig> web_;
  const std::string metrics_path_;
  BufferPool metrics_buffers_, gzip_buffers_;
  std::shared_mutex routes_mutex_;
  std::map<std::string, HttpHandler> routes_;
  Dispatcher dispatcher_;
  std::vector<int> ports_;
  std::unique_ptr<CivetServer> server_;  // last: destroyed first
};

bool Dispatcher::Serve(mg_connection* conn, int* status) {
  // Nothing may escape into civetweb's C code: an exception there ends the process.
  HttpRequest req;
  HttpResponse resp;
  try {
    req = ReadRequest(conn);
    resp = server_->Route(req);
  } catch (const std::exception& e) {
    LogError("HTTP handler failed", {{"path", req.path}, {"err", e.what()}});
    resp = TextResponse(500, absl::StrCat("Internal Server Error: ", e.what()));
  } catch (...) {
    LogError("HTTP handler failed", {{"path", req.path}, {"err", "unknown exception"}});
    resp = TextResponse(500, "Internal Server Error");
  }
  try {
    WriteResponse(conn, req, resp, server_->gzip_buffers());
    server_->Sent(req, &resp);
  } catch (...) {
    // Out of memory while writing: the client sees a cut connection; civetweb lives on.
  }
  *status = resp.status;
  return true;
}

absl::Status LoadOpenSslCompat(const std::string& path) {
  static std::mutex mu;
  static std::string loaded;
  std::lock_guard lock(mu);
  if (loaded == path) return absl::OkStatus();
  // Never dlclose()d: civetweb keeps function pointers into it for the process lifetime.
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr) {
    const char* err = dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat("loading OpenSSL compat library: ", err != nullptr ? err : path));
  }
  loaded = path;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> CivetListeningPorts(const std::string& listen_address, bool tls) {
  absl::StatusOr<ListenAddress> a = ParseListenAddress(listen_address);
  if (!a.ok()) return a.status();
  std::string out;
  if (a->host.empty()) {
    out = std::to_string(a->port);
  } else if (a->ipv6) {
    out = absl::StrCat("[", a->host, "]:", a->port);
  } else {
    out = absl::StrCat(a->host, ":", a->port);
  }
  if (tls) out += 's';
  return out;
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              HttpHooks hooks) {
  if (!hooks.gather || !hooks.ready || !hooks.reload || !hooks.landing_page) {
    return absl::InvalidArgumentError(
        "HttpServer::Start: hooks gather, ready, reload and landing_page are all required");
  }
  const std::string& metrics_path = options.telemetry_path;
  if (!absl::StartsWith(metrics_path, "/") || metrics_path == "/" ||
      absl::StartsWith(metrics_path, "/-/")) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid telemetry path \"", metrics_path,
                     "\": want an absolute path other than / and /-/*"));
  }
  if (options.num_threads < 1) {
    return absl::InvalidArgumentError("HttpServer::Start: num_threads must be at least 1");
  }

  const bool tls = options.web.has_value() && options.web->tls();
  absl::StatusOr<std::string> ports = CivetListeningPorts(options.listen_address, tls);
  if (!ports.ok()) return ports.status();
  if (absl::StartsWith(options.listen_address, "[") && mg_check_feature(MG_FEATURES_IPV6) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("listen address ", options.listen_address,
                     ": this civetweb was built without IPv6 support"));
  }

  std::vector<std::string> civet_options = {
      "listening_ports",
      *ports,
      "num_threads",
      std::to_string(options.num_threads),
      // civetweb gives each connection a worker thread for as long as it stays open, so
      // keep-alive would let a few idle scrapers hold every thread; one request each.
      "enable_keep_alive",
      "no",
  };
  CombinedPem pem;
  if (tls) {
    if (mg_check_feature(MG_FEATURES_TLS) == 0) {
      return absl::FailedPreconditionError(
          "TLS requested in --web.config.file but civetweb was built without TLS");
    }
    if (!options.openssl_compat_library.empty()) {
      if (absl::Status s = LoadOpenSslCompat(options.openssl_compat_library); !s.ok()) return s;
    }
    if (absl::Status s = pem.Write(options.web->cert_file, options.web->key_file); !s.ok()) {
      return s;
    }
    civet_options.insert(civet_options.end(),
                         {"ssl_certificate", pem.path(), "ssl_protocol_version",
                          CivetProtocolVersion(options.web->min_version), "ssl_verify_peer",
                          CivetVerifyPeer(options.web->client_auth_type),
                          // Trust only client_ca_file, not every CA the system trusts.
                          "ssl_default_verify_paths", "no"});
    if (!options.web->client_ca_file.empty()) {
      civet_options.insert(civet_options.end(), {"ssl_ca_file", options.web->client_ca_file});
    }
  }

  // Routes go in before the port opens, so no early request sees a 404.
  auto server = std::make_unique<HttpServerImpl>(options.web, metrics_path);
  // The server owns its routes, so the pointer outlives the handler.
  server->Handle(
      metrics_path, [gather = hooks.gather, impl = server.get()](const HttpRequest& req) {
        if (!IsGetOrHead(req)) return MethodNotAllowed("GET, HEAD");
        const ExpositionFormat format = NegotiateFormat(Header(req, "accept"));
        HttpResponse r;
        try {
          // One pass from the families to the text, into last scrape's buffer.
          r.body = impl->TakeMetricsBuffer();
          SerializeInto(gather(), format, &r.body);
        } catch (const std::exception& e) {
          LogError("gathering metrics failed", {{"err", e.what()}});
          return TextResponse(
              500, absl::StrCat("An error has occurred while serving metrics:\n\n", e.what()));
        }
        r.content_type = std::string(ContentType(format));
        r.compressible = true;
        return r;
      });
  server->Handle("/", [landing = hooks.landing_page](const HttpRequest& req) {
    if (!IsGetOrHead(req)) return MethodNotAllowed("GET, HEAD");
    HttpResponse r;
    r.content_type = "text/html; charset=utf-8";
    r.body = landing();
    return r;
  });
  server->Handle("/-/healthy", [](const HttpRequest& req) {
    if (!IsGetOrHead(req)) return MethodNotAllowed("GET, HEAD");
    return TextResponse(200, "OK");
  });
  server->Handle("/-/ready", [ready = hooks.ready](const HttpRequest& req) {
    if (!IsGetOrHead(req)) return MethodNotAllowed("GET, HEAD");
    return ready() ? TextResponse(200, "Ready") : TextResponse(503, "Not ready");
  });
  server->Handle("/-/reload", [reload = hooks.reload,
                               enabled = options.enable_lifecycle](const HttpRequest& req) {
    if (req.method != "POST") return MethodNotAllowed("POST");
    if (!enabled) {
      return TextResponse(403,
                          "Lifecycle API is not enabled: start kmon_exporter with "
                          "--web.enable-lifecycle to reload over HTTP (SIGHUP and a change "
                          "of the config file always reload)");
    }
    const absl::Status s = reload();
    if (!s.ok()) return TextResponse(500, std::string(s.message()));
    return TextResponse(200, "OK");
  });
  absl::Status listening = server->Listen(civet_options, options.listen_address);
  pem.Remove();  // civetweb has read it (or failed); the key need not stay on disk
  if (!listening.ok()) {
    if (tls && absl::StrContains(listening.message(), "load_tls_dll")) {
      return absl::FailedPreconditionError(absl::StrCat(
          listening.message(),
          " — civetweb could not use this system's OpenSSL. Debian 12's civetweb 1.15 is "
          "built for the OpenSSL 1.1 API and needs the OpenSSL 3 compat library "
          "(HttpServerOptions::openssl_compat_library) and the libssl.so/libcrypto.so "
          "names from libssl-dev"));
    }
    return listening;
  }

  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace kmon
