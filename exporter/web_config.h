// --web.config.file: the Prometheus exporter-toolkit web config (TLS and basic auth).
#pragma once

#include <absl/status/statusor.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kmon {

struct WebConfig {
  // tls_server_config
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;
  std::string client_auth_type;  // "" | NoClientCert | RequireAndVerifyClientCert | ...
  std::string min_version;       // "" | TLS12 | TLS13
  // basic_auth_users: user -> bcrypt hash
  std::map<std::string, std::string> basic_auth_users;

  bool tls() const { return !cert_file.empty(); }
};

/// Parses the web config YAML. Unknown keys, missing key_file for cert_file, or a
/// password hash that is not bcrypt are errors naming the key and line; the status
/// message holds every problem found, one per line ("line 4: tls_server_config.x: ...").
/// LoadWebConfig prefixes each with the file and makes relative file names relative to
/// the config file's directory, as the exporter-toolkit does.
absl::StatusOr<WebConfig> ParseWebConfig(const std::string& yaml_text);
absl::StatusOr<WebConfig> LoadWebConfig(const std::string& path);

/// Checks "Authorization: Basic ..." against the users; true when no users are set.
bool CheckBasicAuth(const WebConfig& cfg, const std::string& authorization_header);

}  // namespace kmon
