#include "provider/kubernetes/api_client.h"

#include <absl/strings/ascii.h>
#include <absl/strings/cord.h>
#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

#include "base/log.h"
#include "provider/kubernetes/api_curl.h"

namespace kmon {
namespace {

constexpr char kHttpStatusPayload[] = "type.kmon/http_status";
// An answer bigger than this is not a pod list kmon can hold anyway; refusing it
// keeps a misbehaving server from growing the process without bound.
constexpr size_t kMaxBody = size_t{512} << 20;
// Enough of an error answer to quote it.
constexpr size_t kMaxErrorBody = 64 << 10;

absl::StatusCode CodeOfHttp(int status) {
  switch (status) {
    case 400:
      return absl::StatusCode::kInvalidArgument;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kNotFound;
    case 409:
      return absl::StatusCode::kAborted;
    case 410:
      return absl::StatusCode::kFailedPrecondition;  // Gone: resource version expired
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 504:
      return absl::StatusCode::kDeadlineExceeded;
    default:
      return status >= 500 ? absl::StatusCode::kUnavailable : absl::StatusCode::kUnknown;
  }
}

// The API server answers errors with a v1.Status whose message says it best.
std::string ErrorText(const std::string& body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("message") && j["message"].is_string()) {
    return j["message"].get<std::string>();
  }
  std::string text(absl::StripAsciiWhitespace(body.substr(0, 200)));
  return text.empty() ? "(empty body)" : text;
}

}  // namespace

int HttpStatusOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kHttpStatusPayload);
  int code = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &code)) return 0;
  return code;
}

absl::Status KubeHttpError(int status, const std::string& what, const std::string& body) {
  absl::Status err(CodeOfHttp(status),
                   absl::StrCat(what, ": HTTP ", status, ": ", ErrorText(body)));
  err.SetPayload(kHttpStatusPayload, absl::Cord(std::to_string(status)));
  return err;
}

std::string QueryEscape(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string ServiceAccountOfToken(const std::string& token) {
  const std::vector<std::string> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) return "";
  std::string claims;
  if (!absl::WebSafeBase64Unescape(parts[1], &claims)) return "";
  const nlohmann::json j = nlohmann::json::parse(claims, nullptr, false);
  if (!j.is_object() || !j.contains("sub") || !j["sub"].is_string()) return "";
  // "system:serviceaccount:<namespace>:<name>"
  const std::vector<std::string> sub = absl::StrSplit(j["sub"].get<std::string>(), ':');
  if (sub.size() != 4 || sub[0] != "system" || sub[1] != "serviceaccount") return "";
  return absl::StrCat(sub[2], "/", sub[3]);
}

// The token, re-read only when the file changed: a stat per request is cheap, a
// read and a log line per request are not.
struct KubeApiClient::TokenCache {
  std::mutex mu;
  std::string file;
  std::string token;
  bool loaded = false;
  timespec mtime{};
  off_t size = -1;

  std::string Get() {
    std::lock_guard lock(mu);
    if (file.empty()) return token;
    struct stat st;
    if (::stat(file.c_str(), &st) != 0) {
      // Keep the last token: the kubelet swaps projected tokens atomically, so a
      // missing file is a mount problem the next answer (401) will show anyway.
      if (!loaded)
        LogWarn("cannot stat the bearer token file",
                {{"file", file}, {"err", std::strerror(errno)}});
      return token;
    }
    if (loaded && st.st_size == size && st.st_mtim.tv_sec == mtime.tv_sec &&
        st.st_mtim.tv_nsec == mtime.tv_nsec) {
      return token;
    }
    std::ifstream in(file, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in) {
      LogWarn("cannot read the bearer token file", {{"file", file}});
      return token;
    }
    std::string fresh(absl::StripAsciiWhitespace(ss.str()));
    if (loaded && fresh != token) {
      LogInfo("bearer token file changed; using the new token", {{"file", file}});
    }
    token = std::move(fresh);
    mtime = st.st_mtim;
    size = st.st_size;
    loaded = true;
    return token;
  }

  // After a 401 the next request reads the file again even if stat looks the same
  // (a rewrite within the file system's timestamp granularity).
  void Invalidate() {
    std::lock_guard lock(mu);
    size = -1;
  }
};

// What one transfer collects; libcurl's callbacks get it as their user pointer.
struct KubeApiClient::Transfer {
  const CurlApi* curl = nullptr;
  CURL* easy = nullptr;
  bool streaming = false;
  std::function<bool(std::string_view)> on_data;
  const KubeStreamOptions* stream_options = nullptr;
  int status = 0;
  bool success = false;  // the final answer is 2xx
  bool consumer_stopped = false;
  bool too_big = false;
  std::string body;  // the whole body of a Get; the start of an error answer
  std::chrono::steady_clock::time_point last_activity = std::chrono::steady_clock::now();

