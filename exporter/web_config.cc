#include "exporter/web_config.h"

#include <absl/status/status.h>
#include <absl/strings/ascii.h>
#include <absl/strings/escaping.h>
#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <crypt.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string_view>

namespace kmon {
namespace {

// Keys of the exporter-toolkit format that kmon knows but does not implement. They are
// refused rather than ignored: a user who asks for cipher suites or SAN checks must not
// get a server that silently skips them.
const std::set<std::string, std::less<>> kUnsupportedTlsKeys = {"cert",
                                                                "key",
                                                                "client_ca",
                                                                "cipher_suites",
                                                                "curve_preferences",
                                                                "max_version",
                                                                "prefer_server_cipher_suites",
                                                                "client_allowed_sans"};

class Problems {
 public:
  void Add(const YAML::Node& where, absl::string_view key, absl::string_view what) {
    Add(where.Mark(), key, what);
  }
  void Add(const YAML::Mark& mark, absl::string_view key, absl::string_view what) {
    if (mark.is_null()) {
      lines_.push_back(absl::StrCat(key, ": ", what));
    } else {
      lines_.push_back(absl::StrCat("line ", mark.line + 1, ": ", key, ": ", what));
    }
  }
  bool empty() const { return lines_.empty(); }
  absl::Status ToStatus() const { return absl::InvalidArgumentError(absl::StrJoin(lines_, "\n")); }

 private:
  std::vector<std::string> lines_;
};

// Reads a scalar string; a map or list where a string belongs is a problem.
bool ReadString(const YAML::Node& value, const std::string& key, Problems& problems,
                std::string* out) {
  if (value.IsNull()) {
    out->clear();
    return true;
  }
  if (!value.IsScalar()) {
    problems.Add(value, key, "want a string");
    return false;
  }
  *out = value.Scalar();
  return true;
}

// Iterates a mapping, reporting non-mapping nodes and duplicate keys; `fn` gets each
// key's name, key node and value.
template <typename Fn>
void ForEachKey(const YAML::Node& map, const std::string& path, Problems& problems, Fn fn) {
  if (map.IsNull()) return;
  if (!map.IsMap()) {
    problems.Add(map, path.empty() ? "(top level)" : path, "want a mapping");
    return;
  }
  std::set<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node& key = it->first;
    const std::string name = key.IsScalar() ? key.Scalar() : std::string("?");
    const std::string full = path.empty() ? name : absl::StrCat(path, ".", name);
    if (!seen.insert(name).second) {
      problems.Add(key, full, "duplicate key");
      continue;
    }
    fn(name, full, key, it->second);
  }
}

// A bcrypt hash as htpasswd -B, Go's x/crypto/bcrypt and libxcrypt write it:
// "$2b$" + two-digit cost + "$" + 22 salt and 31 hash characters of bcrypt's base64.
bool IsBcryptHash(absl::string_view h) {
  if (h.size() != 60) return false;
  if (!(absl::StartsWith(h, "$2a$") || absl::StartsWith(h, "$2b$") ||
        absl::StartsWith(h, "$2y$"))) {
    return false;
  }
  if (!absl::ascii_isdigit(h[4]) || !absl::ascii_isdigit(h[5]) || h[6] != '$') return false;
  const int cost = (h[4] - '0') * 10 + (h[5] - '0');
  if (cost < 4 || cost > 31) return false;
  for (char c : h.substr(7)) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '/') return false;
  }
  return true;
}

