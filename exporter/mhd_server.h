// The event-driven half of kmon's HTTP server, on libmicrohttpd: one epoll thread owns every
// socket (accept, TLS handshakes, reading requests, writing responses), so an idle or stalled
// connection costs a few KiB and no thread. Each complete request is taken off that thread
// (its connection suspended) and run on a bounded WorkerPool; beyond the pool's limit the
// answer is 503 at once. http_server.cc does the routing; this file the transport.
#pragma once

#include <absl/status/statusor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "base/buffer_pool.h"
#include "base/http_types.h"

namespace kmon {

struct MhdTls {
  std::string cert_pem;  // the server's certificate, then its chain
  std::string key_pem;
  std::string client_ca_pem;     // empty: no client certificates are asked for
  std::string client_auth_type;  // exporter-toolkit names; "" as NoClientCert
  std::string min_version;       // "TLS10" ... "TLS13"; "" as TLS12
};

struct MhdServerOptions {
  int listen_fd = -1;  // bound and listening; the server owns it from Start on
  bool ipv6 = false;
  std::optional<MhdTls> tls;
  int max_connections = 1024;  // open sockets; one more is closed as soon as it is accepted
  int max_requests = 40;       // handlers running at once, beyond: 503
  /// Requests to these paths run in a pool of their own of `probe_requests` (health and
  /// readiness probes must answer while max_requests scrapes are in flight).
  std::set<std::string> probe_paths;
  int probe_requests = 4;
  /// From accept (or the end of the previous response) until the request line and headers
  /// are in, TLS handshake included; then as long again for the body. Past it the
  /// connection is closed: a slow sender cannot keep a socket forever.
  std::chrono::milliseconds header_timeout = std::chrono::seconds(10);
  /// A kept-alive connection waits this long for its next request; also the longest
  /// silence while reading a request or writing a response.
  std::chrono::milliseconds idle_timeout = std::chrono::seconds(60);
};

class MhdServer {
 public:
  /// Runs on a worker thread for each request; must not throw.
  using Router = std::function<HttpResponse(const HttpRequest&)>;
  /// Error: FailedPrecondition with libmicrohttpd's reason (e.g. a key GnuTLS cannot read).
  static absl::StatusOr<std::unique_ptr<MhdServer>> Start(MhdServerOptions options, Router router);
  /// Stops accepting, waits for running handlers, closes every connection.
  virtual ~MhdServer() = default;
};

/// Buffers for response bodies, kept from one scrape to the next: a handler that builds
/// a large body (/metrics) takes one here; the server gives it back once it is sent.
BufferPool& ResponseBuffers();

/// Decodes %XX escapes, and '+' as a space when `form` is set (query strings). A malformed
/// escape is kept as it is.
std::string PercentDecode(std::string_view s, bool form);

}  // namespace kmon
