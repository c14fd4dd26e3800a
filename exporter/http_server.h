// The HTTP side of the exporter, on civetweb: /metrics (text or OpenMetrics),
// the landing page, health and readiness, reload, and extra handlers that later
// collectors register (/api/v1/topology, /debug/offcpu). TLS and basic auth come
// from --web.config.file (exporter-toolkit format).
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <prometheus/metric_family.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/http_types.h"
#include "exporter/web_config.h"

namespace kmon {

struct HttpServerOptions {
  std::string listen_address = ":9877";  // host:port, ":port", "[::1]:port"
  std::string telemetry_path = "/metrics";
  std::optional<WebConfig> web;  // TLS and basic auth
  /// --web.enable-lifecycle: POST /-/reload calls the reload hook. Off (the default, as in
  /// Prometheus) it answers 403: whoever may scrape need not be able to make kmon act.
  bool enable_lifecycle = false;
  int num_threads = 4;
  /// With TLS: a library loaded before civetweb first reaches for OpenSSL. Debian 12's
  /// civetweb 1.15 is built for the OpenSSL 1.1 API: it dlopen()s "libssl.so" and looks up
  /// SSL_get_peer_certificate, which OpenSSL 3 renamed, so HTTPS cannot start. A tiny
  /// library whose SONAME is "libssl.so", linked to libssl.so.3 and defining that one
  /// function, fixes it: glibc's dlopen() matches the name against the SONAMEs of loaded
  /// objects and hands civetweb the compat library, whose dependencies supply the rest.
  /// Empty: load nothing.
  std::string openssl_compat_library;
};

struct HttpHooks {
  /// Gathers every family for one scrape; must not throw.
  std::function<std::vector<prometheus::MetricFamily>()> gather;
  /// /-/ready: true when every enabled collector has attached.
  std::function<bool()> ready;
  /// POST /-/reload (with enable_lifecycle): re-reads the config; an error status is answered
  /// with 500 and its message.
  std::function<absl::Status()> reload;
  /// The landing page's HTML body.
  std::function<std::string()> landing_page;
};

class HttpServer {
 public:
  /// Binds and starts serving; an error names the address and the reason (InvalidArgument
  /// for a malformed address or option, Unavailable when civetweb cannot bind, e.g. the
  /// port is taken; FailedPrecondition when TLS or IPv6 is missing). Every hook is required.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           HttpHooks hooks);
  virtual ~HttpServer() = default;
  /// Adds a handler for an exact path, replacing any earlier one. Every method reaches it
  /// (it answers 405 itself for those it does not take); basic auth, when configured, has
  /// already been checked; an exception it throws becomes a 500. Safe after Start.
  virtual void Handle(const std::string& path, HttpHandler handler) = 0;
  /// The ports actually bound (useful with port 0).
  virtual std::vector<int> ListeningPorts() const = 0;
};

/// Translates "host:port" / ":port" / "[v6]:port" into civetweb's listening_ports
/// syntax, with the 's' suffix when `tls` is set. Error for a malformed address.
absl::StatusOr<std::string> CivetListeningPorts(const std::string& listen_address, bool tls);

}  // namespace kmon
