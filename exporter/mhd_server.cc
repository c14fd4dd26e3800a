#include "exporter/mhd_server.h"

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "base/buffer_pool.h"
#include "base/gzip.h"
#include "base/log.h"
#include "exporter/worker_pool.h"

namespace kmon {
namespace {

using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kNever = Clock::time_point::max();

// Bodies are read and dropped (no handler takes one); past this the answer is 413.
constexpr size_t kMaxBody = 64 * 1024;
// Below this a gzip header and trailer (18 bytes) eat most of what deflate saves.
constexpr size_t kMinGzipBody = 256;

// libmicrohttpd reports why MHD_start_daemon failed only through its logger. During Start
// the starting thread points this at a buffer, so the error can carry the reason.
thread_local std::vector<std::string>* start_messages = nullptr;

void LogMhd(void* /*cls*/, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  std::string msg(absl::StripTrailingAsciiWhitespace(buf));
  if (start_messages != nullptr) {
    start_messages->push_back(std::move(msg));
  } else {
    // Per connection (a refused connection, a failed handshake): a flood would flood the
    // log too, so only at debug level.
    LogDebug("libmicrohttpd", {{"msg", msg}});
  }
}

// URIs reach the handler undecoded, so a query value's "%2B" and '+' stay apart until
// PercentDecode tells them apart.
size_t KeepEscapes(void* /*cls*/, MHD_Connection* /*c*/, char* s) { return std::strlen(s); }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// libmicrohttpd copies what the options point to, and takes it as non-const.
void* Ptr(const std::string& s) { return const_cast<char*>(s.c_str()); }

bool SafeHeaderValue(absl::string_view s) { return s.find_first_of("\r\n") == std::string::npos; }

std::string Header(const HttpRequest& req, const std::string& lower_name) {
  const auto it = req.headers.find(lower_name);
  return it == req.headers.end() ? std::string() : it->second;
}

// One open socket, from accept to close (the socket context).
struct Conn {
  int fd = -1;
  Clock::time_point deadline = kNever;  // closed by the reaper once past it
  bool cert_checked = false;
};

// One request, from its headers to its completion (the request context).
struct Pending {
  enum class Phase { kBody, kRunning, kAnswered };
  Phase phase = Phase::kBody;
  HttpRequest req;
  size_t body_bytes = 0;
  int status = 0;
  MHD_Response* response = nullptr;  // built by the worker, queued by the event thread
};

// Bodies of this size or more are scrapes worth giving memory back after (about 4k
// series of text); below, what they leave in the heap is not worth the walk.
constexpr size_t kTrimAfterBody = 512 * 1024;

// A response body on its way out, and the pool its buffer goes back to once sent.
struct OwnedBody {
  std::string text;
  BufferPool* pool;
};

// After a body went out: its buffer back to its pool, and after a large one, or one
// that freed a buffer a burst had grown, the heap's free pages back to the kernel (the
// families and labels of thousands of series, freed by then).
void BodySent(void* cls) {
  auto* owned = static_cast<OwnedBody*>(cls);
  const bool large = owned->text.size() >= kTrimAfterBody;
  const size_t freed = owned->pool->Give(std::move(owned->text));
  delete owned;
  if (large || freed >= kTrimAfterBody) ReturnFreeMemory();
}

}  // namespace

BufferPool& ResponseBuffers() {
  static BufferPool* pool = new BufferPool();  // never destroyed: responses may outlive main
  return *pool;
}

namespace {

BufferPool& GzipBuffers() {
  static BufferPool* pool = new BufferPool();
  return *pool;
}

// The finished response, gzipped for a client that takes it (Prometheus sends
// "Accept-Encoding: gzip" on every scrape: 20k series are ~2.5 MB of text, ~10x less
// gzipped), into buffers kept from one scrape to the next.
MHD_Response* BuildResponse(const HttpRequest& req, HttpResponse resp) {
  auto* owned = new OwnedBody{std::move(resp.body), &ResponseBuffers()};
  bool gzip = false;
  if (resp.compressible && owned->text.size() >= kMinGzipBody &&
      AcceptsGzip(Header(req, "accept-encoding"))) {
    std::string gz = GzipBuffers().Take();
    absl::Status st = GzipInto(owned->text, kGzipFastest, &gz);
    if (st.ok()) {
      ResponseBuffers().Give(std::move(owned->text));
      owned->text = std::move(gz);
      owned->pool = &GzipBuffers();
      gzip = true;
    } else {
      GzipBuffers().Give(std::move(gz));
      LogWarn("gzip failed; sending the response uncompressed", {{"err", st.ToString()}});
    }
  }
  // The body moves into the response, which hands it back once sent: no copy of a scrape.
  MHD_Response* r = MHD_create_response_from_buffer_with_free_callback_cls(
      owned->text.size(), owned->text.data(), &BodySent, owned);
  if (r == nullptr) {
    BodySent(owned);
    return nullptr;
  }
  MHD_add_response_header(r, "Content-Type", resp.content_type.c_str());
  for (const auto& [name, value] : resp.headers) {
    // Content-Length is libmicrohttpd's to set; CR/LF in a handler's header would split the
    // response.
    if (absl::EqualsIgnoreCase(name, "content-length") || !SafeHeaderValue(name) ||
        !SafeHeaderValue(value)) {
      continue;
    }
    MHD_add_response_header(r, name.c_str(), value.c_str());
  }
  if (resp.compressible) MHD_add_response_header(r, "Vary", "Accept-Encoding");
  if (gzip) MHD_add_response_header(r, "Content-Encoding", "gzip");
  return r;
}

MHD_Result QueueText(MHD_Connection* c, int status, const std::string& text) {
  HttpResponse resp;
  resp.status = status;
  resp.body = text;
  MHD_Response* r = BuildResponse(HttpRequest{}, std::move(resp));
  if (r == nullptr) return MHD_NO;
  const MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

// exporter-toolkit min_version -> GnuTLS priorities.
std::string TlsPriorities(const std::string& min_version) {
  std::string p = "NORMAL:-VERS-ALL:+VERS-TLS1.3";
  if (min_version == "TLS13") return p;
  p += ":+VERS-TLS1.2";
  if (min_version == "TLS12" || min_version.empty()) return p;
  p += ":+VERS-TLS1.1";
  if (min_version == "TLS11") return p;
  return p + ":+VERS-TLS1.0";
}

class MhdServerImpl final : public MhdServer {
 public:
  MhdServerImpl(MhdServerOptions options, Router router)
      : options_(std::move(options)),
        router_(std::move(router)),
        workers_(std::make_unique<WorkerPool>(options_.max_requests)),
        probes_(std::make_unique<WorkerPool>(options_.probe_requests)) {}

  ~MhdServerImpl() override {
    {
      // From here on every request is refused without a worker; the pools can drain.
      std::lock_guard lock(dispatch_mu_);
      stopping_ = true;
    }
    // Their running handlers resume their connections: libmicrohttpd must not be stopped
    // with a connection suspended.
    workers_.reset();
    probes_.reset();
    if (daemon_ != nullptr) MHD_stop_daemon(daemon_);  // closes the sockets, listener too
    {
      std::lock_guard lock(conns_mu_);
      reaper_stop_ = true;
      reap_cv_.notify_all();
    }
    if (reaper_.joinable()) reaper_.join();
  }

  absl::Status Start() {
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (options_.ipv6) flags |= MHD_USE_IPv6;
    const auto fn = [](auto f) { return reinterpret_cast<intptr_t>(f); };
    const unsigned idle_s =
        static_cast<unsigned>((options_.idle_timeout.count() + 999) / 1000);  // at least 1 s
    std::vector<MHD_OptionItem> opts = {
        {MHD_OPTION_EXTERNAL_LOGGER, fn(&LogMhd), nullptr},
        {MHD_OPTION_LISTEN_SOCKET, options_.listen_fd, nullptr},
        // One above ours: Accept refuses at max_connections and closes the socket at once,
        // where libmicrohttpd at its own limit stops accepting and leaves clients waiting.
        {MHD_OPTION_CONNECTION_LIMIT, options_.max_connections + 1, nullptr},
        {MHD_OPTION_CONNECTION_TIMEOUT, idle_s, nullptr},
        {MHD_OPTION_NOTIFY_CONNECTION, fn(&OnConnection), this},
        {MHD_OPTION_NOTIFY_COMPLETED, fn(&OnCompleted), this},
        {MHD_OPTION_UNESCAPE_CALLBACK, fn(&KeepEscapes), nullptr},
    };
    if (options_.tls.has_value()) {
      flags |= MHD_USE_TLS;
      priorities_ = TlsPriorities(options_.tls->min_version);
      opts.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0, Ptr(options_.tls->cert_pem)});
      opts.push_back({MHD_OPTION_HTTPS_MEM_KEY, 0, Ptr(options_.tls->key_pem)});
      opts.push_back({MHD_OPTION_HTTPS_PRIORITIES, 0, Ptr(priorities_)});
      if (!options_.tls->client_ca_pem.empty()) {
        // With a trust list libmicrohttpd asks every client for a certificate (and does not
        // insist); ClientCertAllowed applies client_auth_type once the handshake is done.
        opts.push_back({MHD_OPTION_HTTPS_MEM_TRUST, 0, Ptr(options_.tls->client_ca_pem)});
      }
    }
    opts.push_back({MHD_OPTION_END, 0, nullptr});

    reaper_ = std::thread([this] { Reap(); });
    std::vector<std::string> messages;
    start_messages = &messages;
    daemon_ = MHD_start_daemon(flags, 0, &Accept, this, &OnRequest, this, MHD_OPTION_ARRAY,
                               opts.data(), MHD_OPTION_END);
    start_messages = nullptr;
    if (daemon_ == nullptr) {  // libmicrohttpd has closed the listening socket
      if (messages.empty()) messages.emplace_back("MHD_start_daemon failed");
      return absl::FailedPreconditionError(
          absl::StrCat("starting libmicrohttpd: ", absl::StrJoin(messages, "; ")));
    }
    return absl::OkStatus();
  }

