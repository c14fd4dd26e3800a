// Response buffers reused from scrape to scrape, freed after a burst; gzip into a
// reused buffer.
#include "base/buffer_pool.h"

#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <string>

#include "base/gzip.h"
#include "bpf/tcp.skel.h"
#include "tests/test_util.h"

namespace kmon {
namespace {

TEST(BufferPool, ReusesABufferWithItsCapacity) {
  BufferPool pool(/*max_idle=*/2, /*min_keep=*/1024);
  std::string b = pool.Take();
  b.assign(100000, 'x');
  const size_t capacity = b.capacity();
  const char* data = b.data();
  pool.Give(std::move(b));
  EXPECT_EQ(pool.IdleBytes(), capacity);
  std::string again = pool.Take();
  EXPECT_TRUE(again.empty());
  EXPECT_EQ(again.capacity(), capacity);
  EXPECT_EQ(again.data(), data);  // the same memory, not a copy
  EXPECT_EQ(pool.IdleBytes(), 0u);
}

TEST(BufferPool, FreesABufferTwiceAsLargeAsItsLastUse) {
  BufferPool pool(2, 1024);
  std::string burst;
  burst.reserve(1 << 20);     // grew for a burst
  burst.assign(400000, 'x');  // this time it held less than half of it
  EXPECT_GE(pool.Give(std::move(burst)), size_t{1} << 20);  // what it freed
  EXPECT_EQ(pool.IdleBytes(), 0u);
  // Small buffers are kept up to min_keep, whatever they held.
  std::string small;
  small.reserve(1000);
  EXPECT_EQ(pool.Give(std::move(small)), 0u);  // kept
  EXPECT_GE(pool.IdleBytes(), 1000u);
}

TEST(BufferPool, KeepsAtMostMaxIdle) {
  BufferPool pool(2, 1024);
  for (int i = 0; i < 5; ++i) {
    std::string b(800, 'x');
    pool.Give(std::move(b));
  }
  std::string a = pool.Take(), b = pool.Take(), c = pool.Take();
  EXPECT_GE(a.capacity(), 800u);
  EXPECT_GE(b.capacity(), 800u);
  EXPECT_EQ(c.capacity(), std::string().capacity());  // a new one
}

TEST(GzipInto, RoundTripsIntoAReusedBufferAndGrowsWhenInputDoesNotCompress) {
  std::mt19937 rng(7);
  std::string random(300000, '\0');
  for (char& c : random) c = static_cast<char>(rng());
  std::string text;
  for (int i = 0; i < 20000; ++i)
    text += "kmon_syscalls_total{syscall=\"read\"} " + std::to_string(i) + "\n";
  std::string out = "old contents";
  for (const std::string* in : {&random, &text, &random}) {
    ASSERT_TRUE(GzipInto(*in, kGzipFastest, &out).ok());
    EXPECT_EQ(Gunzip(out), *in);
  }
  EXPECT_GT(out.size(), random.size());  // incompressible: deflate grew the buffer
  ASSERT_TRUE(GzipInto("", kGzipFastest, &out).ok());
  EXPECT_EQ(Gunzip(out), "");
  absl::StatusOr<std::string> gz = Gzip(text, kGzipFastest);
  ASSERT_TRUE(gz.ok());
  EXPECT_LT(gz->size() * 5, text.size());
  EXPECT_EQ(Gunzip(*gz), text);
}

// Whether this process has the page at `address` mapped in (bit 63 of its pagemap entry).
bool PagePresent(const void* address) {
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t entry = 0;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(address) / page * 8);
  const bool read = fd >= 0 && pread(fd, &entry, sizeof entry, at) == sizeof entry;
  if (fd >= 0) close(fd);
  EXPECT_TRUE(read);
  return (entry >> 63) & 1;
}

TEST(ReleaseEmbeddedObjectPages, DropsAnEmbeddedBpfObjectsPagesAndItReadsTheSameAfter) {
  size_t size = 0;
  const char* object = static_cast<const char*>(tcp_bpf__elf_bytes(&size));
  ASSERT_GT(size, 3 * 4096u);
  const std::string before(object, size);  // every page of it read: resident
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const char* inside =
      reinterpret_cast<const char*>((reinterpret_cast<uintptr_t>(object) / page + 1) * page);
  ASSERT_TRUE(PagePresent(inside));

  const EmbeddedObjectPages released = ReleaseEmbeddedObjectPages(EM_BPF);
  EXPECT_GE(released.objects, 1u);  // this file's copy of tcp's, and the collectors'
  EXPECT_GE(released.bytes, (size / page - 1) * page);
  EXPECT_FALSE(PagePresent(inside));
  EXPECT_FALSE(PagePresent(inside + page));
  // Read again, the bytes come back from the file unchanged.
  EXPECT_EQ(std::string(object, size), before);
  EXPECT_TRUE(PagePresent(inside));

  // No x86-64 relocatable object is embedded: nothing found, nothing dropped.
  const EmbeddedObjectPages none = ReleaseEmbeddedObjectPages(EM_X86_64);
  EXPECT_EQ(none.objects, 0u);
  EXPECT_EQ(none.bytes, 0u);
}

}  // namespace
}  // namespace kmon
