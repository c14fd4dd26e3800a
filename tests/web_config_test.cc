// --web.config.file parsing (exporter-toolkit format) and basic auth against bcrypt.
#include "exporter/web_config.h"

#include <absl/strings/escaping.h>
#include <crypt.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace kmon {
namespace {

// Generated once with libxcrypt: crypt_rn("s3cr3t pass", crypt_gensalt_rn("$2b$", 10, ...)).
constexpr const char* kHashS3cr3t = "$2b$10$r7xtPz5YO1Qfk7R9xaH1Me.kKG0FbwfbBGPK4RPZg.9benIBGzFAK";
// Same, for "hunter2" with the $2y$ prefix htpasswd -B writes, cost 5.
constexpr const char* kHashHunter2 = "$2y$05$7qzd3kXxhUUNKSDEV3vMYOOp4nfJp6dHs5KhNf4cBtcpH05M6mcJC";

std::string Basic(const std::string& user_colon_password) {
  return "Basic " + absl::Base64Escape(user_colon_password);
}

// A fresh bcrypt hash, cost 4 (the minimum) to keep the test fast.
std::string FreshHash(const std::string& password) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  EXPECT_NE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt)), nullptr);
  crypt_data data;
  std::memset(&data, 0, sizeof(data));
  const char* h = crypt_rn(password.c_str(), salt, &data, sizeof(data));
  EXPECT_NE(h, nullptr);
  return h != nullptr ? h : "";
}

TEST(ParseWebConfig, EmptyDocumentMeansNoTlsNoAuth) {
  auto cfg = ParseWebConfig("");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_FALSE(cfg->tls());
  EXPECT_TRUE(cfg->basic_auth_users.empty());
}

TEST(ParseWebConfig, FullConfig) {
  const std::string yaml = std::string(R"(
tls_server_config:
  cert_file: /etc/kmon/tls.crt
  key_file: /etc/kmon/tls.key
  client_ca_file: /etc/kmon/ca.crt
  client_auth_type: RequireAndVerifyClientCert
  min_version: TLS13
http_server_config:
  http2: false
basic_auth_users:
  alice: )") + kHashS3cr3t +
                           "\n  bob: '" + kHashHunter2 + "'\n";
  auto cfg = ParseWebConfig(yaml);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(cfg->tls());
  EXPECT_EQ(cfg->cert_file, "/etc/kmon/tls.crt");
  EXPECT_EQ(cfg->key_file, "/etc/kmon/tls.key");
  EXPECT_EQ(cfg->client_ca_file, "/etc/kmon/ca.crt");
  EXPECT_EQ(cfg->client_auth_type, "RequireAndVerifyClientCert");
  EXPECT_EQ(cfg->min_version, "TLS13");
  ASSERT_EQ(cfg->basic_auth_users.size(), 2u);
  EXPECT_EQ(cfg->basic_auth_users.at("alice"), kHashS3cr3t);
  EXPECT_EQ(cfg->basic_auth_users.at("bob"), kHashHunter2);
}

TEST(ParseWebConfig, UnknownKeysNameKeyAndLine) {
  auto cfg = ParseWebConfig(
      "tls_server_config:\n"
      "  cert_file: a\n"
      "  key_file: b\n"
      "  cert_flie: typo\n"
      "basic_auth_user: {}\n");
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(cfg.status().message()),
            "line 4: tls_server_config.cert_flie: unknown key (expected one of: cert_file, "
            "key_file, client_ca_file, client_auth_type, min_version)\n"
            "line 5: basic_auth_user: unknown key (expected one of: tls_server_config, "
            "basic_auth_users, http_server_config)");
}

TEST(ParseWebConfig, HttpServerConfig) {
  EXPECT_TRUE(ParseWebConfig("http_server_config:\n  http2: true\n").ok());
  auto bad = ParseWebConfig("http_server_config:\n  http2: maybe\n  headers: {}\n  x: 1\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()),
            "line 2: http_server_config.http2: must be true or false, got \"maybe\"\n"
            "line 3: http_server_config.headers: not supported by kmon\n"
            "line 4: http_server_config.x: unknown key (expected one of: http2)");
}

TEST(ParseWebConfig, UnsupportedToolkitKeysAreRefusedNotIgnored) {
  auto cfg = ParseWebConfig(
      "tls_server_config:\n"
      "  cert_file: a\n"
      "  key_file: b\n"
      "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n");
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(std::string(cfg.status().message()),
            "line 4: tls_server_config.cipher_suites: not supported by kmon");
}

