// The threads that run HTTP handlers off the server's event thread: at most `limit` tasks at
// once, and never a queue. A request beyond the limit is refused at once (the caller answers
// 503), as node_exporter's --web.max-requests does: a backlog of scrapes that would time out
// anyway only makes the next ones late too.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

namespace kmon {

class WorkerPool {
 public:
  /// `idle_exit`: a thread with nothing to do for that long ends (after a burst of scrapes
  /// the pool shrinks back; the next scrape starts a thread again).
  explicit WorkerPool(int limit, std::chrono::milliseconds idle_exit = std::chrono::seconds(30));
  /// Waits for every task that is running.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Claims a slot for one task; false when `limit` tasks hold one. Every true must be
  /// followed by exactly one Run.
  bool Reserve();
  /// Runs `task` on a pool thread, in the slot Reserve claimed; the slot is free again when
  /// the task returns. The task must not throw.
  void Run(std::function<void()> task);
  /// Tasks holding a slot now.
  int busy() const;

 private:
  void Loop(std::function<void()> first);

  const int limit_;
  const std::chrono::milliseconds idle_exit_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;          // a task queued for an idle thread, or stopping
  std::condition_variable exit_cv_;          // a thread ended
  std::deque<std::function<void()>> queue_;  // never longer than idle_ was when pushed
  int busy_ = 0;                             // reserved slots
  int idle_ = 0;     // threads waiting for work that no queued task has claimed
  int threads_ = 0;  // threads alive
  bool stopping_ = false;
};

}  // namespace kmon
