// A small Kubernetes API server for tests, speaking the real protocol for pods:
// GET /api/v1/pods lists (fieldSelector spec.nodeName, limit/continue paging from
// a consistent snapshot) and watches (watch=1: chunked newline-delimited events
// from a resourceVersion, bookmarks, ERROR 410 once the version is compacted,
// timeoutSeconds). Errors are v1.Status objects as the API server sends them.
// The test drives it: it changes pods, injects faults and reads what was asked.
// Plain HTTP on 127.0.0.1, an ephemeral port.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

class CivetServer;
struct mg_connection;

namespace kmon {

enum class KubeRequestKind { kList, kListContinue, kWatch, kOther };

/// One request as the server saw it.
struct KubeSeenRequest {
  KubeRequestKind kind = KubeRequestKind::kOther;
  std::map<std::string, std::string> query;  // decoded
  std::string token;                         // from "Authorization: Bearer ..."
  int status = 0;                            // what it was answered with
};

class KubeApiServer {
 public:
  /// Listens at once; ok() tells whether it could.
  KubeApiServer();
  ~KubeApiServer();  // ends every stream, waits for civetweb's threads
  KubeApiServer(const KubeApiServer&) = delete;
  KubeApiServer& operator=(const KubeApiServer&) = delete;

  bool ok() const { return port_ != 0; }
  int port() const { return port_; }
  /// "http://127.0.0.1:PORT"
  std::string url() const;

  /// A minimal v1.Pod (uid "uid-<ns>-<name>").
  static nlohmann::json MakePod(const std::string& ns, const std::string& name,
                                const std::string& node, const std::string& ip = "");

  // --- Pods. Every change takes the next resourceVersion (set on the object) and is
  // --- sent to the open watches whose selector it concerns.
  /// Adds (ADDED) or replaces (MODIFIED) a pod; returns its resourceVersion.
  int64_t Upsert(nlohmann::json pod);
  /// Deletes a pod (DELETED); returns the deletion's resourceVersion, 0 if absent.
  int64_t Delete(const std::string& ns, const std::string& name);
  int64_t ResourceVersion() const;

  // --- Faults and controls.
  /// Requests without "Authorization: Bearer <token>" get 401 (empty: no check).
  void RequireToken(std::string token);
  /// The next `count` requests (-1: all, until FailRequests(0, 0)) are answered
  /// with a v1.Status of `code` (401, 403, 500, ...).
  void FailRequests(int code, int count = -1);
  /// Every request waits this long before it is answered.
  void SetDelay(std::chrono::milliseconds delay);
  /// The next `count` requests with a continue token get 410 Expired.
  void ExpireNextContinue(int count = 1);
  /// Watch event lines are written in pieces of at most `bytes` (0: whole), with a
  /// pause between, so a client sees events straddle its reads.
  void SplitWrites(size_t bytes);
  /// Forgets history: a watch from an older resourceVersion gets ERROR 410.
  void Compact();
  /// Open watch streams stop sending (as if the network stalled) until they end.
  void HoldWatches();
  /// Open watch streams send ERROR 410 "too old resource version" and end; the
  /// history is compacted, so resuming from their version fails too.
  void ExpireWatches();
  /// Open watch streams are cut mid-stream (no terminating chunk).
  void DropWatches();
  /// Open watch streams end normally (as at timeoutSeconds).
  void EndWatches();
  /// Open watch streams that asked for bookmarks get a BOOKMARK at the current version.
  void SendBookmarks();

  // --- What was asked.
  int Requests(KubeRequestKind kind) const;
  /// Answers given with this HTTP status.
  int Responses(int status) const;
  std::vector<KubeSeenRequest> Seen() const;
  /// The resourceVersion each watch asked for, in order.
  std::vector<std::string> WatchVersions() const;
  int OpenWatches() const;
  /// Events (not bookmarks) written to watch streams so far.
  int EventsSent() const;
  int BookmarksSent() const;

  /// For civetweb's handler only.
  void Serve(mg_connection* conn, int* status);

 private:
  struct Event {
    int64_t rv;
    std::string type;  // ADDED, MODIFIED, DELETED
    nlohmann::json object;
    nlohmann::json previous;  // null for ADDED
  };
  struct Stream {
    bool allow_bookmarks = false;
    bool held = false, drop = false, expire = false, end = false;
    int64_t bookmark_rv = 0;
  };
  struct Snapshot {
    int64_t rv;
    std::vector<nlohmann::json> pods;
  };
  class Handler;

  int Answer(mg_connection* conn, int status, const nlohmann::json& body);
  int ServeList(mg_connection* conn, const std::map<std::string, std::string>& q);
  void ServeWatch(mg_connection* conn, const std::map<std::string, std::string>& q);
  bool WriteChunk(mg_connection* conn, const std::string& data);
  bool WriteLine(mg_connection* conn, const nlohmann::json& event);
  int64_t Record(std::string type, nlohmann::json object, nlohmann::json previous);
  template <typename F>
  void ForEachStream(F f);  // under the lock, then wakes the streams

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool shutting_down_ = false;
  int64_t rv_ = 100;
  int64_t compacted_rv_ = 0;
  std::map<std::string, nlohmann::json> pods_;  // "ns/name"
  std::vector<Event> history_;
  std::map<int, Snapshot> snapshots_;
  int next_snapshot_ = 1;
  std::set<Stream*> streams_;
  std::string token_;
  int fail_code_ = 0, fail_count_ = 0;
  std::chrono::milliseconds delay_{0};
  int expire_continue_ = 0;
  size_t split_ = 0;
  std::vector<KubeSeenRequest> seen_;
  int events_sent_ = 0, bookmarks_sent_ = 0;

  std::unique_ptr<Handler> handler_;
  std::unique_ptr<CivetServer> server_;
  int port_ = 0;
};

}  // namespace kmon
