#include "provider/kubernetes/pod_watcher.h"

#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>

#include <algorithm>
#include <utility>

#include "base/log.h"

namespace kmon {
namespace {

constexpr char kPods[] = "/api/v1/pods";

double NowUnix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string ResourceVersionOf(const nlohmann::json& obj) {
  if (!obj.is_object()) return "";
  const auto md = obj.find("metadata");
  if (md == obj.end() || !md->is_object()) return "";
  const auto rv = md->find("resourceVersion");
  return rv != md->end() && rv->is_string() ? rv->get<std::string>() : "";
}

std::string Excerpt(std::string_view s) {
  return s.size() > 120 ? std::string(s.substr(0, 120)) + "..." : std::string(s);
}

// Debian's abseil has its own string_view, not std::string_view.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

PodWatcher::PodWatcher(std::shared_ptr<KubeApiClient> client, PodWatchSink* sink,
                       PodWatcherOptions options)
    : client_(std::move(client)), sink_(sink), options_(std::move(options)) {}

PodWatcher::~PodWatcher() { Stop(); }

void PodWatcher::Start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable() || stop_.load()) return;
  thread_ = std::thread(&PodWatcher::Run, this);
}

void PodWatcher::Stop() {
  {
    // Under the lock, so a backoff between its check of stop_ and its wait cannot
    // miss the notification.
    std::lock_guard lock(mu_);
    stop_.store(true);
  }
  cv_.notify_all();
  std::thread t;
  {
    std::lock_guard lock(mu_);
    t = std::move(thread_);
  }
  if (t.joinable()) t.join();
  up_.store(false);
}

void PodWatcher::Run() {
  LogInfo("Kubernetes pod watch starting", {{"scope", options_.scope},
                                            {"server", client_->endpoint().server},
                                            {"field_selector", options_.field_selector}});
  while (!stop_.load()) {
    up_.store(false);
    if (absl::Status s = List(); !s.ok()) {
      if (stop_.load()) break;
      NoteFailure(s);
      Backoff();
      continue;
    }
    NoteSuccess();
    bool relist = false;
    while (!relist && !stop_.load()) {
      switch (Watch()) {
        case WatchEnd::kRewatch:
          break;
        case WatchEnd::kRelist:
          relist = true;
          break;
        case WatchEnd::kFailed:
          up_.store(false);
          Backoff();
          break;
        case WatchEnd::kStopped:
          break;
      }
    }
  }
  up_.store(false);
}

absl::Status PodWatcher::List() {
  sink_->BeginList();
  std::string continue_token;
  for (;;) {
    if (stop_.load()) return absl::CancelledError("stopped");
    std::string path = absl::StrCat(kPods, "?limit=", options_.page_limit);
    if (!options_.field_selector.empty()) {
      absl::StrAppend(&path, "&fieldSelector=", QueryEscape(options_.field_selector));
    }
    if (!continue_token.empty()) absl::StrAppend(&path, "&continue=", QueryEscape(continue_token));
    absl::StatusOr<KubeResponse> resp = client_->Get(path, options_.list_timeout, &stop_);
    if (!resp.ok()) return resp.status();
    const std::string what = absl::StrCat("LIST ", client_->endpoint().server, path);
    if (resp->status == 410 && !continue_token.empty()) {
      // The snapshot the pages came from is compacted away; only a new list is
      // consistent. What was applied so far is re-applied by it.
      LogInfo("Kubernetes pod list: continue token expired; listing again",
              {{"scope", options_.scope}});
      sink_->BeginList();
      continue_token.clear();
      continue;
    }
    if (resp->status != 200) return KubeHttpError(resp->status, what, resp->body);
    const nlohmann::json page = nlohmann::json::parse(resp->body, nullptr, false);
    if (!page.is_object() || !page.contains("items") || !page["items"].is_array()) {
      return absl::DataLossError(absl::StrCat(what, ": not a PodList: ", Excerpt(resp->body)));
    }
    for (const nlohmann::json& pod : page["items"]) sink_->Apply(WatchEventType::kAdded, pod);
    continue_token.clear();
    if (const auto md = page.find("metadata"); md != page.end() && md->is_object()) {
      if (const auto c = md->find("continue"); c != md->end() && c->is_string()) {
        continue_token = c->get<std::string>();
      }
    }
    if (!continue_token.empty()) continue;
    std::string rv = ResourceVersionOf(page);
    if (rv.empty()) return absl::DataLossError(absl::StrCat(what, ": list has no resourceVersion"));
    resource_version_ = std::move(rv);
    sink_->EndList();
    MarkSynced();
    return absl::OkStatus();
  }
}

