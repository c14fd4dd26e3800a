// The config file parser: any bytes give problems or a config, never a crash, a hang
// (yaml-cpp 0.7 loops forever on some input the engine must refuse first) or UB.
#include "exporter/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "NODE_NAME") return "node-a";
    return std::nullopt;
  };
  kmon::ConfigResult r = kmon::ParseConfig(kmon::fuzz::Text(data, size), env);
  // Exactly one of the two: a config, or the problems that kept it from being one.
  if (r.config.has_value() == !r.problems.empty()) __builtin_trap();
  return 0;
}
