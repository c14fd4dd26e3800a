#include "tests/kube_api_server.h"

#include <CivetServer.h>
#include <absl/strings/escaping.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

namespace kmon {
namespace {

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 410:
      return "Gone";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

const char* StatusReason(int code) {
  switch (code) {
    case 400:
      return "BadRequest";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "NotFound";
    case 410:
      return "Expired";
    case 503:
      return "ServiceUnavailable";
    default:
      return "InternalError";
  }
}

// A v1.Status as the API server words it.
nlohmann::json StatusObject(int code, const std::string& message) {
  return {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", nlohmann::json::object()},
          {"status", "Failure"}, {"message", message}, {"reason", StatusReason(code)},
          {"code", code}};
}

std::string DefaultMessage(int code) {
  switch (code) {
    case 401:
      return "Unauthorized";
    case 403:
      return "pods is forbidden: User \"system:serviceaccount:monitoring:kmon\" cannot list "
             "resource \"pods\" in API group \"\" at the cluster scope";
    default:
      return absl::StrCat("injected failure ", code);
  }
}

std::string NodeOf(const nlohmann::json& pod) {
  if (!pod.is_object()) return "";
  const auto spec = pod.find("spec");
  if (spec == pod.end() || !spec->is_object()) return "";
  return spec->value("nodeName", std::string());
}

std::string KeyOf(const nlohmann::json& pod) {
  const nlohmann::json& md = pod["metadata"];
  return absl::StrCat(md.value("namespace", std::string()), "/", md.value("name", std::string()));
}

// fieldSelector: empty, or spec.nodeName=X / spec.nodeName==X (the only field
// kmon selects on). nullopt for anything else: 400, as an unsupported field is.
std::optional<std::optional<std::string>> ParseSelector(const std::string& selector) {
  if (selector.empty()) return std::optional<std::string>();
  for (const char* prefix : {"spec.nodeName==", "spec.nodeName="}) {
    if (absl::StartsWith(selector, prefix)) {
      return std::optional<std::string>(selector.substr(strlen(prefix)));
    }
  }
  return std::nullopt;
}

bool Matches(const std::optional<std::string>& node, const nlohmann::json& pod) {
  return !node.has_value() || (!pod.is_null() && NodeOf(pod) == *node);
}

}  // namespace

class KubeApiServer::Handler : public CivetHandler {
 public:
  explicit Handler(KubeApiServer* server) : server_(server) {}
  using CivetHandler::handleGet;
  bool handleGet(CivetServer*, mg_connection* conn, int* status) override {
    server_->Serve(conn, status);
    return true;
  }

 private:
  KubeApiServer* server_;
};

KubeApiServer::KubeApiServer() : handler_(std::make_unique<Handler>(this)) {
  // Each open watch holds a civetweb worker thread; a test opens only a few, but
  // streams of clients that went away linger until their next write.
  const std::vector<std::string> options = {"listening_ports",   "127.0.0.1:0", "num_threads", "32",
                                            "enable_keep_alive", "no"};
  try {
    server_ = std::make_unique<CivetServer>(options);
  } catch (const CivetException&) {
    return;
  }
  server_->addHandler("/", *handler_);
  const std::vector<int> ports = server_->getListeningPorts();
  if (!ports.empty()) port_ = ports[0];
}

KubeApiServer::~KubeApiServer() {
  {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
  }
  cv_.notify_all();
  // mg_stop joins the workers, which see shutting_down_ and return. civetweb's
  // master thread looks at its stop flag only between polls of the listening socket
  // (2 s each); a connection wakes it, so tests do not wait that long per server.
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    server_.reset();
    stopped = true;
  });
  while (port_ != 0 && !stopped.load()) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stopper.join();
}

std::string KubeApiServer::url() const { return absl::StrCat("http://127.0.0.1:", port_); }