PodWatcher::WatchEnd PodWatcher::Watch() {
  delivered_ = false;
  stream_error_ = absl::OkStatus();
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  const auto timeout_s = static_cast<int64_t>(static_cast<double>(options_.watch_timeout.count()) *
                                              (1 + jitter(rng_)));
  std::string path = absl::StrCat(kPods, "?watch=1");
  if (!options_.field_selector.empty()) {
    absl::StrAppend(&path, "&fieldSelector=", QueryEscape(options_.field_selector));
  }
  absl::StrAppend(&path, "&resourceVersion=", QueryEscape(resource_version_),
                  "&allowWatchBookmarks=true&timeoutSeconds=", timeout_s);

  WatchEnd end = WatchEnd::kRewatch;
  std::string buffer;
  KubeStreamOptions stream_options;
  stream_options.on_open = [this] { up_.store(true); };
  // The server ends the watch after timeoutSeconds; silence well past that means
  // the stream is dead in a way TCP keepalive did not catch.
  stream_options.idle_timeout = std::chrono::seconds(timeout_s + 30);
  const auto started = std::chrono::steady_clock::now();
  // Events are newline-delimited JSON, but chunks are cut anywhere: keep the
  // unfinished tail of one chunk for the next.
  const auto too_long = [&](std::string_view line) {
    stream_error_ = absl::ResourceExhaustedError(absl::StrCat(
        "watch event longer than ", options_.max_event_bytes, " bytes: ", Excerpt(line)));
    end = WatchEnd::kFailed;
    return false;
  };
  auto on_data = [&](std::string_view chunk) {
    buffer.append(chunk);
    size_t start = 0;
    for (size_t nl; (nl = buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
      const std::string_view line = std::string_view(buffer).substr(start, nl - start);
      if (line.size() > options_.max_event_bytes) return too_long(line);
      if (!HandleLine(line, &end)) return false;
    }
    buffer.erase(0, start);
    if (buffer.size() > options_.max_event_bytes) return too_long(buffer);
    return true;
  };
  const absl::Status s = client_->Stream(path, on_data, &stop_, stream_options);
  if (stop_.load()) return WatchEnd::kStopped;
  if (!s.ok()) {
    if (HttpStatusOf(s) == 410) {
      LogInfo("Kubernetes pod watch: resourceVersion expired; listing again",
              {{"scope", options_.scope}, {"resource_version", resource_version_}});
      return WatchEnd::kRelist;
    }
    NoteFailure(s);
    return WatchEnd::kFailed;
  }
  if (end == WatchEnd::kRewatch && !buffer.empty()) HandleLine(buffer, &end);
  if (end == WatchEnd::kFailed) {
    NoteFailure(stream_error_);
    return end;
  }
  if (end == WatchEnd::kRewatch && !delivered_ &&
      std::chrono::steady_clock::now() - started < std::chrono::seconds(1)) {
    // A server that ends every watch at once would otherwise be asked again in a
    // tight loop.
    NoteFailure(absl::UnavailableError("watch ended at once without an event"));
    return WatchEnd::kFailed;
  }
  return end;
}

bool PodWatcher::HandleLine(std::string_view line, WatchEnd* end) {
  const absl::string_view stripped = absl::StripAsciiWhitespace(Absl(line));
  line = std::string_view(stripped.data(), stripped.size());
  if (line.empty()) return true;
  const nlohmann::json event = nlohmann::json::parse(line, nullptr, false);
  const auto fail = [&](std::string why) {
    stream_error_ = absl::DataLossError(absl::StrCat("watch: ", why, ": ", Excerpt(line)));
    *end = WatchEnd::kFailed;
    return false;
  };
  if (!event.is_object() || !event.contains("type") || !event["type"].is_string() ||
      !event.contains("object") || !event["object"].is_object()) {
    return fail("not a watch event");
  }
  const std::string type = event["type"].get<std::string>();
  const nlohmann::json& object = event["object"];
  if (type == "ERROR") {
    // A v1.Status. 410: the version is older than the server keeps (compacted).
    const int code = object.value("code", 0);
    if (code == 410) {
      LogInfo("Kubernetes pod watch: resourceVersion expired; listing again",
              {{"scope", options_.scope}, {"resource_version", resource_version_}});
      *end = WatchEnd::kRelist;
      return false;
    }
    stream_error_ = absl::UnavailableError(absl::StrCat(
        "watch ERROR event (code ", code, "): ", object.value("message", std::string("?"))));
    *end = WatchEnd::kFailed;
    return false;
  }
  WatchEventType kind;
  if (type == "ADDED") {
    kind = WatchEventType::kAdded;
  } else if (type == "MODIFIED") {
    kind = WatchEventType::kModified;
  } else if (type == "DELETED") {
    kind = WatchEventType::kDeleted;
  } else if (type == "BOOKMARK") {
    // Only its resourceVersion is meaningful: the next watch resumes from it
    // instead of from an old version the server may already have compacted.
    std::string rv = ResourceVersionOf(object);
    if (!rv.empty()) resource_version_ = std::move(rv);
    MarkSynced();
    return true;
  } else {
    LogDebug("Kubernetes pod watch: unknown event type ignored",
             {{"scope", options_.scope}, {"type", type}});
    return true;
  }
  sink_->Apply(kind, object);
  std::string rv = ResourceVersionOf(object);
  if (!rv.empty()) resource_version_ = std::move(rv);
  MarkSynced();
  return true;
}

void PodWatcher::MarkSynced() {
  last_sync_unix_.store(NowUnix());
  if (!delivered_) {
    // This watch works: a break after it starts a new streak of failures. Not
    // counted at connect, so a stream that opens and then fails every time (an
    // event it cannot take) keeps backing off and logs once.
    delivered_ = true;
    NoteSuccess();
  }
}

void PodWatcher::NoteFailure(const absl::Status& status) {
  const int http = HttpStatusOf(status);
  // One log line per change of state at warn/error; repeats of the same state only
  // at debug, so an outage does not flood the log at every retry.
  const std::string state = absl::StrCat(absl::StatusCodeToString(status.code()), "/", http);
  const bool changed = state != last_failure_;
  last_failure_ = state;
  LogFields fields = {{"scope", options_.scope}, {"err", std::string(status.message())}};
  if (http == 401 || http == 403) {
    const std::string sa = ServiceAccountOfToken(client_->Token());
    fields.emplace_back("serviceaccount", sa.empty() ? "(unknown)" : sa);
    if (!client_->endpoint().token_file.empty()) {
      fields.emplace_back("token_file", client_->endpoint().token_file);
    }
  }
  if (!changed) {
    LogDebug("Kubernetes pod watch: still failing; retrying", fields);
  } else if (http == 401) {
    LogError(
        "Kubernetes API rejected kmon's credentials (401 Unauthorized): the token is invalid "
        "or expired; retrying with backoff and re-reading the token",
        fields);
  } else if (http == 403) {
    LogError(
        "Kubernetes API forbids kmon to read pods (403 Forbidden): kmon needs get/list/watch "
        "on pods at cluster scope (a ClusterRole bound to its serviceaccount by a "
        "ClusterRoleBinding); retrying with backoff",
        fields);
  } else {
    LogWarn("Kubernetes pod watch failed; retrying with backoff", fields);
  }
}

void PodWatcher::NoteSuccess() {
  backoff_ = std::chrono::milliseconds(0);
  if (last_failure_.empty()) return;
  LogInfo("Kubernetes pod watch works again", {{"scope", options_.scope}});
  last_failure_.clear();
}

void PodWatcher::Backoff() {
  backoff_ = backoff_.count() == 0 ? options_.backoff_initial
                                   : std::min(backoff_ * 2, options_.backoff_max);
  // Drawn from the upper half of the delay: many nodes that lost the API server at
  // the same moment do not all come back at the same moment.
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  const auto delay = std::chrono::duration_cast<std::chrono::milliseconds>(backoff_ * jitter(rng_));
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, delay, [this] { return stop_.load(); });
}

}  // namespace kmon
