#include "exporter/flags.h"

#include <algorithm>

#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

namespace kmon {
namespace {

bool Known(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

FlagsResult ParseFlags(const std::vector<std::string>& args,
                       const std::vector<std::string>& collectors) {
  FlagsResult r;
  Flags& f = r.flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--")) {
      r.problems.push_back(absl::StrCat("unexpected argument \"", arg, "\""));
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    // Boolean flags take no value.
    auto boolean = [&](bool* target) {
      if (value) {
        r.problems.push_back(absl::StrCat("flag --", name, " takes no value"));
      } else {
        *target = true;
      }
    };
    if (name == "web.enable-lifecycle") { boolean(&f.enable_lifecycle); continue; }
    if (name == "check-config") { boolean(&f.check_config); continue; }
    if (name == "version") { boolean(&f.version); continue; }
    if (name == "help" || name == "h") { boolean(&f.help); continue; }
    if (absl::StartsWith(name, "collector.") || absl::StartsWith(name, "no-collector.")) {
      bool enable = absl::StartsWith(name, "collector.");
      std::string c = name.substr(enable ? 10 : 13);
      if (!Known(collectors, c)) {
        r.problems.push_back(absl::StrCat("flag --", name, ": unknown collector \"", c, "\""));
      } else if (value) {
        r.problems.push_back(absl::StrCat("flag --", name, " takes no value"));
      } else {
        f.collector_overrides[c] = enable;
      }
      continue;
    }
    // Flags with a value: --name=value or --name value.
    static const std::vector<std::string> kValued = {
        "config.file", "web.listen-address", "web.telemetry-path", "web.config.file",
        "web.max-requests", "log.level", "log.format"};
    if (!Known(kValued, name)) {
      r.problems.push_back(absl::StrCat("unknown flag --", name));
      continue;
    }
    if (!value) {
      if (i + 1 >= args.size()) {
        r.problems.push_back(absl::StrCat("flag --", name, " needs a value"));
        continue;
      }
      value = args[++i];
    }
    if (name == "config.file") {
      f.config_file = *value;
    } else if (name == "web.listen-address") {
      f.listen_address = *value;
    } else if (name == "web.telemetry-path") {
      if (!absl::StartsWith(*value, "/")) {
        r.problems.push_back(absl::StrCat("flag --web.telemetry-path: \"", *value,
                                          "\" must start with /"));
      }
      f.telemetry_path = *value;
    } else if (name == "web.config.file") {
      f.web_config_file = *value;
    } else if (name == "web.max-requests") {
      // node_exporter's 0 means "no limit"; kmon always has one (every handler needs a
      // thread, and the limit is what bounds them), so 0 is refused rather than unbounded.
      if (!absl::SimpleAtoi(*value, &f.max_requests) || f.max_requests < 1) {
        r.problems.push_back(absl::StrCat("flag --web.max-requests: \"", *value,
                                          "\" is not a whole number of at least 1"));
      }
    } else if (name == "log.level") {
      if (!ParseLogLevel(*value, &f.log_level)) {
        r.problems.push_back(absl::StrCat("flag --log.level: \"", *value,
                                          "\" is not one of debug, info, warn, error"));
      }
    } else if (name == "log.format") {
      if (!ParseLogFormat(*value, &f.log_format)) {
        r.problems.push_back(
            absl::StrCat("flag --log.format: \"", *value, "\" is not one of logfmt, json"));
      }
    }
  }
  return r;
}

std::string UsageText(const std::vector<std::string>& collectors) {
  std::string s =
      "usage: kmon_exporter [<flags>]\n"
      "\n"
      "Per-node Prometheus exporter: per-pod kernel metrics from eBPF.\n"
      "\n"
      "Flags:\n"
      "  --config.file=PATH           YAML config (default: built-in defaults)\n"
      "  --web.listen-address=ADDR    address to listen on (default \":9877\")\n"
      "  --web.telemetry-path=PATH    path of the metrics (default \"/metrics\")\n"
      "  --web.config.file=PATH       TLS and basic auth (exporter-toolkit web config)\n"
      "  --web.enable-lifecycle       allow POST /-/reload (SIGHUP and file changes always\n"
      "                               reload)\n"
      "  --web.max-requests=N         requests served in parallel; beyond, 503 at once\n"
      "                               (default 40)\n"
      "  --log.level=LEVEL            debug, info, warn, error (default info)\n"
      "  --log.format=FORMAT          logfmt, json (default logfmt)\n"
      "  --check-config               validate the config, print every problem, exit 0/1\n"
      "  --version                    print the version and exit\n"
      "  --help                       this text\n"
      "\n"
      "Collectors (--collector.NAME enables, --no-collector.NAME disables; overrides the file):\n";
  for (const auto& c : collectors) s += "  " + c + "\n";
  return s;
}

}  // namespace kmon