nlohmann::json KubeApiServer::MakePod(const std::string& ns, const std::string& name,
                                      const std::string& node, const std::string& ip) {
  nlohmann::json pod = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata",
       {{"name", name}, {"namespace", ns}, {"uid", absl::StrCat("uid-", ns, "-", name)}}},
      {"spec", {{"nodeName", node}, {"containers", {{{"name", "app"}, {"image", "busybox"}}}}}},
      {"status", {{"phase", "Running"}}}};
  if (!ip.empty()) pod["status"]["podIP"] = ip;
  return pod;
}

int64_t KubeApiServer::Record(std::string type, nlohmann::json object, nlohmann::json previous) {
  const int64_t rv = ++rv_;
  object["metadata"]["resourceVersion"] = std::to_string(rv);
  history_.push_back({rv, std::move(type), std::move(object), std::move(previous)});
  cv_.notify_all();
  return rv;
}

int64_t KubeApiServer::Upsert(nlohmann::json pod) {
  std::lock_guard lock(mu_);
  const std::string key = KeyOf(pod);
  const auto it = pods_.find(key);
  nlohmann::json previous = it == pods_.end() ? nlohmann::json() : it->second;
  const int64_t rv = Record(it == pods_.end() ? "ADDED" : "MODIFIED", pod, std::move(previous));
  pods_[key] = history_.back().object;
  return rv;
}

int64_t KubeApiServer::Delete(const std::string& ns, const std::string& name) {
  std::lock_guard lock(mu_);
  const auto it = pods_.find(absl::StrCat(ns, "/", name));
  if (it == pods_.end()) return 0;
  nlohmann::json last = it->second;
  pods_.erase(it);
  return Record("DELETED", last, last);
}

int64_t KubeApiServer::ResourceVersion() const {
  std::lock_guard lock(mu_);
  return rv_;
}

void KubeApiServer::RequireToken(std::string token) {
  std::lock_guard lock(mu_);
  token_ = std::move(token);
}

void KubeApiServer::FailRequests(int code, int count) {
  std::lock_guard lock(mu_);
  fail_code_ = code;
  fail_count_ = count;
}

void KubeApiServer::SetDelay(std::chrono::milliseconds delay) {
  std::lock_guard lock(mu_);
  delay_ = delay;
}

void KubeApiServer::ExpireNextContinue(int count) {
  std::lock_guard lock(mu_);
  expire_continue_ = count;
}

void KubeApiServer::SplitWrites(size_t bytes) {
  std::lock_guard lock(mu_);
  split_ = bytes;
}

void KubeApiServer::Compact() {
  std::lock_guard lock(mu_);
  compacted_rv_ = rv_;
}

template <typename F>
void KubeApiServer::ForEachStream(F f) {
  std::lock_guard lock(mu_);
  for (Stream* s : streams_) f(s);
  cv_.notify_all();
}

void KubeApiServer::HoldWatches() {
  ForEachStream([](Stream* s) { s->held = true; });
}
void KubeApiServer::DropWatches() {
  ForEachStream([](Stream* s) { s->drop = true; });
}
void KubeApiServer::EndWatches() {
  ForEachStream([](Stream* s) { s->end = true; });
}
void KubeApiServer::SendBookmarks() {
  ForEachStream([this](Stream* s) { s->bookmark_rv = rv_; });
}
void KubeApiServer::ExpireWatches() {
  std::lock_guard lock(mu_);  // at once: no watch may start from the old version between
  compacted_rv_ = rv_;
  for (Stream* s : streams_) s->expire = true;
  cv_.notify_all();
}

int KubeApiServer::Requests(KubeRequestKind kind) const {
  std::lock_guard lock(mu_);
  return static_cast<int>(std::count_if(seen_.begin(), seen_.end(),
                                        [&](const KubeSeenRequest& r) { return r.kind == kind; }));
}

int KubeApiServer::Responses(int status) const {
  std::lock_guard lock(mu_);
  return static_cast<int>(std::count_if(
      seen_.begin(), seen_.end(), [&](const KubeSeenRequest& r) { return r.status == status; }));
}

