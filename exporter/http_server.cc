#include "exporter/http_server.h"

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <utility>

#include "base/log.h"
#include "exporter/exposition.h"
#include "exporter/mhd_server.h"

namespace kmon {
namespace {

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

}  // namespace

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

namespace {

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

absl::Status ErrnoError(int err, absl::string_view what) {
  return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", std::strerror(err)));
}

absl::Status ReadFile(const std::string& file, absl::string_view what, std::string* out) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return ErrnoError(errno, absl::StrCat("reading ", what, " ", file));
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return absl::OkStatus();
}

// The listening socket is ours: bind errors come back with their errno, hostnames resolve
// the same way everywhere, and the port is known before libmicrohttpd starts.
absl::StatusOr<int> Bind(const ListenAddress& a, const std::string& address, int* port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (a.host.empty()) {
    v4->sin_family = AF_INET;
    v4->sin_addr.s_addr = htonl(INADDR_ANY);
    len = sizeof *v4;
  } else if (a.ipv6) {
    v6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, a.host.c_str(), &v6->sin6_addr);  // checked by ParseListenAddress
    len = sizeof *v6;
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (const int rc = getaddrinfo(a.host.c_str(), nullptr, &hints, &res); rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("listen address ", address, ": resolving ", a.host, ": ", gai_strerror(rc)));
    }
    std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
    len = res->ai_addrlen;
    freeaddrinfo(res);
  }
  const bool is_v6 = ss.ss_family == AF_INET6;
  if (is_v6) {
    v6->sin6_port = htons(a.port);
  } else {
    v4->sin_port = htons(a.port);
  }
  const int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("listen address ", address, ": socket"));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (is_v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("listen address ", address, ": bind: ", std::strerror(err)));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  *port = ntohs(is_v6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                      : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return fd;
}

// Each open connection is a descriptor: make room for max_connections beside what kmon
// holds already (BPF maps and links, cgroup files), as Go's runtime does for every Go
// exporter by raising the soft limit to the hard one.
int FitConnectionLimit(int max_connections) {
  constexpr rlim_t kReserve = 256;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return max_connections;
  const rlim_t want = static_cast<rlim_t>(max_connections) + kReserve;
  if (rl.rlim_cur < want && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min(want, rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur >= want) return max_connections;
  const int fit = rl.rlim_cur > 2 * kReserve ? static_cast<int>(rl.rlim_cur - kReserve) : 64;
  LogWarn("open-file limit too low for the HTTP connection limit; lowering it",
          {{"nofile", std::to_string(rl.rlim_cur)}, {"max_connections", std::to_string(fit)}});
  return std::min(fit, max_connections);
}

class HttpServerImpl final : public HttpServer {
 public:
  explicit HttpServerImpl(std::optional<WebConfig> web) : web_(std::move(web)) {}
  ~HttpServerImpl() override {
    // Stop serving (waiting for running handlers) before the routes go away.
    server_.reset();
  }

  void Handle(const std::string& path, HttpHandler handler) override {
    std::unique_lock lock(routes_mutex_);
    routes_[path] = std::move(handler);
  }

  std::vector<int> ListeningPorts() const override { return {port_}; }

  void Serving(std::unique_ptr<MhdServer> server, int port) {
    server_ = std::move(server);
    port_ = port;
  }

  // On a worker thread. Nothing may escape into libmicrohttpd's C code.
  HttpResponse Serve(const HttpRequest& req) {
    try {
      return Route(req);
    } catch (const std::exception& e) {
      LogError("HTTP handler failed", {{"path", req.path}, {"err", e.what()}});
      return TextResponse(500, absl::StrCat("Internal Server Error: ", e.what()));
    } catch (...) {
      LogError("HTTP handler failed", {{"path", req.path}, {"err", "unknown exception"}});
      return TextResponse(500, "Internal Server Error");
    }
  }

 private:
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

  std::optional<WebConfig> web_;
  std::shared_mutex routes_mutex_;
  std::map<std::string, HttpHandler> routes_;
  int port_ = 0;
  std::unique_ptr<MhdServer> server_;  // last: destroyed first
};

absl::StatusOr<MhdTls> LoadTls(const WebConfig& web) {
  MhdTls tls;
  if (absl::Status s = ReadFile(web.cert_file, "cert_file", &tls.cert_pem); !s.ok()) return s;
  if (absl::Status s = ReadFile(web.key_file, "key_file", &tls.key_pem); !s.ok()) return s;
  // Clients are asked for certificates only when the policy looks at them. (The asking
  // comes with the trust list: a policy that wants a certificate without client_ca_file
  // never gets one, which is why the web config parser requires the file for them.)
  if (!web.client_ca_file.empty() && !web.client_auth_type.empty() &&
      web.client_auth_type != "NoClientCert") {
    absl::Status s = ReadFile(web.client_ca_file, "client_ca_file", &tls.client_ca_pem);
    if (!s.ok()) return s;
  }
  tls.client_auth_type = web.client_auth_type;
  tls.min_version = web.min_version;
  return tls;
}

void AddBuiltinRoutes(const HttpServerOptions& options, const HttpHooks& hooks,
                      HttpServerImpl* server) {
  server->Handle(options.telemetry_path, [gather = hooks.gather](const HttpRequest& req) {
    if (!IsGetOrHead(req)) return MethodNotAllowed("GET, HEAD");
    const ExpositionFormat format = NegotiateFormat(Header(req, "accept"));
    HttpResponse r;
    try {
      // One pass from the families to the text, into a buffer an earlier scrape grew.
      r.body = ResponseBuffers().Take();
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
}

}  // namespace

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
  if (options.max_requests < 1 || options.max_connections < 1) {
    return absl::InvalidArgumentError(
        "HttpServer::Start: max_requests and max_connections must be at least 1");
  }
  if (options.header_timeout.count() <= 0 || options.idle_timeout.count() <= 0) {
    return absl::InvalidArgumentError("HttpServer::Start: timeouts must be positive");
  }
  absl::StatusOr<ListenAddress> address = ParseListenAddress(options.listen_address);
  if (!address.ok()) return address.status();

  MhdServerOptions mhd;
  mhd.ipv6 = address->ipv6;
  mhd.max_requests = options.max_requests;
  mhd.max_connections = FitConnectionLimit(options.max_connections);
  mhd.header_timeout = options.header_timeout;
  mhd.idle_timeout = options.idle_timeout;
  mhd.probe_paths = {"/-/healthy", "/-/ready"};
  if (options.web.has_value() && options.web->tls()) {
    absl::StatusOr<MhdTls> tls = LoadTls(*options.web);
    if (!tls.ok()) return tls.status();
    mhd.tls = std::move(*tls);
  }

  // Routes go in before the port opens, so no early request sees a 404.
  auto server = std::make_unique<HttpServerImpl>(options.web);
  AddBuiltinRoutes(options, hooks, server.get());
  int port = 0;
  absl::StatusOr<int> fd = Bind(*address, options.listen_address, &port);
  if (!fd.ok()) return fd.status();
  mhd.listen_fd = *fd;
  absl::StatusOr<std::unique_ptr<MhdServer>> mhd_server = MhdServer::Start(
      std::move(mhd), [impl = server.get()](const HttpRequest& req) { return impl->Serve(req); });
  if (!mhd_server.ok()) {
    return absl::Status(mhd_server.status().code(),
                        absl::StrCat("listen address ", options.listen_address, ": ",
                                     mhd_server.status().message()));
  }
  server->Serving(std::move(*mhd_server), port);
  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace kmon
