// Where the API server is: the in-cluster service account, or a kubeconfig
// (declared in api_client.h).
#include <absl/strings/escaping.h>
#include <absl/strings/str_cat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "provider/kubernetes/api_client.h"

namespace kmon {
namespace {

std::optional<std::string> NonEmpty(const EnvLookup& env, const std::string& name) {
  std::optional<std::string> v = env(name);
  if (v.has_value() && v->empty()) return std::nullopt;
  return v;
}

absl::Status Readable(const std::string& path, absl::string_view what) {
  if (::access(path.c_str(), R_OK) == 0) return absl::OkStatus();
  const int err = errno;
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat("in-cluster config: ", what, " ", path, ": ", std::strerror(err),
                                   " (is automountServiceAccountToken off for the pod?)"));
}

// A kubeconfig being read: its path for messages, its directory for relative files.
class Kubeconfig {
 public:
  explicit Kubeconfig(std::string path)
      : path_(std::move(path)), dir_(std::filesystem::path(path_).parent_path()) {}

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("kubeconfig ", path_, ": ", what));
  }

  absl::StatusOr<YAML::Node> Load() const {
    std::ifstream in(path_, std::ios::binary);
    if (!in) {
      const int err = errno;
      return absl::Status(absl::ErrnoToStatusCode(err),
                          absl::StrCat("kubeconfig ", path_, ": ", std::strerror(err)));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    try {
      YAML::Node root = YAML::Load(ss.str());
      if (!root.IsMap()) return Error("not a kubeconfig (want a YAML map at the top)");
      return root;
    } catch (const YAML::Exception& e) {
      return Error(absl::StrCat("invalid YAML: ", e.what()));
    }
  }

  /// The `body_key` map of the entry called `name` in the list `list_key`
  /// (clusters/cluster, contexts/context, users/user).
  absl::StatusOr<YAML::Node> Named(const YAML::Node& root, const std::string& list_key,
                                   const std::string& body_key, const std::string& name) const {
    const YAML::Node list = root[list_key];
    if (list && list.IsSequence()) {
      for (const YAML::Node& entry : list) {
        if (!entry.IsMap() || !entry["name"] || !entry["name"].IsScalar()) continue;
        if (entry["name"].Scalar() != name) continue;
        const YAML::Node body = entry[body_key];
        if (!body || !body.IsMap()) {
          return Error(absl::StrCat(list_key, " entry \"", name, "\" has no ", body_key, " map"));
        }
        return body;
      }
    }
    return absl::NotFoundError(
        absl::StrCat("kubeconfig ", path_, ": no ", body_key, " named \"", name, "\""));
  }

  absl::StatusOr<std::string> String(const YAML::Node& map, const std::string& key) const {
    const YAML::Node v = map[key];
    if (!v || v.IsNull()) return std::string();
    if (!v.IsScalar()) return Error(absl::StrCat(key, ": want a string"));
    return v.Scalar();
  }

  /// A file name as kubectl resolves it: relative to the kubeconfig's directory.
  absl::StatusOr<std::string> File(const YAML::Node& map, const std::string& key) const {
    absl::StatusOr<std::string> v = String(map, key);
    if (!v.ok() || v->empty()) return v;
    const std::filesystem::path p(*v);
    return p.is_absolute() ? *v : (dir_ / p).lexically_normal().string();
  }

  /// Inline data (base64 in the file, PEM once decoded).
  absl::StatusOr<std::string> Data(const YAML::Node& map, const std::string& key) const {
    absl::StatusOr<std::string> v = String(map, key);
    if (!v.ok() || v->empty()) return v;
    std::string decoded;
    if (!absl::Base64Unescape(*v, &decoded)) return Error(absl::StrCat(key, ": not base64"));
    return decoded;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::filesystem::path dir_;
};

// Assigns a StatusOr's value to `out`, or returns its error from the caller.
#define KMON_ASSIGN_OR_RETURN(out, expr)      \
  do {                                        \
    auto kmon_v = (expr);                     \
    if (!kmon_v.ok()) return kmon_v.status(); \
    out = std::move(*kmon_v);                 \
  } while (0)

}  // namespace

bool InCluster(const EnvLookup& env) {
  return NonEmpty(env, "KUBERNETES_SERVICE_HOST").has_value() &&
         NonEmpty(env, "KUBERNETES_SERVICE_PORT").has_value();
}