// `section` is where "tls_server_config:" stands, for problems no single key carries.
void ParseTls(const std::string& path, const YAML::Mark& section, const YAML::Node& node,
              WebConfig& cfg, Problems& problems) {
  YAML::Mark cert_mark, key_mark, ca_mark, auth_mark;
  bool cert_bad = false, key_bad = false;  // already reported as not a string
  ForEachKey(
      node, path, problems,
      [&](const std::string& name, const std::string& full, const YAML::Node& key,
          const YAML::Node& value) {
        if (name == "cert_file") {
          cert_mark = key.Mark();
          cert_bad = !ReadString(value, full, problems, &cfg.cert_file);
        } else if (name == "key_file") {
          key_mark = key.Mark();
          key_bad = !ReadString(value, full, problems, &cfg.key_file);
        } else if (name == "client_ca_file") {
          ca_mark = key.Mark();
          ReadString(value, full, problems, &cfg.client_ca_file);
        } else if (name == "client_auth_type") {
          auth_mark = key.Mark();
          if (!ReadString(value, full, problems, &cfg.client_auth_type)) return;
          const std::string& t = cfg.client_auth_type;
          if (t == "RequestClientCert" || t == "RequireAnyClientCert" || t == "RequireClientCert") {
            problems.Add(value, full,
                         absl::StrCat(t,
                                      " is not supported by kmon: civetweb verifies "
                                      "every client certificate it asks for (use "
                                      "VerifyClientCertIfGiven or "
                                      "RequireAndVerifyClientCert)"));
          } else if (!t.empty() && t != "NoClientCert" && t != "VerifyClientCertIfGiven" &&
                     t != "RequireAndVerifyClientCert") {
            problems.Add(value, full,
                         absl::StrCat("invalid value \"", t,
                                      "\" (want NoClientCert, VerifyClientCertIfGiven or "
                                      "RequireAndVerifyClientCert)"));
          }
        } else if (name == "min_version") {
          if (!ReadString(value, full, problems, &cfg.min_version)) return;
          const std::string& v = cfg.min_version;
          if (!v.empty() && v != "TLS10" && v != "TLS11" && v != "TLS12" && v != "TLS13") {
            problems.Add(
                value, full,
                absl::StrCat("invalid value \"", v, "\" (want TLS10, TLS11, TLS12 or TLS13)"));
          }
        } else if (kUnsupportedTlsKeys.count(name) > 0) {
          problems.Add(key, full, "not supported by kmon");
        } else {
          problems.Add(key, full, "unknown key");
        }
      });

  // The exporter-toolkit rules: any of these turns TLS on, and then both halves of the
  // key pair are needed; client CAs only make sense with a policy that asks for certs.
  const bool tls_wanted = !cfg.cert_file.empty() || !cfg.key_file.empty() ||
                          !cfg.client_ca_file.empty() || !cfg.client_auth_type.empty();
  if (!tls_wanted) return;
  if (cfg.cert_file.empty() && !cert_bad) {
    problems.Add(cert_mark.is_null() ? section : cert_mark, path + ".cert_file",
                 "missing (TLS needs cert_file and key_file)");
  }
  if (cfg.key_file.empty() && !key_bad) {
    problems.Add(key_mark.is_null() ? section : key_mark, path + ".key_file",
                 "missing (TLS needs cert_file and key_file)");
  }
  const std::string& auth = cfg.client_auth_type;
  const bool asks_for_certs =
      auth == "VerifyClientCertIfGiven" || auth == "RequireAndVerifyClientCert";
  if (!cfg.client_ca_file.empty() && (auth.empty() || auth == "NoClientCert")) {
    problems.Add(ca_mark, path + ".client_ca_file",
                 "set, but client_auth_type does not ask for client certificates");
  }
  if (asks_for_certs && cfg.client_ca_file.empty()) {
    problems.Add(auth_mark, path + ".client_auth_type",
                 absl::StrCat(auth, " needs client_ca_file to verify client certificates"));
  }
}

void ParseUsers(const std::string& path, const YAML::Node& node, WebConfig& cfg,
                Problems& problems) {
  ForEachKey(node, path, problems,
             [&](const std::string& name, const std::string& full, const YAML::Node& key,
                 const YAML::Node& value) {
               if (name.empty() || name.find(':') != std::string::npos) {
                 problems.Add(key, full, "a user name must be non-empty and without ':'");
                 return;
               }
               std::string hash;
               if (!ReadString(value, full, problems, &hash)) return;
               // The hash itself stays out of the message: it is a secret of sorts.
               if (!IsBcryptHash(hash)) {
                 problems.Add(value, full,
                              "not a bcrypt hash (want $2a$, $2b$ or $2y$ and 60 characters, "
                              "as htpasswd -nbB makes)");
                 return;
               }
               cfg.basic_auth_users[name] = hash;
             });
}