  static size_t OnHeader(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    t->last_activity = std::chrono::steady_clock::now();
    const std::string_view line(data, size * n);
    if (line == "\r\n" || line == "\n") {  // the end of one answer's headers
      long code = 0;
      t->curl->easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
      if (code >= 200) {  // 1xx answers are followed by the real one
        t->status = static_cast<int>(code);
        t->success = code < 300;
        t->body.clear();
        if (t->success && t->streaming && t->stream_options->on_open) {
          t->stream_options->on_open();
        }
      }
    }
    return size * n;
  }

  static size_t OnBody(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    t->last_activity = std::chrono::steady_clock::now();
    const size_t len = size * n;
    if (t->streaming && t->success) {
      if (!t->on_data(std::string_view(data, len))) {
        t->consumer_stopped = true;
        return 0;  // ends the transfer (CURLE_WRITE_ERROR)
      }
      return len;
    }
    const size_t cap = t->success ? kMaxBody : kMaxErrorBody;
    if (t->body.size() + len > cap) {
      if (t->success) {
        t->too_big = true;
        return 0;
      }
      t->body.append(data, cap - t->body.size());
      return len;
    }
    t->body.append(data, len);
    return len;
  }
};

KubeApiClient::KubeApiClient(KubeEndpoint endpoint, KubeClientOptions options)
    : endpoint_(std::move(endpoint)), options_(options), token_(std::make_unique<TokenCache>()) {
  token_->file = endpoint_.token_file;
  token_->token = endpoint_.token;
  if (!endpoint_.token.empty()) token_->file.clear();  // inline wins, as documented
}

KubeApiClient::~KubeApiClient() = default;

std::string KubeApiClient::Token() { return token_->Get(); }

