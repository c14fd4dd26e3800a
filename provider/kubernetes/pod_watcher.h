// Keeps a PodWatchSink in step with the API server: a paged LIST, then a WATCH
// from the list's resourceVersion, re-watched when the server ends it, relisted
// when the version has expired (410 Gone), reconnected with backoff when the
// connection breaks. All of it on one thread of its own; callers only read flags.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "provider/kubernetes/api_client.h"
#include "provider/kubernetes/watch_sink.h"

namespace kmon {

struct PodWatcherOptions {
  /// "node" or "cluster": names the watch in logs.
  std::string scope = "node";
  /// "spec.nodeName=<node>" for the node's pods; empty for every pod.
  std::string field_selector;
  /// Pods per LIST page: bounds the size of one answer on a large cluster.
  int page_limit = 500;
  /// How long one LIST page may take.
  std::chrono::milliseconds list_timeout{60'000};
  /// A watch asks the server to end it after this plus up to as much again at
  /// random (as client-go does), so the watches of many nodes do not all
  /// reconnect in the same second.
  std::chrono::seconds watch_timeout{300};
  /// Reconnect delays: doubling from initial up to max, each drawn at random from
  /// its upper half, back to initial after a list or a watch that delivered.
  std::chrono::milliseconds backoff_initial{250};
  std::chrono::milliseconds backoff_max{30'000};
  /// A watch event line longer than this is an error (a v1.Pod is at most ~1.5 MiB,
  /// etcd's object limit), so a broken stream cannot grow the buffer without bound.
  size_t max_event_bytes = size_t{4} << 20;
};

/// Lists and watches pods into one sink. The sink is called from the watcher's
/// thread only, never from Start(), Stop() or the getters.
class PodWatcher {
 public:
  PodWatcher(std::shared_ptr<KubeApiClient> client, PodWatchSink* sink, PodWatcherOptions options);
  ~PodWatcher();  // Stop()s
  PodWatcher(const PodWatcher&) = delete;
  PodWatcher& operator=(const PodWatcher&) = delete;

  /// Starts the thread; a second call does nothing.
  void Start();
  /// Ends the thread within well under a second, also mid-request, mid-stream or
  /// mid-backoff. Idempotent.
  void Stop();

  /// True while the last list completed and a watch stream is open.
  bool Up() const { return up_.load(); }
  /// Wall-clock time (seconds since the epoch) of the last completed list or the
  /// last event or bookmark received; 0 before the first.
  double LastSyncUnix() const { return last_sync_unix_.load(); }

 private:
  enum class WatchEnd { kRewatch, kRelist, kFailed, kStopped };
  void Run();
  absl::Status List();
  WatchEnd Watch();
  // Handles one line of the event stream; false ends the stream (`*end` says how).
  bool HandleLine(std::string_view line, WatchEnd* end);
  void NoteFailure(const absl::Status& status);
  // A list completed or a watch delivered: backoff and failure state start over.
  void NoteSuccess();
  void Backoff();
  void MarkSynced();

  const std::shared_ptr<KubeApiClient> client_;
  PodWatchSink* const sink_;
  const PodWatcherOptions options_;

  std::atomic<bool> up_{false};
  std::atomic<double> last_sync_unix_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;  // wakes a backoff sleep on Stop()
  std::thread thread_;

  // Watcher thread only.
  std::string resource_version_;
  std::chrono::milliseconds backoff_{0};
  std::string last_failure_;   // what was last logged, so repeats are not
  bool delivered_ = false;     // the current watch carried an event or bookmark
  absl::Status stream_error_;  // why HandleLine ended a stream with kFailed
  std::mt19937_64 rng_{std::random_device{}()};
};

}  // namespace kmon