absl::StatusOr<KubeEndpoint> InClusterEndpoint(const EnvLookup& env, std::string sa_dir) {
  std::optional<std::string> host = NonEmpty(env, "KUBERNETES_SERVICE_HOST");
  const std::optional<std::string> port = NonEmpty(env, "KUBERNETES_SERVICE_PORT");
  for (const char* name : {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}) {
    if (!NonEmpty(env, name).has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "in-cluster config: ", name,
          " is not set, so this is not a pod (outside a cluster, set kubernetes.kubeconfig)"));
    }
  }
  // An IPv6 service address goes in brackets in a URL.
  if (host->find(':') != std::string::npos && host->front() != '[') *host = "[" + *host + "]";
  KubeEndpoint ep;
  ep.server = absl::StrCat("https://", *host, ":", *port);
  ep.token_file = (std::filesystem::path(sa_dir) / "token").string();
  ep.ca_file = (std::filesystem::path(sa_dir) / "ca.crt").string();
  if (absl::Status s = Readable(ep.token_file, "service account token"); !s.ok()) return s;
  if (absl::Status s = Readable(ep.ca_file, "service account CA"); !s.ok()) return s;
  return ep;
}

absl::StatusOr<KubeEndpoint> KubeconfigEndpoint(const std::string& path,
                                                const std::string& context) {
  const Kubeconfig kc(path);
  YAML::Node root;
  KMON_ASSIGN_OR_RETURN(root, kc.Load());
  std::string context_name = context;
  if (context_name.empty()) {
    KMON_ASSIGN_OR_RETURN(context_name, kc.String(root, "current-context"));
    if (context_name.empty()) return kc.Error("no current-context set and no context given");
  }
  YAML::Node ctx, cluster, user;
  KMON_ASSIGN_OR_RETURN(ctx, kc.Named(root, "contexts", "context", context_name));
  std::string cluster_name, user_name;
  KMON_ASSIGN_OR_RETURN(cluster_name, kc.String(ctx, "cluster"));
  KMON_ASSIGN_OR_RETURN(user_name, kc.String(ctx, "user"));
  if (cluster_name.empty()) {
    return kc.Error(absl::StrCat("context \"", context_name, "\" names no cluster"));
  }
  KMON_ASSIGN_OR_RETURN(cluster, kc.Named(root, "clusters", "cluster", cluster_name));

  KubeEndpoint ep;
  KMON_ASSIGN_OR_RETURN(ep.server, kc.String(cluster, "server"));
  if (ep.server.empty()) {
    return kc.Error(absl::StrCat("cluster \"", cluster_name, "\" has no server"));
  }
  // Silently ignoring these would connect somewhere else or fail TLS confusingly.
  for (const char* key : {"proxy-url", "tls-server-name"}) {
    if (cluster[key]) {
      return absl::UnimplementedError(absl::StrCat("kubeconfig ", path, ": cluster \"",
                                                   cluster_name, "\": ", key,
                                                   " is not supported by kmon"));
    }
  }
  KMON_ASSIGN_OR_RETURN(ep.ca_file, kc.File(cluster, "certificate-authority"));
  KMON_ASSIGN_OR_RETURN(ep.ca_data, kc.Data(cluster, "certificate-authority-data"));
  if (const YAML::Node v = cluster["insecure-skip-tls-verify"]; v && !v.IsNull()) {
    try {
      ep.insecure_skip_tls_verify = v.as<bool>();
    } catch (const YAML::Exception&) {
      return kc.Error("insecure-skip-tls-verify: want true or false");
    }
  }

  if (user_name.empty()) return ep;  // anonymous (or a proxy that adds credentials)
  KMON_ASSIGN_OR_RETURN(user, kc.Named(root, "users", "user", user_name));
  for (const char* plugin : {"exec", "auth-provider"}) {
    if (user[plugin]) {
      return absl::UnimplementedError(absl::StrCat(
          "kubeconfig ", path, ": user \"", user_name, "\" gets its credentials from an ", plugin,
          " plugin, which kmon does not run; give it a token, tokenFile or client "
          "certificate instead (e.g. a service account token)"));
    }
  }
  if (user["username"] || user["password"]) {
    return absl::UnimplementedError(absl::StrCat("kubeconfig ", path, ": user \"", user_name,
                                                 "\" uses basic auth, which kmon does not "
                                                 "support (nor does Kubernetes since 1.19)"));
  }
  KMON_ASSIGN_OR_RETURN(ep.token, kc.String(user, "token"));
  KMON_ASSIGN_OR_RETURN(ep.token_file, kc.File(user, "tokenFile"));
  KMON_ASSIGN_OR_RETURN(ep.client_cert_file, kc.File(user, "client-certificate"));
  KMON_ASSIGN_OR_RETURN(ep.client_cert_data, kc.Data(user, "client-certificate-data"));
  KMON_ASSIGN_OR_RETURN(ep.client_key_file, kc.File(user, "client-key"));
  KMON_ASSIGN_OR_RETURN(ep.client_key_data, kc.Data(user, "client-key-data"));
  const bool cert = !ep.client_cert_file.empty() || !ep.client_cert_data.empty();
  const bool key = !ep.client_key_file.empty() || !ep.client_key_data.empty();
  if (cert != key) {
    return kc.Error(absl::StrCat("user \"", user_name, "\" has a client ",
                                 cert ? "certificate but no key" : "key but no certificate"));
  }
  return ep;
}

}  // namespace kmon

#undef KMON_ASSIGN_OR_RETURN