std::vector<KubeSeenRequest> KubeApiServer::Seen() const {
  std::lock_guard lock(mu_);
  return seen_;
}

std::vector<std::string> KubeApiServer::WatchVersions() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const KubeSeenRequest& r : seen_) {
    if (r.kind != KubeRequestKind::kWatch) continue;
    const auto it = r.query.find("resourceVersion");
    out.push_back(it == r.query.end() ? "" : it->second);
  }
  return out;
}

int KubeApiServer::OpenWatches() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(streams_.size());
}

int KubeApiServer::EventsSent() const {
  std::lock_guard lock(mu_);
  return events_sent_;
}

int KubeApiServer::BookmarksSent() const {
  std::lock_guard lock(mu_);
  return bookmarks_sent_;
}

int KubeApiServer::Answer(mg_connection* conn, int status, const nlohmann::json& body) {
  const std::string text = body.dump();
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            status, Reason(status), text.size());
  mg_write(conn, text.data(), text.size());
  return status;
}

void KubeApiServer::Serve(mg_connection* conn, int* status) {
  const mg_request_info* ri = mg_get_request_info(conn);
  const std::string path = ri->local_uri != nullptr ? ri->local_uri : "";
  const std::string raw_query = ri->query_string != nullptr ? ri->query_string : "";
  KubeSeenRequest req;
  for (absl::string_view pair : absl::StrSplit(raw_query, '&', absl::SkipEmpty())) {
    const std::string key(pair.substr(0, pair.find('=')));
    std::string value;
    CivetServer::getParam(raw_query, key.c_str(), value);
    req.query.emplace(key, value);
  }
  const auto has = [&](const char* k) { return req.query.count(k) > 0; };
  if (path == "/api/v1/pods") {
    req.kind =
        has("watch") && req.query["watch"] != "0" && req.query["watch"] != "false"
            ? KubeRequestKind::kWatch
            : (has("continue") && !req.query["continue"].empty() ? KubeRequestKind::kListContinue
                                                                 : KubeRequestKind::kList);
  }
  if (const char* auth = mg_get_header(conn, "Authorization");
      auth != nullptr && absl::StartsWith(auth, "Bearer ")) {
    req.token = std::string(auth).substr(7);
  }

  int fail = 0;
  size_t index = 0;  // seen_ only grows: the index stays valid
  {
    std::unique_lock lock(mu_);
    index = seen_.size();
    seen_.push_back(req);
    if (delay_.count() > 0) cv_.wait_for(lock, delay_, [this] { return shutting_down_; });
    if (shutting_down_) return;
    if (!token_.empty() && req.token != token_) {
      fail = 401;
    } else if (fail_count_ != 0) {
      fail = fail_code_;
      if (fail_count_ > 0) --fail_count_;
    }
    // The status is known now except for lists and watches, which fill it in.
    seen_[index].status = fail != 0 ? fail : (path == "/api/v1/pods" ? 200 : 404);
  }
  const auto set_status = [&](int code) {
    std::lock_guard lock(mu_);
    seen_[index].status = code;
    *status = code;
  };
  if (fail != 0) {
    *status = Answer(conn, fail, StatusObject(fail, DefaultMessage(fail)));
    return;
  }
  if (path != "/api/v1/pods") {
    *status =
        Answer(conn, 404, StatusObject(404, "the server could not find the requested resource"));
    return;
  }
  if (req.kind == KubeRequestKind::kWatch) {
    *status = 200;
    ServeWatch(conn, req.query);
    return;
  }
  set_status(ServeList(conn, req.query));
}

