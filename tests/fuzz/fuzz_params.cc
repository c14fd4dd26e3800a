// Strict HTTP parameters and durations: /debug/offcpu's query (name=value pairs, one
// per line of the input) and the duration syntax of the config.
#include <absl/strings/str_split.h>

#include "base/http_params.h"
#include "base/strict_yaml.h"
#include "collectors/offcpu/offcpu_service.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = kmon::fuzz::Text(data, size);
  kmon::ParseDuration(text);
  kmon::HttpRequest req;
  req.method = "GET";
  req.path = "/debug/offcpu";
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    kmon::ParseWholeNumberParam(kv.first, kv.second, {.min = 5, .max = 600, .step = 5}).IgnoreError();
    req.query[kv.first] = kv.second;
  }
  kmon::OffCpuQuery query;
  std::string format;
  kmon::ParseOffCpuRequest(req, &query, &format).IgnoreError();
  return 0;
}