 private:
  static MHD_Result Accept(void* cls, const sockaddr* /*addr*/, socklen_t /*len*/) {
    auto* self = static_cast<MhdServerImpl*>(cls);
    std::lock_guard lock(self->conns_mu_);
    return self->conns_.size() < static_cast<size_t>(self->options_.max_connections) ? MHD_YES
                                                                                     : MHD_NO;
  }

  static void OnConnection(void* cls, MHD_Connection* c, void** socket_context,
                           MHD_ConnectionNotificationCode code) {
    auto* self = static_cast<MhdServerImpl*>(cls);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      auto* conn = new Conn;
      const MHD_ConnectionInfo* fd = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
      conn->fd = fd != nullptr ? fd->connect_fd : -1;
      *socket_context = conn;
      std::lock_guard lock(self->conns_mu_);
      self->conns_.insert(conn);
      self->SetDeadlineLocked(conn, Clock::now() + self->options_.header_timeout);
    } else {
      auto* conn = static_cast<Conn*>(*socket_context);
      if (conn == nullptr) return;
      {
        // libmicrohttpd closes the socket after this returns; the reaper, which shuts
        // sockets down under the same mutex, can no longer reach this one.
        std::lock_guard lock(self->conns_mu_);
        self->conns_.erase(conn);
      }
      delete conn;
      *socket_context = nullptr;
    }
  }

