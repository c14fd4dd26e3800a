#include "exporter/web_config.h"

#include <absl/status/status.h>
#include <absl/strings/ascii.h>
#include <absl/strings/escaping.h>
#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <crypt.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "base/strict_yaml.h"

namespace kmon {
namespace {

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

// The exporter-toolkit's tls_server_config. `section` is where it stands, for
// problems no single key carries.
void ParseTls(YamlParser& p, const YamlValue& section, WebConfig& cfg) {
  int cert_line = 0, key_line = 0, ca_line = 0, auth_line = 0;
  bool cert_bad = false, key_bad = false;  // already reported as not a string
  const std::string path = section.key;
  auto file = [&](std::string* out, int* line, bool* bad) {
    return [&p, out, line, bad](const YamlValue& f) {
      *line = f.line;
      const bool ok = p.String(f, out);
      if (bad != nullptr) *bad = !ok;
    };
  };
  std::vector<YamlParser::Field> fields = {
      {"cert_file", file(&cfg.cert_file, &cert_line, &cert_bad)},
      {"key_file", file(&cfg.key_file, &key_line, &key_bad)},
      {"client_ca_file", file(&cfg.client_ca_file, &ca_line, nullptr)},
      {"client_auth_type",
       [&](const YamlValue& f) {
         auth_line = f.line;
         std::string t;
         if (!p.String(f, &t) || t.empty()) return;
         // The exporter-toolkit's (Go's crypto/tls) five policies.
         p.OneOf(f,
                 {"NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                  "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"},
                 &cfg.client_auth_type);
       }},
      {"min_version",
       [&](const YamlValue& f) {
         std::string v;
         if (!p.String(f, &v) || v.empty()) return;
         p.OneOf(f, {"TLS10", "TLS11", "TLS12", "TLS13"}, &cfg.min_version);
       }},
  };
  // Keys of the exporter-toolkit format that kmon knows but does not implement. They
  // are refused rather than ignored: a user who asks for cipher suites or SAN checks
  // must not get a server that silently skips them.
  for (const char* unsupported :
       {"cert", "key", "client_ca", "cipher_suites", "curve_preferences", "max_version",
        "prefer_server_cipher_suites", "client_allowed_sans"}) {
    fields.push_back(
        {unsupported,
         [&p](const YamlValue& f) { p.Report(f.key, f.line, "not supported by kmon"); },
         /*listed=*/false});
  }
  p.Map(section, fields);

  // The exporter-toolkit rules: any of these turns TLS on, and then both halves of the
  // key pair are needed; client CAs only make sense with a policy that asks for certs.
  const bool tls_wanted = !cfg.cert_file.empty() || !cfg.key_file.empty() ||
                          !cfg.client_ca_file.empty() || !cfg.client_auth_type.empty();
  if (!tls_wanted) return;
  if (cfg.cert_file.empty() && !cert_bad) {
    p.Report(path + ".cert_file", cert_line > 0 ? cert_line : section.line,
             "missing (TLS needs cert_file and key_file)");
  }
  if (cfg.key_file.empty() && !key_bad) {
    p.Report(path + ".key_file", key_line > 0 ? key_line : section.line,
             "missing (TLS needs cert_file and key_file)");
  }
  const std::string& auth = cfg.client_auth_type;
  const bool asks_for_certs =
      auth == "VerifyClientCertIfGiven" || auth == "RequireAndVerifyClientCert";
  if (!cfg.client_ca_file.empty() && (auth.empty() || auth == "NoClientCert")) {
    p.Report(path + ".client_ca_file", ca_line,
             "set, but client_auth_type does not ask for client certificates");
  }
  if (asks_for_certs && cfg.client_ca_file.empty()) {
    p.Report(path + ".client_auth_type", auth_line,
             absl::StrCat(auth, " needs client_ca_file to verify client certificates"));
  }
}

void ParseUsers(YamlParser& p, const YamlValue& v, WebConfig& cfg) {
  p.Entries(v, "a map of user: bcrypt hash", "user names",
            [&](const std::string& name, const YamlValue& value) {
              if (name.find(':') != std::string::npos) {
                p.Report(value.key, value.line, "a user name must be without ':'");
                return;
              }
              std::string hash;
              if (!p.String(value, &hash)) return;
              // The hash itself stays out of the message: it is a secret of sorts.
              if (!IsBcryptHash(hash)) {
                p.Report(value.key, value.line,
                         "not a bcrypt hash (want $2a$, $2b$ or $2y$ and 60 characters, as "
                         "htpasswd -nbB makes)");
                return;
              }
              cfg.basic_auth_users[name] = hash;
            });
}

void ParseHttp(YamlParser& p, const YamlValue& v) {
  bool http2 = false;  // accepted for compatibility and ignored: kmon speaks HTTP/1.1 only
  p.Map(v, {
               {"http2", [&](const YamlValue& f) { p.Bool(f, &http2); }},
               {"headers",
                [&](const YamlValue& f) { p.Report(f.key, f.line, "not supported by kmon"); },
                /*listed=*/false},
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
  std::vector<ConfigProblem> problems;
  std::optional<YAML::Node> root = LoadSingleDocument(yaml_text, &problems);
  WebConfig cfg;
  if (root) {
    // The web config has no ${VAR} expansion (the exporter-toolkit has none either).
    YamlParser p(NoEnv());
    try {
      p.Map(YamlValue{*root, "", std::max(YamlLineOf(*root), 1)},
            {
                {"tls_server_config", [&](const YamlValue& v) { ParseTls(p, v, cfg); }},
                {"basic_auth_users", [&](const YamlValue& v) { ParseUsers(p, v, cfg); }},
                {"http_server_config", [&](const YamlValue& v) { ParseHttp(p, v); }},
            });
    } catch (const YAML::Exception& e) {
      p.Report("", e.mark.is_null() ? 0 : e.mark.line + 1, e.msg);
    }
    problems = p.TakeProblems();
  }
  if (!problems.empty()) {
    std::vector<std::string> lines;
    for (const ConfigProblem& problem : problems) lines.push_back(problem.ToString());
    return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
  }
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
