// The HTTP side of the exporter: /metrics (text or OpenMetrics), the landing page, health
// and readiness, reload, and extra handlers that later collectors register
// (/api/v1/topology, /debug/offcpu). TLS and basic auth come from --web.config.file
// (exporter-toolkit format). Served by libmicrohttpd on one event thread (exporter/
// mhd_server.h): idle or stalled connections hold no thread, handlers run on a bounded pool.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <prometheus/metric_family.h>

#include <chrono>
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
  /// --web.max-requests: handlers running at once; one more request is answered 503 at
  /// once, unqueued. /-/healthy and /-/ready have a reserve of their own beside it, so the
  /// probes answer while max_requests scrapes are in flight.
  int max_requests = 40;
  /// Open connections, idle ones included; one more is closed as soon as it is accepted.
  int max_connections = 1024;
  /// The request line and headers (TLS handshake included) must be in this long after the
  /// connection opens, and the body as long again after them; else the connection is closed.
  std::chrono::milliseconds header_timeout = std::chrono::seconds(10);
  /// Keep-alive: how long a connection waits for its next request; also the longest silence
  /// while reading a request or writing a response.
  std::chrono::milliseconds idle_timeout = std::chrono::seconds(60);
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
  /// for a malformed address or option, Unavailable when the address cannot be bound, e.g.
  /// the port is taken; NotFound and the like for an unreadable TLS file; FailedPrecondition
  /// when GnuTLS refuses the key pair). Every hook is required.
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

struct ListenAddress {
  std::string host;  // empty: every IPv4 interface
  int port = 0;
  bool ipv6 = false;  // host is an IPv6 address ("[::1]:port")
};

/// Parses "host:port" / ":port" / "[v6]:port". InvalidArgument for a malformed address.
absl::StatusOr<ListenAddress> ParseListenAddress(const std::string& listen_address);

}  // namespace kmon