  static void OnCompleted(void* cls, MHD_Connection* c, void** req_cls,
                          MHD_RequestTerminationCode /*toe*/) {
    auto* self = static_cast<MhdServerImpl*>(cls);
    auto* p = static_cast<Pending*>(*req_cls);
    if (p != nullptr) {
      if (p->response != nullptr) MHD_destroy_response(p->response);
      delete p;
      *req_cls = nullptr;
    }
    // A kept-alive connection has idle_timeout for its next request's headers.
    if (Conn* conn = ConnOf(c)) self->SetDeadline(conn, Clock::now() + self->options_.idle_timeout);
  }

  static Conn* ConnOf(MHD_Connection* c) {
    const MHD_ConnectionInfo* i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i != nullptr ? static_cast<Conn*>(i->socket_context) : nullptr;
  }

  static MHD_Result OnRequest(void* cls, MHD_Connection* c, const char* url, const char* method,
                              const char* /*version*/, const char* /*upload_data*/,
                              size_t* upload_data_size, void** req_cls) {
    auto* self = static_cast<MhdServerImpl*>(cls);
    auto* p = static_cast<Pending*>(*req_cls);
    Conn* conn = ConnOf(c);
    if (p == nullptr) {  // the headers are in
      if (self->options_.tls.has_value() && conn != nullptr && !conn->cert_checked) {
        // As a TLS server that refuses the handshake would: no HTTP answer at all.
        if (!self->ClientCertAllowed(c)) return MHD_NO;
        conn->cert_checked = true;
      }
      p = new Pending;
      *req_cls = p;
      ReadRequest(c, url, method, &p->req);
      if (conn != nullptr) self->SetDeadline(conn, Clock::now() + self->options_.header_timeout);
      // libmicrohttpd takes a response only before the body or after all of it: a declared
      // length too large is answered now, one that grows too large (chunked) is cut.
      size_t length = 0;
      if (absl::SimpleAtoi(Header(p->req, "content-length"), &length) && length > kMaxBody) {
        p->phase = Pending::Phase::kAnswered;
        return QueueText(c, 413, "Request body too large");
      }
      return MHD_YES;
    }
    if (p->phase == Pending::Phase::kBody) {
      if (*upload_data_size != 0) {
        p->body_bytes += *upload_data_size;
        *upload_data_size = 0;
        return p->body_bytes > kMaxBody ? MHD_NO : MHD_YES;
      }
      if (conn != nullptr) self->SetDeadline(conn, kNever);  // the handler takes its time
      return self->Dispatch(c, p);
    }
    if (p->phase == Pending::Phase::kRunning) {  // resumed: the worker has the answer
      p->phase = Pending::Phase::kAnswered;
      MHD_Response* r = std::exchange(p->response, nullptr);
      if (r == nullptr) return MHD_NO;  // out of memory building it: cut the connection
      const MHD_Result ret = MHD_queue_response(c, p->status, r);
      MHD_destroy_response(r);
      return ret;
    }
    *upload_data_size = 0;  // answered already (413): drop the rest
    return MHD_YES;
  }

