#include "base/buffer_pool.h"

#include <algorithm>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace kmon {

std::string BufferPool::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.empty()) return std::string();
  std::string buffer = std::move(idle_.back());
  idle_.pop_back();
  return buffer;
}

size_t BufferPool::Give(std::string buffer) {
  const size_t capacity = buffer.capacity();
  if (capacity > 2 * std::max(buffer.size(), min_keep_)) return capacity;  // freed here
  buffer.clear();
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() >= max_idle_) return capacity;
  idle_.push_back(std::move(buffer));
  return 0;
}

size_t BufferPool::IdleBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const std::string& b : idle_) n += b.capacity();
  return n;
}

void TuneMallocForExporter() {
#ifdef __GLIBC__
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
}

void ReturnFreeMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

}  // namespace kmon