void ParseHttp(const std::string& path, const YAML::Node& node, Problems& problems) {
  ForEachKey(node, path, problems,
             [&](const std::string& name, const std::string& full, const YAML::Node& key,
                 const YAML::Node& value) {
               if (name == "http2") {
                 // Accepted for compatibility and ignored: civetweb speaks HTTP/1.1 only.
                 bool ignored = false;
                 if (!value.IsScalar() || !YAML::convert<bool>::decode(value, ignored)) {
                   problems.Add(value, full, "want true or false");
                 }
               } else if (name == "headers") {
                 problems.Add(key, full, "not supported by kmon");
               } else {
                 problems.Add(key, full, "unknown key");
               }
             });
}

void MakeAbsolute(const std::filesystem::path& dir, std::string& file) {
  if (file.empty() || std::filesystem::path(file).is_absolute()) return;
  file = (dir / file).lexically_normal().string();
}

// A bcrypt hash of a random password, checked when the user name is unknown so that a
// wrong name costs as much time as a wrong password and names cannot be probed.
constexpr const char* kDecoyHash = "$2b$10$r7xtPz5YO1Qfk7R9xaH1Me.kKG0FbwfbBGPK4RPZg.9benIBGzFAK";

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<WebConfig> ParseWebConfig(const std::string& yaml_text) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    Problems problems;
    problems.Add(e.mark, "(yaml)", e.msg);
    return problems.ToStatus();
  }
  WebConfig cfg;
  Problems problems;
  try {
    ForEachKey(root, "", problems,
               [&](const std::string& name, const std::string& full, const YAML::Node& key,
                   const YAML::Node& value) {
                 if (name == "tls_server_config") {
                   ParseTls(full, key.Mark(), value, cfg, problems);
                 } else if (name == "basic_auth_users") {
                   ParseUsers(full, value, cfg, problems);
                 } else if (name == "http_server_config") {
                   ParseHttp(full, value, problems);
                 } else {
                   problems.Add(key, full, "unknown key");
                 }
               });
  } catch (const YAML::Exception& e) {
    problems.Add(e.mark, "(yaml)", e.msg);
  }
  if (!problems.empty()) return problems.ToStatus();
  return cfg;
}

absl::StatusOr<WebConfig> LoadWebConfig(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("web config ", path, ": is a directory"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat("web config ", path, ": ", std::strerror(err)));
  }
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<WebConfig> cfg = ParseWebConfig(text.str());
  if (!cfg.ok()) {
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(cfg.status().message(), '\n')) {
      lines.push_back(absl::StrCat("web config ", path, ": ", line));
    }
    return absl::Status(cfg.status().code(), absl::StrJoin(lines, "\n"));
  }
  // As in the exporter-toolkit, relative file names are relative to the config file.
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  MakeAbsolute(dir, cfg->cert_file);
  MakeAbsolute(dir, cfg->key_file);
  MakeAbsolute(dir, cfg->client_ca_file);
  return cfg;
}

bool CheckBasicAuth(const WebConfig& cfg, const std::string& authorization_header) {
  if (cfg.basic_auth_users.empty()) return true;
  absl::string_view header = absl::StripAsciiWhitespace(authorization_header);
  constexpr absl::string_view kScheme = "basic ";
  if (header.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(header.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  std::string decoded;
  if (!absl::Base64Unescape(absl::StripAsciiWhitespace(header.substr(kScheme.size())), &decoded)) {
    return false;
  }
  const size_t colon = decoded.find(':');
  if (colon == std::string::npos) return false;
  const std::string user = decoded.substr(0, colon);
  const std::string password = decoded.substr(colon + 1);
  // crypt() takes a C string: a NUL would cut the password short.
  if (password.find('\0') != std::string::npos) return false;

  const auto found = cfg.basic_auth_users.find(user);
  const std::string& hash =
      found != cfg.basic_auth_users.end() ? found->second : std::string(kDecoyHash);
  // struct crypt_data is ~32 KiB: too much for a server thread's stack.
  auto data = std::make_unique<crypt_data>();
  std::memset(data.get(), 0, sizeof(crypt_data));
  const char* computed =
      crypt_rn(password.c_str(), hash.c_str(), data.get(), static_cast<int>(sizeof(crypt_data)));
  if (computed == nullptr) return false;
  const bool match = ConstantTimeEquals(computed, hash);
  return match && found != cfg.basic_auth_users.end();
}

}  // namespace kmon