absl::StatusOr<KubeResponse> KubeApiClient::Get(const std::string& path_and_query,
                                                std::chrono::milliseconds timeout,
                                                const std::atomic<bool>* stop) {
  absl::StatusOr<const CurlApi*> curl = Curl();
  if (!curl.ok()) return curl.status();
  Transfer t;
  t.curl = *curl;
  CURL* easy = t.curl->easy_init();
  if (easy == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  t.easy = easy;
  t.curl->easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  // Pod lists are large and compress ~10x; the API server gzips when asked.
  t.curl->easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
  absl::Status s = Perform(path_and_query, &t, stop);
  t.curl->easy_cleanup(easy);
  if (!s.ok()) return s;
  return KubeResponse{t.status, std::move(t.body)};
}

absl::Status KubeApiClient::Stream(const std::string& path_and_query,
                                   std::function<bool(std::string_view)> on_data,
                                   const std::atomic<bool>* stop,
                                   const KubeStreamOptions& options) {
  absl::StatusOr<const CurlApi*> curl = Curl();
  if (!curl.ok()) return curl.status();
  Transfer t;
  t.curl = *curl;
  CURL* easy = t.curl->easy_init();
  if (easy == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  t.easy = easy;
  t.streaming = true;
  t.on_data = std::move(on_data);
  t.stream_options = &options;
  absl::Status s = Perform(path_and_query, &t, stop);
  t.curl->easy_cleanup(easy);
  if (!s.ok()) return s;
  if (!t.success) {
    return KubeHttpError(t.status, absl::StrCat("GET ", endpoint_.server, path_and_query), t.body);
  }
  return absl::OkStatus();
}

absl::Status KubeApiClient::Perform(const std::string& path_and_query, Transfer* t,
                                    const std::atomic<bool>* stop) {
  const CurlApi& c = *t->curl;
  CURL* easy = t->easy;
  std::string server = endpoint_.server;
  while (!server.empty() && server.back() == '/') server.pop_back();
  const std::string url = server + path_and_query;
  char error[CURL_ERROR_SIZE] = {0};
  c.easy_setopt(easy, CURLOPT_URL, url.c_str());
  c.easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  c.easy_setopt(easy, CURLOPT_ERRORBUFFER, error);
  c.easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  c.easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                static_cast<long>(options_.connect_timeout.count()));
  // A watch may carry nothing for minutes: keepalive probes find a peer that is gone.
  c.easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  c.easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, 30L);
  c.easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, 10L);
  c.easy_setopt(easy, CURLOPT_USERAGENT, "kmon");
  c.easy_setopt(easy, CURLOPT_HEADERFUNCTION, &Transfer::OnHeader);
  c.easy_setopt(easy, CURLOPT_HEADERDATA, t);
  c.easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Transfer::OnBody);
  c.easy_setopt(easy, CURLOPT_WRITEDATA, t);

  // TLS: libcurl copies blobs (CURL_BLOB_COPY), so the strings need not outlive setopt.
  auto blob = [](const std::string& pem) {
    return curl_blob{const_cast<char*>(pem.data()), pem.size(), CURL_BLOB_COPY};
  };
  if (!endpoint_.ca_data.empty()) {
    curl_blob b = blob(endpoint_.ca_data);
    c.easy_setopt(easy, CURLOPT_CAINFO_BLOB, &b);
  } else if (!endpoint_.ca_file.empty()) {
    c.easy_setopt(easy, CURLOPT_CAINFO, endpoint_.ca_file.c_str());
  }
  if (endpoint_.insecure_skip_tls_verify) {
    c.easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
    c.easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!endpoint_.client_cert_data.empty()) {
    curl_blob b = blob(endpoint_.client_cert_data);
    c.easy_setopt(easy, CURLOPT_SSLCERT_BLOB, &b);
    c.easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
  } else if (!endpoint_.client_cert_file.empty()) {
    c.easy_setopt(easy, CURLOPT_SSLCERT, endpoint_.client_cert_file.c_str());
  }
  if (!endpoint_.client_key_data.empty()) {
    curl_blob b = blob(endpoint_.client_key_data);
    c.easy_setopt(easy, CURLOPT_SSLKEY_BLOB, &b);
    c.easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
  } else if (!endpoint_.client_key_file.empty()) {
    c.easy_setopt(easy, CURLOPT_SSLKEY, endpoint_.client_key_file.c_str());
  }

  curl_slist* headers = c.slist_append(nullptr, "Accept: application/json");
  const std::string token = token_->Get();
  if (!token.empty()) {
    headers = c.slist_append(headers, absl::StrCat("Authorization: Bearer ", token).c_str());
  }
  c.easy_setopt(easy, CURLOPT_HTTPHEADER, headers);

  // The multi interface, polled in short slices, so a stop flag is seen within
  // stop_poll even while the server is silent (curl_easy_perform would only call
  // back about once a second, and not at all while connecting).
  CURLM* multi = c.multi_init();
  c.multi_add_handle(multi, easy);
  bool cancelled = false, idle = false;
  CURLcode result = CURLE_OK;
  const auto idle_timeout =
      t->stream_options != nullptr ? t->stream_options->idle_timeout : std::chrono::milliseconds(0);
  t->last_activity = std::chrono::steady_clock::now();
  for (;;) {
    if (stop != nullptr && stop->load()) {
      cancelled = true;
      break;
    }
    int running = 0;
    const CURLMcode mc = c.multi_perform(multi, &running);
    if (mc != CURLM_OK) {
      result = CURLE_FAILED_INIT;
      std::snprintf(error, sizeof error, "curl_multi_perform: %s", c.multi_strerror(mc));
      break;
    }
    if (running == 0) {
      int queued = 0;
      while (CURLMsg* msg = c.multi_info_read(multi, &queued)) {
        if (msg->msg == CURLMSG_DONE) result = msg->data.result;
      }
      break;
    }
    if (idle_timeout.count() > 0 &&
        std::chrono::steady_clock::now() - t->last_activity > idle_timeout) {
      idle = true;
      break;
    }
    c.multi_poll(multi, nullptr, 0, static_cast<int>(options_.stop_poll.count()), nullptr);
  }
  c.multi_remove_handle(multi, easy);
  c.multi_cleanup(multi);
  c.slist_free_all(headers);

  if (t->status == 401) token_->Invalidate();
  const std::string what = absl::StrCat("GET ", url);
  if (cancelled) return absl::CancelledError(absl::StrCat(what, ": stopped"));
  if (idle) {
    return absl::DeadlineExceededError(absl::StrCat(
        what, ": no data for ", idle_timeout.count() / 1000.0, "s; the stream is taken as dead"));
  }
  if (t->consumer_stopped) return absl::OkStatus();
  if (t->too_big) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": answer larger than ", kMaxBody >> 20, " MiB"));
  }
  if (result != CURLE_OK) {
    const std::string why = error[0] != '\0' ? error : c.easy_strerror(result);
    if (result == CURLE_OPERATION_TIMEDOUT) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": ", why));
    }
    return absl::UnavailableError(absl::StrCat(what, ": ", why));
  }
  return absl::OkStatus();
}

}  // namespace kmon
