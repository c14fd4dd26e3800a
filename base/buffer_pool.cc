#include "base/buffer_pool.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

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

namespace {

// The extent of the ELF64 relocatable object for `machine` whose header is at `off` in
// `fd`, or 0 when there is none: its section headers and every section's bytes.
uint64_t ObjectSizeAt(int fd, uint64_t off, uint16_t machine) {
  Elf64_Ehdr eh;
  if (pread(fd, &eh, sizeof eh, static_cast<off_t>(off)) != sizeof eh) return 0;
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
      eh.e_type != ET_REL || eh.e_machine != machine || eh.e_shentsize != sizeof(Elf64_Shdr) ||
      eh.e_shnum == 0 || eh.e_shnum > 4096) {
    return 0;
  }
  std::vector<Elf64_Shdr> sh(eh.e_shnum);
  const size_t sh_bytes = sh.size() * sizeof(Elf64_Shdr);
  if (pread(fd, sh.data(), sh_bytes, static_cast<off_t>(off + eh.e_shoff)) !=
      static_cast<ssize_t>(sh_bytes)) {
    return 0;
  }
  uint64_t end = eh.e_shoff + sh_bytes;
  for (const Elf64_Shdr& s : sh) {
    if (s.sh_type != SHT_NOBITS) end = std::max<uint64_t>(end, s.sh_offset + s.sh_size);
  }
  return end;
}

struct Segment {
  uint64_t offset, filesz, address;  // in the file; where it is mapped
};

}  // namespace

EmbeddedObjectPages ReleaseEmbeddedObjectPages(uint16_t machine) {
  EmbeddedObjectPages released;
  // The program's read-only, non-executable PT_LOAD segments, where .rodata is.
  std::vector<Segment> segments;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && ph.p_flags == PF_R) {
            static_cast<std::vector<Segment>*>(out)->push_back(
                {ph.p_offset, ph.p_filesz, info->dlpi_addr + ph.p_vaddr});
          }
        }
        return 1;  // the first object is the program itself
      },
      &segments);
  const int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return released;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  constexpr size_t kChunk = 64 * 1024;
  std::vector<char> buf(kChunk);
  for (const Segment& seg : segments) {
    // Skeletons align their objects to 8 bytes (in memory): look for ELF magic there.
    auto aligned = [&](uint64_t at) {
      return ((seg.address + at + 7) & ~uint64_t{7}) - seg.address;
    };
    for (uint64_t at = aligned(0); at + sizeof(Elf64_Ehdr) <= seg.filesz;) {
      const ssize_t n = pread(fd, buf.data(), std::min<uint64_t>(kChunk, seg.filesz - at),
                              static_cast<off_t>(seg.offset + at));
      if (n <= 0) break;
      uint64_t next = at + static_cast<uint64_t>(n);  // 8-aligned: kChunk is a multiple of 8
      for (uint64_t i = 0; i + SELFMAG <= static_cast<uint64_t>(n); i += 8) {
        if (std::memcmp(buf.data() + i, ELFMAG, SELFMAG) != 0) continue;
        const uint64_t size = ObjectSizeAt(fd, seg.offset + at + i, machine);
        if (size == 0 || at + i + size > seg.filesz) continue;
        ++released.objects;
        const uint64_t begin = seg.address + at + i, end = begin + size;
        const uint64_t first = (begin + page - 1) / page * page, last = end / page * page;
        if (last > first &&
            madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) == 0) {
          released.bytes += last - first;
        }
        next = aligned(at + i + size);  // on after the object
        break;
      }
      at = next;
    }
  }
  close(fd);
  return released;
}

}  // namespace kmon
