// /proc/kallsyms (and /proc/modules, after a NUL byte) into the kernel symbol table.
#include "collectors/kernel_symbols.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto [kallsyms, modules] = kmon::fuzz::SplitAtNul(kmon::fuzz::Text(data, size));
  kmon::KernelSymbols::Parse(kallsyms, modules);
  return 0;
}