  MHD_Result Dispatch(MHD_Connection* c, Pending* p) {
    const bool probe = options_.probe_paths.count(p->req.path) != 0;
    {
      std::lock_guard lock(dispatch_mu_);
      WorkerPool* pool = stopping_ ? nullptr : probe ? probes_.get() : workers_.get();
      if (pool == nullptr || !pool->Reserve()) {
        p->phase = Pending::Phase::kAnswered;
        return QueueText(c, 503,
                         absl::StrCat("Limit of concurrent requests reached (",
                                      probe ? options_.probe_requests : options_.max_requests,
                                      "), try again later.\n"));
      }
      p->phase = Pending::Phase::kRunning;
      // Suspended before the task exists, so its resume always finds a suspended connection.
      MHD_suspend_connection(c);
      pool->Run([this, c, p] {
        try {
          HttpResponse resp = router_(p->req);
          p->status = resp.status;
          p->response = BuildResponse(p->req, std::move(resp));
        } catch (...) {
          p->response = nullptr;  // out of memory: the connection is cut
        }
        MHD_resume_connection(c);
      });
    }
    return MHD_YES;
  }

  static void ReadRequest(MHD_Connection* c, const char* url, const char* method,
                          HttpRequest* req) {
    req->method = method != nullptr ? method : "";
    req->path = PercentDecode(url != nullptr ? url : "/", /*form=*/false);
    MHD_get_connection_values(
        c, MHD_GET_ARGUMENT_KIND,
        [](void* cls, MHD_ValueKind, const char* key, const char* value) {
          auto* query = static_cast<std::map<std::string, std::string>*>(cls);
          query->emplace(PercentDecode(key, true),  // the first one wins
                         value != nullptr ? PercentDecode(value, true) : std::string());
          return MHD_YES;
        },
        &req->query);
    MHD_get_connection_values(
        c, MHD_HEADER_KIND,
        [](void* cls, MHD_ValueKind, const char* key, const char* value) {
          auto* headers = static_cast<std::map<std::string, std::string>*>(cls);
          const std::string v = value != nullptr ? value : "";
          auto [it, inserted] = headers->emplace(absl::AsciiStrToLower(key), v);
          if (!inserted) absl::StrAppend(&it->second, ", ", v);  // RFC 9110 5.3
          return MHD_YES;
        },
        &req->headers);
  }

