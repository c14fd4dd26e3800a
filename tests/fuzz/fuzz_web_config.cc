// --web.config.file's parser (TLS and basic auth).
#include "exporter/web_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kmon::ParseWebConfig(std::string(kmon::fuzz::Text(data, size))).IgnoreError();
  return 0;
}
