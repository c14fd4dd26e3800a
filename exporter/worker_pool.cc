#include "exporter/worker_pool.h"

#include <thread>
#include <utility>

namespace kmon {

WorkerPool::WorkerPool(int limit, std::chrono::milliseconds idle_exit)
    : limit_(limit), idle_exit_(idle_exit) {}

WorkerPool::~WorkerPool() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  work_cv_.notify_all();
  // The threads are detached: each one says it has ended under the mutex, as its last act
  // on this object, so once threads_ is 0 nothing touches the pool any more.
  exit_cv_.wait(lock, [this] { return threads_ == 0; });
}

bool WorkerPool::Reserve() {
  std::lock_guard lock(mu_);
  if (busy_ >= limit_) return false;
  ++busy_;
  return true;
}

int WorkerPool::busy() const {
  std::lock_guard lock(mu_);
  return busy_;
}

void WorkerPool::Run(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    if (idle_ > 0) {
      --idle_;  // claimed: that thread takes this task and no other
      queue_.push_back(std::move(task));
      work_cv_.notify_one();
      return;
    }
    ++threads_;
  }
  // At most `limit` threads: a new one starts only when every live thread holds a slot.
  std::thread([this, t = std::move(task)]() mutable { Loop(std::move(t)); }).detach();
}

void WorkerPool::Loop(std::function<void()> first) {
  std::function<void()> task = std::move(first);
  std::unique_lock lock(mu_);
  while (true) {
    lock.unlock();
    task();
    task = nullptr;  // its captures die outside the lock and before the thread waits
    lock.lock();
    --busy_;
    ++idle_;
    work_cv_.wait_for(lock, idle_exit_, [this] { return !queue_.empty() || stopping_; });
    if (queue_.empty()) {  // stopping, or idle for idle_exit_: leave
      --idle_;
      break;
    }
    // Run counted one waiting thread out of idle_ for this task; whichever takes it, the
    // count stays right.
    task = std::move(queue_.front());
    queue_.pop_front();
  }
  --threads_;
  exit_cv_.notify_all();
}

}  // namespace kmon
