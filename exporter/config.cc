#include "exporter/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "collectors/collector.h"
#include "collectors/watched_cgroups.h"

namespace kmon {
namespace {

using std::chrono::nanoseconds;

// One function per section, each a flat table of its keys: the schema reads
// top to bottom like SPEC's YAML.

void ParseTargets(YamlParser& p, const YamlValue& v, TargetsConfig* t) {
  p.Map(v, {
               {"namespaces",
                [&](const YamlValue& f) { p.StringSet(f, "namespace", &t->namespaces); }},
               {"exclude_namespaces",
                [&](const YamlValue& f) { p.StringSet(f, "namespace", &t->exclude_namespaces); }},
               {"pod_selector", [&](const YamlValue& f) { p.Labels(f, &t->pod_selector); }},
               {"host_processes", [&](const YamlValue& f) { p.Bool(f, &t->host_processes); }},
           });
}

void ParseKubernetesEnabled(YamlParser& p, const YamlValue& f, std::string* out) {
  // `enabled: true` is a YAML boolean while `enabled: auto` is a string; both
  // spellings of true/false are accepted and stored as the words.
  if (YamlParser::IsPlainBool(f)) {
    bool b = false;
    if (p.Bool(f, &b)) *out = b ? "true" : "false";
    return;
  }
  p.OneOf(f, {"auto", "true", "false"}, out);
}

void ParseSeriesGrace(YamlParser& p, const YamlValue& f, nanoseconds* out) {
  nanoseconds d{};
  if (!p.Duration(f, &d)) return;
  // 0 is allowed (series leave with their cgroup); beyond a day a node keeps
  // every pod it ever ran in memory for no use anyone has asked for.
  if (d < nanoseconds(0) || d > std::chrono::hours(24)) {
    p.Report(f.key, f.line, "must be between 0s and 24h");
    return;
  }
  *out = d;
}

void ParseKubernetes(YamlParser& p, const YamlValue& v, KubernetesConfig* k) {
  p.Map(v,
        {
            {"enabled", [&](const YamlValue& f) { ParseKubernetesEnabled(p, f, &k->enabled); }},
            {"node_name", [&](const YamlValue& f) { p.String(f, &k->node_name); }},
            {"kubeconfig", [&](const YamlValue& f) { p.String(f, &k->kubeconfig); }},
            {"series_grace", [&](const YamlValue& f) { ParseSeriesGrace(p, f, &k->series_grace); }},
        });
}

void ParseMaxSeries(YamlParser& p, const YamlValue& f, int64_t* out) {
  int64_t n = 0;
  if (!p.Int(f, "a whole number of at least 1", &n)) return;
  if (n < 1) {
    p.Report(f.key, f.line, absl::StrCat("must be at least 1, got ", n));
    return;
  }
  *out = n;
}

void ParseMapEntries(YamlParser& p, const YamlValue& f, uint32_t* out) {
  int64_t n = 0;
  if (!p.Int(f, "a whole number of entries", &n)) return;
  if (n < 1 || n > kMaxBpfMapEntries) {
    p.Report(f.key, f.line, absl::StrCat("must be between 1 and ", kMaxBpfMapEntries, ", got ", n));
    return;
  }
  *out = static_cast<uint32_t>(n);
}

// limits.bpf_map_entries: collector -> map -> entries, each collector's keys being
// the maps its table row lets the config size, so a misspelt map is an error at
// its line rather than a size that silently never applies.
void ParseBpfMapEntries(YamlParser& p, const YamlValue& v,
                        std::map<std::string, std::map<std::string, uint32_t>, std::less<>>* out) {
  auto collector = [&](const char* name, const std::vector<BpfMapSize>& maps) {
    return YamlParser::Field{name, [&p, name, &maps, out](const YamlValue& c) {
                               std::vector<YamlParser::Field> fields;
                               for (const BpfMapSize& m : maps) {
                                 fields.push_back({m.map, [&p, name, &m, out](const YamlValue& f) {
                                                     uint32_t n = 0;
                                                     ParseMapEntries(p, f, &n);
                                                     if (n != 0) (*out)[name][m.map] = n;
                                                   }});
                               }
                               p.Map(c, fields);
                             }};
  };
  std::vector<YamlParser::Field> fields;
  for (const CollectorEntry& e : CollectorTable()) {
    if (!e.maps.empty()) fields.push_back(collector(e.name, e.maps));
  }
  fields.push_back(collector(kSharedMapsCollector, SharedMapSizes()));
  p.Map(v, fields);
}

void ParseLimits(YamlParser& p, const YamlValue& v, LimitsConfig* l) {
  p.Map(v, {
               {"max_series_per_collector",
                [&](const YamlValue& f) { ParseMaxSeries(p, f, &l->max_series_per_collector); }},
               {"bpf_map_entries",
                [&](const YamlValue& f) { ParseBpfMapEntries(p, f, &l->bpf_map_entries); }},
           });
}

void ParseInterval(YamlParser& p, const YamlValue& f, nanoseconds* out) {
  nanoseconds d{};
  if (!p.Duration(f, &d)) return;
  if (d <= nanoseconds(0)) {
    p.Report(f.key, f.line, "must be greater than 0");
    return;
  }
  // It is added to clock readings: a century would wrap them. A day is already
  // far beyond any use (it paces the watched-cgroups refresh).
  if (d > std::chrono::hours(24)) {
    p.Report(f.key, f.line, "must be at most 24h");
    return;
  }
  *out = d;
}

void ParseCollectors(YamlParser& p, const YamlValue& v, CollectorSections* sections) {
  std::vector<YamlParser::Field> fields;
  for (const CollectorEntry& e : CollectorTable()) {
    CollectorSection* section = sections->Find(e.name);
    fields.push_back({e.name, [&p, &e, section](const YamlValue& s) {
                        if (section != nullptr) e.section.parse(p, s, section);
                      }});
  }
  p.Map(v, fields);
}

void ParseDocument(YamlParser& p, const YAML::Node& root, Config* c) {
  p.Map(YamlValue{root, "", std::max(YamlLineOf(root), 1)},
        {
            {"interval", [&](const YamlValue& v) { ParseInterval(p, v, &c->interval); }},
            {"targets", [&](const YamlValue& v) { ParseTargets(p, v, &c->targets); }},
            {"kubernetes", [&](const YamlValue& v) { ParseKubernetes(p, v, &c->kubernetes); }},
            {"limits", [&](const YamlValue& v) { ParseLimits(p, v, &c->limits); }},
            {"collectors", [&](const YamlValue& v) { ParseCollectors(p, v, &c->collectors); }},
        });
}

int ExceptionLine(const YAML::Mark& mark) { return mark.is_null() ? 0 : mark.line + 1; }

}  // namespace

Config::Config() {
  for (const CollectorEntry& e : CollectorTable()) {
    std::unique_ptr<CollectorSection> section = e.section.defaults();
    section->enabled = e.default_enabled;
    collectors.Set(e.name, std::move(section));
  }
}

Config DefaultConfig() { return Config(); }

ConfigResult ParseConfig(std::string_view yaml_text, const EnvLookup& env) {
  ConfigResult result;
  std::optional<YAML::Node> document = LoadSingleDocument(yaml_text, &result.problems);
  if (!document) return result;
  Config config;
  YamlParser parser(env);
  try {
    if (!document->IsNull()) ParseDocument(parser, *document, &config);
  } catch (const YAML::Exception& e) {
    // Not expected (values are only read as scalars), but a config must never
    // take the process down: report it like any other problem.
    parser.Report("", ExceptionLine(e.mark), e.msg);
  }
  result.problems = parser.TakeProblems();
  if (result.problems.empty()) result.config = std::move(config);
  return result;
}

ConfigResult LoadConfigFile(const std::string& path, const EnvLookup& env) {
  const auto unreadable = [&path](int err) {
    ConfigResult result;
    result.problems.push_back(
        ConfigProblem{"", 0, absl::StrCat("cannot read ", path, ": ", std::strerror(err))});
    return result;
  };
  // open/read rather than ifstream: a directory "opens" fine as a stream and
  // only fails on read, and the stream never says why.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unreadable(errno);
  std::string text;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return unreadable(err);
    }
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return ParseConfig(text, env);
}

}  // namespace kmon