TEST(ParseWebConfig, CertAndKeyGoTogether) {
  auto no_key = ParseWebConfig("tls_server_config:\n  cert_file: a.crt\n");
  ASSERT_FALSE(no_key.ok());
  EXPECT_EQ(std::string(no_key.status().message()),
            "line 1: tls_server_config.key_file: missing (TLS needs cert_file and key_file)");
  auto no_cert = ParseWebConfig("tls_server_config:\n  key_file: a.key\n");
  ASSERT_FALSE(no_cert.ok());
  EXPECT_EQ(std::string(no_cert.status().message()),
            "line 1: tls_server_config.cert_file: missing (TLS needs cert_file and key_file)");
  // An empty section, or only min_version, does not turn TLS on (as in the toolkit).
  auto plain = ParseWebConfig("tls_server_config:\n  min_version: TLS12\n");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->tls());
}

TEST(ParseWebConfig, ClientAuthRules) {
  const std::string base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
  auto ca_without_policy = ParseWebConfig(base + "  client_ca_file: ca.crt\n");
  ASSERT_FALSE(ca_without_policy.ok());
  EXPECT_EQ(std::string(ca_without_policy.status().message()),
            "line 4: tls_server_config.client_ca_file: set, but client_auth_type does not ask "
            "for client certificates");

  auto policy_without_ca = ParseWebConfig(base + "  client_auth_type: VerifyClientCertIfGiven\n");
  ASSERT_FALSE(policy_without_ca.ok());
  EXPECT_EQ(std::string(policy_without_ca.status().message()),
            "line 4: tls_server_config.client_auth_type: VerifyClientCertIfGiven needs "
            "client_ca_file to verify client certificates");

  // Policies that ask for a certificate without verifying it need no CA.
  for (const char* t : {"RequestClientCert", "RequireAnyClientCert"}) {
    auto unverified = ParseWebConfig(base + "  client_auth_type: " + t + "\n");
    ASSERT_TRUE(unverified.ok()) << t << ": " << unverified.status();
    EXPECT_EQ(unverified->client_auth_type, t);
  }

  auto invalid = ParseWebConfig(base + "  client_auth_type: Sometimes\n  min_version: TLS9\n");
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(std::string(invalid.status().message()),
            "line 4: tls_server_config.client_auth_type: must be one of NoClientCert, "
            "RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
            "RequireAndVerifyClientCert; got \"Sometimes\"\n"
            "line 5: tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13; "
            "got \"TLS9\"");
}

TEST(ParseWebConfig, PasswordsMustBeBcryptHashes) {
  auto cfg = ParseWebConfig(
      "basic_auth_users:\n"
      "  alice: plaintext\n"
      "  bob: $1$md5crypt$0123456789012345678901\n"
      "  carol: $2b$10$tooshort\n");
  ASSERT_FALSE(cfg.ok());
  const std::string want =
      ": not a bcrypt hash (want $2a$, $2b$ or $2y$ and 60 characters, "
      "as htpasswd -nbB makes)";
  EXPECT_EQ(std::string(cfg.status().message()), "line 2: basic_auth_users.alice" + want +
                                                     "\nline 3: basic_auth_users.bob" + want +
                                                     "\nline 4: basic_auth_users.carol" + want);
  EXPECT_EQ(cfg.status().message().find("plaintext"), absl::string_view::npos)
      << "the secret stays out of the message";
}

TEST(ParseWebConfig, StructuralErrors) {
  auto not_map = ParseWebConfig("- a\n- b\n");
  ASSERT_FALSE(not_map.ok());
  EXPECT_EQ(std::string(not_map.status().message()),
            "line 1: the config must be a map of keys, got a list");

  auto dup = ParseWebConfig(std::string("basic_auth_users:\n  a: ") + kHashS3cr3t +
                            "\n  a: " + kHashS3cr3t + "\n");
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(std::string(dup.status().message()),
            "line 3: basic_auth_users.a: duplicate key (first set on line 2)");

  auto list_value = ParseWebConfig("tls_server_config:\n  cert_file: [a, b]\n  key_file: k\n");
  ASSERT_FALSE(list_value.ok());
  EXPECT_EQ(std::string(list_value.status().message()),
            "line 2: tls_server_config.cert_file: must be a string, got a list");

  auto syntax = ParseWebConfig("tls_server_config:\n  cert_file: a\n    key_file: [\n");
  ASSERT_FALSE(syntax.ok());
  EXPECT_EQ(std::string(syntax.status().message()), "line 3: illegal map value");
}