int KubeApiServer::ServeList(mg_connection* conn, const std::map<std::string, std::string>& q) {
  const auto get = [&](const char* k) {
    const auto it = q.find(k);
    return it == q.end() ? std::string() : it->second;
  };
  const auto node = ParseSelector(get("fieldSelector"));
  if (!node.has_value()) {
    return Answer(
        conn, 400,
        StatusObject(400, absl::StrCat("field label not supported: ", get("fieldSelector"))));
  }
  int64_t limit = 0;
  if (!get("limit").empty() && !absl::SimpleAtoi(get("limit"), &limit)) limit = 0;
  std::lock_guard lock(mu_);
  int id = 0;
  size_t start = 0;
  if (const std::string token = get("continue"); !token.empty()) {
    std::string decoded;
    nlohmann::json c;
    if (absl::Base64Unescape(token, &decoded)) c = nlohmann::json::parse(decoded, nullptr, false);
    const bool known = c.is_object() && snapshots_.count(c.value("id", 0)) > 0;
    if (expire_continue_ > 0 || !known) {
      if (expire_continue_ > 0) --expire_continue_;
      return Answer(conn, 410,
                    StatusObject(410,
                                 "The provided continue parameter is too old to display a "
                                 "consistent list result. You can start a new list without the "
                                 "continue parameter."));
    }
    id = c["id"].get<int>();
    start = c["start"].get<size_t>();
  } else {
    // A consistent snapshot, as etcd serves every page of one list at one revision.
    Snapshot snap{rv_, {}};
    for (const auto& [key, pod] : pods_) {
      if (Matches(*node, pod)) snap.pods.push_back(pod);
    }
    id = next_snapshot_++;
    snapshots_[id] = std::move(snap);
  }
  const Snapshot& snap = snapshots_[id];
  const size_t end =
      limit > 0 ? std::min(snap.pods.size(), start + static_cast<size_t>(limit)) : snap.pods.size();
  nlohmann::json body = {{"kind", "PodList"},
                         {"apiVersion", "v1"},
                         {"metadata", {{"resourceVersion", std::to_string(snap.rv)}}},
                         {"items", nlohmann::json::array()}};
  for (size_t i = start; i < end; ++i) {
    nlohmann::json item = snap.pods[i];
    item.erase("kind");  // list items carry no kind/apiVersion, as from the real server
    item.erase("apiVersion");
    body["items"].push_back(std::move(item));
  }
  if (end < snap.pods.size()) {
    const nlohmann::json c = {{"v", "meta.k8s.io/v1"}, {"rv", snap.rv}, {"id", id}, {"start", end}};
    body["metadata"]["continue"] = absl::Base64Escape(c.dump());
    body["metadata"]["remainingItemCount"] = snap.pods.size() - end;
  }
  return Answer(conn, 200, body);
}

bool KubeApiServer::WriteChunk(mg_connection* conn, const std::string& data) {
  char head[32];
  const int n = std::snprintf(head, sizeof head, "%zx\r\n", data.size());
  return mg_write(conn, head, static_cast<size_t>(n)) > 0 &&
         (data.empty() || mg_write(conn, data.data(), data.size()) > 0) &&
         mg_write(conn, "\r\n", 2) > 0;
}

