// A minimal Kubernetes API client on libcurl: where the API is and how to
// authenticate (in-cluster service account or a kubeconfig), one-shot GETs and
// streaming GETs (watches) that a stop flag ends within a fraction of a second.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/strict_yaml.h"

namespace kmon {

/// Where the API server is and how to talk to it. Exactly one way of each kind
/// is meant to be set (a file or inline data); inline data wins when both are.
struct KubeEndpoint {
  /// "https://10.96.0.1:443"; plain "http://" works too (tests, kubectl proxy).
  std::string server;
  /// The CA bundle that signs the server's certificate: a PEM file or PEM text.
  /// Both empty: the system's trust store.
  std::string ca_file;
  std::string ca_data;
  bool insecure_skip_tls_verify = false;
  /// A bearer token file, re-read when its mtime or size changes (projected
  /// service-account tokens are rotated by the kubelet), or a fixed token.
  std::string token_file;
  std::string token;
  /// A client certificate and its key: PEM files or PEM text.
  std::string client_cert_file;
  std::string client_cert_data;
  std::string client_key_file;
  std::string client_key_data;
};

/// True when the process runs in a pod (KUBERNETES_SERVICE_HOST and _PORT are
/// set, as the kubelet does for every container): `kubernetes.enabled: auto`.
bool InCluster(const EnvLookup& env);

/// The in-cluster endpoint: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
/// with the service account's token and CA from `sa_dir`. An error names what is
/// missing (a variable, the token file, the CA file).
absl::StatusOr<KubeEndpoint> InClusterEndpoint(
    const EnvLookup& env, std::string sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");

/// The endpoint of `context` (empty: current-context) in a kubeconfig file.
/// Relative file names in it are relative to the kubeconfig's directory, as with
/// kubectl. exec and auth-provider credential plugins are not supported: an error
/// says so rather than connecting without credentials.
absl::StatusOr<KubeEndpoint> KubeconfigEndpoint(const std::string& path,
                                                const std::string& context = "");

/// The service account a token belongs to ("namespace/name"), read from its JWT
/// claims without verifying them; empty when the token is not a service-account JWT.
std::string ServiceAccountOfToken(const std::string& token);

/// Percent-encodes a query parameter value (field selectors, continue tokens).
std::string QueryEscape(std::string_view value);

/// The HTTP status an error returned by KubeApiClient carries; 0 when it has none
/// (the request never got an answer).
int HttpStatusOf(const absl::Status& status);

/// The error for a non-2xx answer to `what` ("GET https://..."): the canonical code
/// that fits the status (401 Unauthenticated, 403 PermissionDenied, ...), the
/// message of the v1.Status in `body`, and `status` for HttpStatusOf().
absl::Status KubeHttpError(int status, const std::string& what, const std::string& body);

/// One complete answer: any HTTP status is a response, not an error.
struct KubeResponse {
  int status = 0;
  std::string body;
};

/// Options of a streaming GET.
struct KubeStreamOptions {
  /// Called once the server has answered 2xx, before the first chunk: the stream
  /// is open (a watch may send nothing for minutes).
  std::function<void()> on_open;
  /// The stream is given up as dead when no byte arrived for this long (0: never).
  /// TCP keepalive notices a vanished peer; this notices a peer that is there but
  /// silent for longer than it promised to be.
  std::chrono::milliseconds idle_timeout{0};
};

struct KubeClientOptions {
  std::chrono::milliseconds connect_timeout{10'000};
  /// How often a transfer in progress looks at its stop flag: the bound on how
  /// long Stop() of a caller waits for a request in flight.
  std::chrono::milliseconds stop_poll{100};
};

/// Talks to one API server. Every call uses its own connection, so calls from
/// several threads at once are safe; the token cache is shared under a lock.
class KubeApiClient {
 public:
  explicit KubeApiClient(KubeEndpoint endpoint, KubeClientOptions options = {});
  ~KubeApiClient();
  KubeApiClient(const KubeApiClient&) = delete;
  KubeApiClient& operator=(const KubeApiClient&) = delete;

  const KubeEndpoint& endpoint() const { return endpoint_; }

  /// GET `path_and_query` ("/api/v1/pods?limit=500"). Any HTTP answer is returned
  /// as a KubeResponse; an error means no answer: the connection failed, `timeout`
  /// passed (DeadlineExceeded), or *stop became true (Cancelled).
  absl::StatusOr<KubeResponse> Get(const std::string& path_and_query,
                                   std::chrono::milliseconds timeout,
                                   const std::atomic<bool>* stop = nullptr);

  /// A streaming GET: each piece of a 2xx body goes to `on_data` as it arrives.
  /// Returns OK when the server ended the body or `on_data` returned false;
  /// Cancelled soon after *stop becomes true; a non-2xx answer as an error whose
  /// HttpStatusOf() is its status (its body in the message, not given to on_data);
  /// Unavailable or DeadlineExceeded (idle_timeout) when the connection broke.
  absl::Status Stream(const std::string& path_and_query,
                      std::function<bool(std::string_view chunk)> on_data,
                      const std::atomic<bool>* stop, const KubeStreamOptions& options = {});

  /// The bearer token requests carry now (re-read from token_file if it changed);
  /// empty when there is none or the file cannot be read.
  std::string Token();

 private:
  struct TokenCache;
  struct Transfer;
  absl::Status Perform(const std::string& path_and_query, Transfer* t,
                       const std::atomic<bool>* stop);

  const KubeEndpoint endpoint_;
  const KubeClientOptions options_;
  std::unique_ptr<TokenCache> token_;
};

}  // namespace kmon
