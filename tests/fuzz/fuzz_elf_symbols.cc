// The ELF symbol reader, on whatever bytes a binary in another container holds.
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "collectors/offcpu/elf_symbols.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("kmon-fuzz-elf", 0);
  if (fd < 0) return 0;
  if (write(fd, data, size) == static_cast<ssize_t>(size)) {
    kmon::ElfSymbols::Load("/proc/self/fd/" + std::to_string(fd)).IgnoreError();
  }
  close(fd);
  return 0;
}