// The same rules as the main config (one strict engine): YAML 1.1's yes/no are
// not booleans, a quoted "true" is a string, and a second document is refused.
TEST(ParseWebConfig, SameYamlRulesAsTheMainConfig) {
  auto yes = ParseWebConfig("http_server_config:\n  http2: yes\n");
  ASSERT_FALSE(yes.ok());
  EXPECT_EQ(std::string(yes.status().message()),
            "line 2: http_server_config.http2: must be true or false, got \"yes\"");
  auto quoted = ParseWebConfig("http_server_config:\n  http2: \"true\"\n");
  ASSERT_FALSE(quoted.ok());
  EXPECT_EQ(std::string(quoted.status().message()),
            "line 2: http_server_config.http2: must be true or false, got the string \"true\"");
  EXPECT_TRUE(ParseWebConfig("http_server_config:\n  http2: false\n").ok());
  auto two = ParseWebConfig("basic_auth_users: {}\n---\nbasic_auth_users: {}\n");
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(std::string(two.status().message()),
            "line 3: the config must be a single YAML document, found a second one (\"---\")");
}

TEST(LoadWebConfig, RelativePathsAreRelativeToTheFile) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kmon-webcfg-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "web.yml").string();
  std::ofstream(path) << "tls_server_config:\n  cert_file: tls/server.crt\n"
                         "  key_file: /abs/server.key\n";
  auto cfg = LoadWebConfig(path);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->cert_file, (dir / "tls/server.crt").string());
  EXPECT_EQ(cfg->key_file, "/abs/server.key");

  std::ofstream(path) << "bogus: 1\n";
  auto bad = LoadWebConfig(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()),
            "web config " + path +
                ": line 1: bogus: unknown key (expected one of: tls_server_config, "
                "basic_auth_users, http_server_config)");

  auto missing = LoadWebConfig((dir / "nope.yml").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.yml"), absl::string_view::npos);
  std::filesystem::remove_all(dir);
}

TEST(CheckBasicAuth, NoUsersMeansOpen) {
  WebConfig cfg;
  EXPECT_TRUE(CheckBasicAuth(cfg, ""));
  EXPECT_TRUE(CheckBasicAuth(cfg, "garbage"));
}

TEST(CheckBasicAuth, FreshlyGeneratedHash) {
  WebConfig cfg;
  cfg.basic_auth_users["carol"] = FreshHash("pa:ss word");
  EXPECT_TRUE(CheckBasicAuth(cfg, Basic("carol:pa:ss word")));  // ':' allowed in passwords
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("carol:pa:ss wore")));
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("carol:")));
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("Carol:pa:ss word")));  // user names are exact
}

TEST(CheckBasicAuth, KnownLiteralHashes) {
  WebConfig cfg;
  cfg.basic_auth_users["alice"] = kHashS3cr3t;
  cfg.basic_auth_users["bob"] = kHashHunter2;
  EXPECT_TRUE(CheckBasicAuth(cfg, Basic("alice:s3cr3t pass")));
  EXPECT_TRUE(CheckBasicAuth(cfg, Basic("bob:hunter2")));
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("alice:hunter2")));  // another user's password
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("bob:s3cr3t pass")));
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("mallory:s3cr3t pass")));  // unknown user
  // The scheme is case-insensitive (RFC 7617); surrounding blanks are tolerated.
  EXPECT_TRUE(CheckBasicAuth(cfg, "basic " + absl::Base64Escape("bob:hunter2")));
  EXPECT_TRUE(CheckBasicAuth(cfg, "  BASIC   " + absl::Base64Escape("bob:hunter2") + " "));
}

TEST(CheckBasicAuth, MalformedHeaders) {
  WebConfig cfg;
  cfg.basic_auth_users["bob"] = kHashHunter2;
  EXPECT_FALSE(CheckBasicAuth(cfg, ""));
  EXPECT_FALSE(CheckBasicAuth(cfg, "Basic"));
  EXPECT_FALSE(CheckBasicAuth(cfg, "Bearer " + absl::Base64Escape("bob:hunter2")));
  EXPECT_FALSE(CheckBasicAuth(cfg, "Basic !!!not-base64!!!"));
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic("bobhunter2")));  // no colon
  // A NUL would end the C string crypt() sees, so "hunter2\0junk" must not pass.
  EXPECT_FALSE(CheckBasicAuth(cfg, Basic(std::string("bob:hunter2\0junk", 16))));
}

}  // namespace
}  // namespace kmon