bool KubeApiServer::WriteLine(mg_connection* conn, const nlohmann::json& event) {
  const std::string line = event.dump() + "\n";
  size_t split;
  {
    std::lock_guard lock(mu_);
    split = split_;
  }
  if (split == 0) return WriteChunk(conn, line);
  for (size_t at = 0; at < line.size(); at += split) {
    if (!WriteChunk(conn, line.substr(at, split))) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

void KubeApiServer::ServeWatch(mg_connection* conn, const std::map<std::string, std::string>& q) {
  const auto get = [&](const char* k) {
    const auto it = q.find(k);
    return it == q.end() ? std::string() : it->second;
  };
  const auto node = ParseSelector(get("fieldSelector"));
  if (!node.has_value()) {
    Answer(conn, 400, StatusObject(400, "field label not supported"));
    return;
  }
  int64_t from = 0, timeout_s = 0;
  const std::string rv_text = get("resourceVersion");
  if (!rv_text.empty() && !absl::SimpleAtoi(rv_text, &from)) {
    Answer(conn, 400, StatusObject(400, "invalid resourceVersion"));
    return;
  }
  if (!absl::SimpleAtoi(get("timeoutSeconds"), &timeout_s) || timeout_s <= 0) timeout_s = 1800;
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n");
  const auto finish = [&] { WriteChunk(conn, ""); };
  const auto too_old = [&](int64_t current) {
    return nlohmann::json{
        {"type", "ERROR"},
        {"object",
         StatusObject(410, absl::StrCat("too old resource version: ", from, " (", current, ")"))}};
  };

  Stream stream;
  stream.allow_bookmarks = get("allowWatchBookmarks") == "true";
  std::vector<nlohmann::json> lines;
  size_t cursor = 0;
  {
    std::lock_guard lock(mu_);
    if (from != 0 && from < compacted_rv_) {
      lines.push_back(too_old(rv_));
    } else if (from == 0) {
      // "Any version": the current state as synthetic ADDED events first.
      for (const auto& [key, pod] : pods_) {
        if (Matches(*node, pod)) lines.push_back({{"type", "ADDED"}, {"object", pod}});
      }
      cursor = history_.size();
    } else {
      while (cursor < history_.size() && history_[cursor].rv <= from) ++cursor;
    }
    streams_.insert(&stream);
  }
  const bool expired_at_once = !lines.empty() && lines[0]["type"] == "ERROR";
  bool ok = true;
  for (const auto& line : lines) ok = ok && WriteLine(conn, line);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (ok && !expired_at_once) {
    lines.clear();
    bool finish_after = false, drop = false;
    {
      std::unique_lock lock(mu_);
      cv_.wait_until(lock, deadline, [&] {
        return shutting_down_ || stream.drop || stream.expire || stream.end ||
               (!stream.held && (cursor < history_.size() || stream.bookmark_rv != 0));
      });
      if (shutting_down_ || stream.drop) {
        drop = true;
      } else if (stream.expire) {
        lines.push_back(too_old(rv_));
        finish_after = true;
      } else if (stream.end || std::chrono::steady_clock::now() >= deadline) {
        finish_after = true;
      } else if (!stream.held) {
        const auto bookmark = [&] {
          if (stream.allow_bookmarks) {
            lines.push_back(
                {{"type", "BOOKMARK"},
                 {"object",
                  {{"kind", "Pod"},
                   {"apiVersion", "v1"},
                   {"metadata", {{"resourceVersion", std::to_string(stream.bookmark_rv)}}}}}});
            ++bookmarks_sent_;
          }
          stream.bookmark_rv = 0;
        };
        for (; cursor < history_.size(); ++cursor) {
          const Event& e = history_[cursor];
          if (stream.bookmark_rv != 0 && e.rv > stream.bookmark_rv) bookmark();
          // As the API server's watch cache does: a pod that starts or stops matching
          // the selector is ADDED or DELETED for this watch.
          const bool now = e.type != "DELETED" && Matches(*node, e.object);
          const bool before = !e.previous.is_null() && Matches(*node, e.previous);
          std::string type;
          if (e.type == "DELETED") {
            type = before ? "DELETED" : "";
          } else if (now) {
            type = before ? "MODIFIED" : "ADDED";
          } else if (before) {
            type = "DELETED";
          }
          if (type.empty()) continue;
          lines.push_back({{"type", type}, {"object", e.object}});
          ++events_sent_;
        }
        if (stream.bookmark_rv != 0) bookmark();
      }
    }
    if (drop) break;
    for (const auto& line : lines) ok = ok && WriteLine(conn, line);
    if (finish_after) {
      if (ok) finish();
      break;
    }
  }
  if (expired_at_once && ok) finish();
  std::lock_guard lock(mu_);
  streams_.erase(&stream);
}

}  // namespace kmon