  // client_auth_type, checked on the finished handshake (exporter-toolkit semantics).
  bool ClientCertAllowed(MHD_Connection* c) const {
    const std::string& type = options_.tls->client_auth_type;
    const bool verify = type == "RequireAndVerifyClientCert" || type == "VerifyClientCertIfGiven";
    const bool require = type == "RequireAndVerifyClientCert" || type == "RequireAnyClientCert";
    if (!verify && !require) return true;
    const MHD_ConnectionInfo* i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (i == nullptr || i->tls_session == nullptr) return false;
    auto session = static_cast<gnutls_session_t>(i->tls_session);
    unsigned n = 0;
    const bool given = gnutls_certificate_get_peers(session, &n) != nullptr && n > 0;
    if (!given) return !require;
    if (!verify) return true;
    unsigned status = 0;
    return gnutls_certificate_verify_peers2(session, &status) == GNUTLS_E_SUCCESS && status == 0;
  }

  void SetDeadline(Conn* conn, Clock::time_point t) {
    std::lock_guard lock(conns_mu_);
    SetDeadlineLocked(conn, t);
  }
  void SetDeadlineLocked(Conn* conn, Clock::time_point t) {
    conn->deadline = t;
    if (t < next_reap_) {
      next_reap_ = t;
      reap_cv_.notify_one();
    }
  }

  // Shuts down the sockets past their deadline; libmicrohttpd sees the end of the stream
  // and closes them. libmicrohttpd 0.9.75 has only an inactivity timeout, which a client
  // sending one byte now and then never meets.
  void Reap() {
    std::unique_lock lock(conns_mu_);
    while (!reaper_stop_) {
      const Clock::time_point now = Clock::now();
      Clock::time_point next = kNever;
      for (Conn* conn : conns_) {
        if (conn->deadline <= now) {
          if (conn->fd >= 0) ::shutdown(conn->fd, SHUT_RDWR);
          conn->deadline = kNever;
        } else if (conn->deadline < next) {
          next = conn->deadline;
        }
      }
      next_reap_ = next;
      if (next == kNever) {
        reap_cv_.wait(lock);
      } else {
        reap_cv_.wait_until(lock, next);
      }
    }
  }

  const MhdServerOptions options_;
  const Router router_;
  std::string priorities_;

  std::mutex dispatch_mu_;
  bool stopping_ = false;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<WorkerPool> probes_;

  std::mutex conns_mu_;
  std::condition_variable reap_cv_;
  std::unordered_set<Conn*> conns_;
  Clock::time_point next_reap_ = kNever;
  bool reaper_stop_ = false;
  std::thread reaper_;

  MHD_Daemon* daemon_ = nullptr;
};

}  // namespace

std::string PercentDecode(std::string_view s, bool form) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const int hi = HexDigit(s[i + 1]), lo = HexDigit(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += form && s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MhdServer>> MhdServer::Start(MhdServerOptions options,
                                                            Router router) {
  auto server = std::make_unique<MhdServerImpl>(std::move(options), std::move(router));
  if (absl::Status s = server->Start(); !s.ok()) return s;
  return std::unique_ptr<MhdServer>(std::move(server));
}

}  // namespace kmon
