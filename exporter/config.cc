// Strict YAML config parsing. Every key must be known and every value is checked
// before anything is applied, and all problems are collected (with dotted key and
// line) instead of stopping at the first: `--check-config` and a rejected reload
// should show the user the whole list in one go, not one typo per attempt.
#include "exporter/config.h"

#include <fcntl.h>
#include <seccomp.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kmon {
namespace {

using std::chrono::nanoseconds;

// A value to check: its node, its dotted key, and the line problems are reported
// on. For a map entry that is the key's line, because yaml-cpp marks an empty
// value (`kubeconfig:` with nothing after it) at the *next* token, which may be
// several lines further down.
struct Value {
  YAML::Node node;
  std::string key;
  int line = 0;
};

int LineOf(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null() ? 0 : mark.line + 1;
}

std::string JoinKey(const std::string& path, const std::string& name) {
  return path.empty() ? std::string(name) : absl::StrCat(path, ".", name);
}

std::string Quote(const std::string& s) { return absl::StrCat("\"", s, "\""); }

// Shortest text that reads back as the same double, so a message quotes the
// number the way the user wrote it ("0.00025", not "0.000250").
std::string FormatDouble(double v) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, result.ptr);
}

// How a node is described after "got" in a message.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "an empty value";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// A quoted scalar ("true", '80') is a string in YAML. Like the Go YAML decoder
// Prometheus users know, it is refused where a boolean or number is wanted
// rather than silently converted (but see Parser::Scalar for ${VAR}).
bool IsQuoted(const YAML::Node& node) {
  return node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str";
}

// YAML 1.2 core schema spellings only: YAML 1.1's yes/no/on/off are refused
// because they are a classic source of surprises (`enabled: off` in one file,
// `name: no` read as false in another).
std::optional<bool> ParseBool(std::string_view s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

// A decimal integer with an optional sign; nullopt on anything else or overflow.
std::optional<int64_t> ParseInt(std::string_view s) {
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (!s.empty() && s.front() == '-') return std::nullopt;
  }
  int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

// A YAML float or integer, including the core schema's .inf/.nan spellings (so
// the caller can say "must be finite" rather than "not a number").
std::optional<double> ParseNumber(std::string_view s) {
  if (s == ".inf" || s == ".Inf" || s == ".INF" || s == "+.inf" || s == "+.Inf" || s == "+.INF") {
    return std::numeric_limits<double>::infinity();
  }
  if (s == "-.inf" || s == "-.Inf" || s == "-.INF") return -std::numeric_limits<double>::infinity();
  if (s == ".nan" || s == ".NaN" || s == ".NAN") return std::numeric_limits<double>::quiet_NaN();
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (!s.empty() && s.front() == '-') return std::nullopt;
  }
  double v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

bool IsVarStart(char c) { return c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool IsVarChar(char c) { return IsVarStart(c) || (c >= '0' && c <= '9'); }

enum class SyscallKind { kNative, kOtherArch, kUnknown };

// libseccomp's tables know every architecture's syscalls; for one this CPU lacks
// it returns a negative pseudo number (__PNR_*), distinct from the plain error.
SyscallKind ResolveSyscall(const std::string& name, int* nr) {
  *nr = seccomp_syscall_resolve_name(name.c_str());
  if (*nr == __NR_SCMP_ERROR) return SyscallKind::kUnknown;
  if (*nr < 0) return SyscallKind::kOtherArch;
  return SyscallKind::kNative;
}

class Parser {
 public:
  using Handler = std::function<void(const Value&)>;
  struct Field {
    const char* name;
    Handler handle;
  };

  explicit Parser(const EnvLookup& env) : env_(env) {}

  std::vector<ConfigProblem> TakeProblems() { return std::move(problems_); }

  void Report(std::string key, int line, std::string message) {
    problems_.push_back(ConfigProblem{std::move(key), line, std::move(message)});
  }

  // Walks the map at `v`; each key must be one of `fields` and appear once. An
  // empty value (`pagecache:` with nothing under it) is an empty map, so every
  // key in it keeps its default.
  void Map(const Value& v, std::initializer_list<Field> fields) {
    if (v.node.IsNull()) return;
    if (!v.node.IsMap()) {
      Report(v.key, v.line,
             absl::StrCat(v.key.empty() ? "the config must be a map of keys" : "must be a map",
                          ", got ", Describe(v.node)));
      return;
    }
    std::map<std::string, int> seen;  // key -> line of its first appearance
    for (const auto& entry : v.node) {
      const YAML::Node& key_node = entry.first;
      const int line = LineOf(key_node);
      if (!key_node.IsScalar()) {
        Report(v.key, line, absl::StrCat("keys must be names, got ", Describe(key_node)));
        continue;
      }
      const std::string& name = key_node.Scalar();
      const std::string key = JoinKey(v.key, name);
      // yaml-cpp keeps both entries of a repeated key; which one "wins" would
      // be an accident of the parser, so it is an error.
      if (const auto [it, inserted] = seen.emplace(name, line); !inserted) {
        Report(key, line, absl::StrCat("duplicate key (first set on line ", it->second, ")"));
        continue;
      }
      const Field* field = nullptr;
      for (const Field& f : fields) {
        if (f.name == name) field = &f;
      }
      if (field == nullptr) {
        std::vector<const char*> names;
        for (const Field& f : fields) names.push_back(f.name);
        Report(key, line,
               absl::StrCat("unknown key (expected one of: ", absl::StrJoin(names, ", "), ")"));
        continue;
      }
      field->handle(Value{entry.second, key, line});
    }
  }

  // Any scalar, `${VAR}`-expanded. `want` names the expected type for messages.
  // `quoted_literal`, when given, is set for a quoted scalar with no ${VAR} in
  // it: a string by the user's own choice. One with a variable is judged by its
  // expanded value, because in flow style (`{enabled: "${ON}"}`) the quotes are
  // required: `{` and `}` would otherwise end the plain scalar.
  bool Scalar(const Value& v, const std::string& want, std::string* out,
              bool* quoted_literal = nullptr) {
    if (!v.node.IsScalar()) {
      std::string hint;
      if (v.node.IsNull() && want == "a string") hint = " (write \"\" for an empty string)";
      Report(v.key, v.line, absl::StrCat("must be ", want, ", got ", Describe(v.node), hint));
      return false;
    }
    bool substituted = false;
    if (!Expand(v, out, &substituted)) return false;
    if (quoted_literal != nullptr) *quoted_literal = IsQuoted(v.node) && !substituted;
    return true;
  }

  bool String(const Value& v, std::string* out) { return Scalar(v, "a string", out); }

  // A boolean or number: a plain scalar whose text `parse` accepts.
  template <typename T, typename ParseFn>
  bool Typed(const Value& v, const std::string& want, ParseFn parse, T* out) {
    std::string text;
    bool quoted_literal = false;
    if (!Scalar(v, want, &text, &quoted_literal)) return false;
    const std::optional<T> parsed = parse(text);
    if (!parsed || quoted_literal) {
      Report(v.key, v.line,
             absl::StrCat("must be ", want, ", got ", quoted_literal ? "the string " : "",
                          Quote(text)));
      return false;
    }
    *out = *parsed;
    return true;
  }

  bool Bool(const Value& v, bool* out) { return Typed(v, "true or false", ParseBool, out); }

  bool Int(const Value& v, const std::string& want, int64_t* out) {
    return Typed(v, want, ParseInt, out);
  }

  bool Number(const Value& v, double* out) { return Typed(v, "a number", ParseNumber, out); }

  bool Duration(const Value& v, nanoseconds* out) {
    std::string text;
    if (!Scalar(v, "a duration", &text)) return false;
    const std::optional<nanoseconds> d = ParseDuration(text);
    if (!d) {
      Report(v.key, v.line,
             absl::StrCat("must be a duration such as 15s, 1m30s or 100ms, got ", Quote(text)));
      return false;
    }
    *out = *d;
    return true;
  }

  bool OneOf(const Value& v, std::initializer_list<const char*> allowed, std::string* out) {
    std::string text;
    if (!Scalar(v, absl::StrCat("one of ", absl::StrJoin(allowed, ", ")), &text)) return false;
    for (const char* a : allowed) {
      if (text == a) {
        *out = text;
        return true;
      }
    }
    Report(v.key, v.line,
           absl::StrCat("must be one of ", absl::StrJoin(allowed, ", "), "; got ", Quote(text)));
    return false;
  }

  // Calls `item` for each element of the list at `v`, keyed `key[i]` and
  // reported on the element's own line. False when `v` is not a list.
  bool List(const Value& v, const std::function<void(const Value&, size_t)>& item) {
    if (!v.node.IsSequence()) {
      Report(v.key, v.line, absl::StrCat("must be a list, got ", Describe(v.node)));
      return false;
    }
    for (size_t i = 0; i < v.node.size(); ++i) {
      const YAML::Node element = v.node[i];
      const int line = LineOf(element);
      item(Value{element, absl::StrCat(v.key, "[", i, "]"), line > 0 ? line : v.line}, i);
    }
    return true;
  }

  // A list of distinct strings: these lists are sets (namespaces, devices), and
  // a repeated entry is more likely a typo for another one than intended.
  bool StringSet(const Value& v, const char* what, std::vector<std::string>* out) {
    std::vector<std::string> items;
    std::map<std::string, size_t> seen;
    const size_t before = problems_.size();
    if (!List(v, [&](const Value& e, size_t i) {
          std::string s;
          if (!String(e, &s)) return;
          if (const auto [it, inserted] = seen.emplace(s, i); !inserted) {
            Report(e.key, e.line,
                   absl::StrCat("duplicate ", what, " ", Quote(s), " (also at index ", it->second,
                                ")"));
            return;
          }
          items.push_back(std::move(s));
        })) {
      return false;
    }
    if (problems_.size() != before) return false;
    *out = std::move(items);
    return true;
  }

  // A list of distinct TCP/UDP port numbers.
  void PortSet(const Value& v, std::vector<uint16_t>* out) {
    std::vector<uint16_t> ports;
    std::map<int64_t, size_t> seen;
    const size_t before = problems_.size();
    List(v, [&](const Value& e, size_t i) {
      int64_t port = 0;
      if (!Int(e, "a port number from 0 to 65535", &port)) return;
      if (port < 0 || port > 65535) {
        Report(e.key, e.line, absl::StrCat("must be a port number from 0 to 65535, got ", port));
        return;
      }
      if (const auto [it, inserted] = seen.emplace(port, i); !inserted) {
        Report(e.key, e.line,
               absl::StrCat("duplicate port ", port, " (also at index ", it->second, ")"));
        return;
      }
      ports.push_back(static_cast<uint16_t>(port));
    });
    if (problems_.size() == before) *out = std::move(ports);
  }

  // Histogram upper bounds: what the BPF side bins by and what `le` shows, so
  // they must be a usable, strictly increasing sequence of positive seconds.
  void Buckets(const Value& v, std::vector<double>* out) {
    std::vector<double> buckets;
    const size_t before = problems_.size();
    std::optional<double> previous;  // last valid bucket, for the ordering check
    if (!List(v, [&](const Value& e, size_t) {
          double b = 0;
          if (!Number(e, &b)) return;
          if (!std::isfinite(b)) {
            Report(e.key, e.line, absl::StrCat("must be finite, got ", FormatDouble(b)));
            return;
          }
          if (b <= 0) {
            Report(e.key, e.line, absl::StrCat("must be greater than 0, got ", FormatDouble(b)));
            return;
          }
          if (previous && b <= *previous) {
            Report(e.key, e.line,
                   absl::StrCat("must be greater than the previous bucket (",
                                FormatDouble(*previous), ")"));
          }
          previous = b;
          buckets.push_back(b);
        })) {
      return;
    }
    if (problems_.size() != before) return;
    if (buckets.empty()) {
      Report(v.key, v.line, "must not be empty");
      return;
    }
    *out = std::move(buckets);
  }

  // Syscall names, resolved to this architecture's numbers now so the syscalls
  // collector only writes numbers into its control map.
  void Syscalls(const Value& v, SyscallsConfig* out) {
    std::vector<std::string> names;
    if (!StringSet(v, "syscall", &names)) return;
    if (names.empty()) {
      // Unlike ports or devices, empty cannot sensibly mean "all" here: the
      // collector counts a chosen set. Rather than silently counting nothing,
      // say how to turn it off.
      Report(v.key, v.line, "must not be empty (set enabled: false to turn the collector off)");
      return;
    }
    std::vector<std::string> native;
    std::vector<int> numbers;
    std::vector<std::string> unavailable;
    const size_t before = problems_.size();
    for (size_t i = 0; i < names.size(); ++i) {
      int nr = 0;
      switch (ResolveSyscall(names[i], &nr)) {
        case SyscallKind::kNative:
          native.push_back(names[i]);
          numbers.push_back(nr);
          break;
        case SyscallKind::kOtherArch:
          unavailable.push_back(names[i]);
          break;
        case SyscallKind::kUnknown: {
          const YAML::Node element = v.node[i];
          const int line = LineOf(element);
          Report(absl::StrCat(v.key, "[", i, "]"), line > 0 ? line : v.line,
                 absl::StrCat("unknown syscall ", Quote(names[i])));
          break;
        }
      }
    }
    if (problems_.size() != before) return;
    out->syscalls = std::move(native);
    out->numbers = std::move(numbers);
    out->unavailable = std::move(unavailable);
  }

  // A matchLabels map: label name -> value, both strings.
  void Labels(const Value& v, std::map<std::string, std::string>* out) {
    if (v.node.IsNull()) {
      out->clear();
      return;
    }
    if (!v.node.IsMap()) {
      Report(v.key, v.line, absl::StrCat("must be a map of label: value, got ", Describe(v.node)));
      return;
    }
    std::map<std::string, std::string> labels;
    std::map<std::string, int> seen;
    const size_t before = problems_.size();
    for (const auto& entry : v.node) {
      const int line = LineOf(entry.first);
      if (!entry.first.IsScalar() || entry.first.Scalar().empty()) {
        Report(v.key, line,
               absl::StrCat("label names must be non-empty strings, got ", Describe(entry.first)));
        continue;
      }
      const std::string& name = entry.first.Scalar();
      const std::string key = JoinKey(v.key, name);
      if (const auto [it, inserted] = seen.emplace(name, line); !inserted) {
        Report(key, line, absl::StrCat("duplicate key (first set on line ", it->second, ")"));
        continue;
      }
      std::string value;
      if (String(Value{entry.second, key, line}, &value)) labels[name] = std::move(value);
    }
    if (problems_.size() == before) *out = std::move(labels);
  }

 private:
  // `${VAR}` -> the variable's value (empty when unset), `$$` -> `$`. A `$`
  // followed by anything else is kept as is, so values like "pa$word" need no
  // escaping. Done per scalar after YAML parsing so that a value containing
  // YAML syntax cannot change the document's structure or its line numbers.
  bool Expand(const Value& v, std::string* out, bool* substituted) {
    const std::string& in = v.node.Scalar();
    *substituted = false;
    std::string result;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] != '$' || i + 1 == in.size()) {
        result.push_back(in[i]);
        continue;
      }
      if (in[i + 1] == '$') {
        result.push_back('$');
        ++i;
        continue;
      }
      if (in[i + 1] != '{') {
        result.push_back('$');
        continue;
      }
      const size_t close = in.find('}', i + 2);
      if (close == std::string::npos) {
        Report(v.key, v.line,
               absl::StrCat("\"${\" without a closing \"}\" in ", Quote(in),
                            " (write $$ for a literal $)"));
        return false;
      }
      const std::string name = in.substr(i + 2, close - i - 2);
      bool valid = !name.empty() && IsVarStart(name[0]);
      for (char c : name) valid = valid && IsVarChar(c);
      if (!valid) {
        Report(v.key, v.line,
               absl::StrCat("invalid environment variable name ", Quote(name), " in ", Quote(in)));
        return false;
      }
      if (const std::optional<std::string> value = env_(name)) result += *value;
      *substituted = true;
      i = close;
    }
    *out = std::move(result);
    return true;
  }

  const EnvLookup& env_;
  std::vector<ConfigProblem> problems_;
};

// One function per section, each a flat table of its keys: the schema reads
// top to bottom like SPEC's YAML.

void ParseTargets(Parser& p, const Value& v, TargetsConfig* t) {
  p.Map(v, {
               {"namespaces", [&](const Value& f) { p.StringSet(f, "namespace", &t->namespaces); }},
               {"exclude_namespaces",
                [&](const Value& f) { p.StringSet(f, "namespace", &t->exclude_namespaces); }},
               {"pod_selector", [&](const Value& f) { p.Labels(f, &t->pod_selector); }},
               {"host_processes", [&](const Value& f) { p.Bool(f, &t->host_processes); }},
           });
}

void ParseKubernetesEnabled(Parser& p, const Value& f, std::string* out) {
  // `enabled: true` is a YAML boolean while `enabled: auto` is a string; both
  // spellings of true/false are accepted and stored as the words.
  if (f.node.IsScalar() && !IsQuoted(f.node) && ParseBool(f.node.Scalar())) {
    bool b = false;
    if (p.Bool(f, &b)) *out = b ? "true" : "false";
    return;
  }
  p.OneOf(f, {"auto", "true", "false"}, out);
}

void ParseKubernetes(Parser& p, const Value& v, KubernetesConfig* k) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { ParseKubernetesEnabled(p, f, &k->enabled); }},
               {"node_name", [&](const Value& f) { p.String(f, &k->node_name); }},
               {"kubeconfig", [&](const Value& f) { p.String(f, &k->kubeconfig); }},
           });
}

void ParseMaxSeries(Parser& p, const Value& f, int64_t* out) {
  int64_t n = 0;
  if (!p.Int(f, "a whole number of at least 1", &n)) return;
  if (n < 1) {
    p.Report(f.key, f.line, absl::StrCat("must be at least 1, got ", n));
    return;
  }
  *out = n;
}

void ParseLimits(Parser& p, const Value& v, LimitsConfig* l) {
  p.Map(v, {
               {"max_series_per_collector",
                [&](const Value& f) { ParseMaxSeries(p, f, &l->max_series_per_collector); }},
           });
}

void ParseInterval(Parser& p, const Value& f, nanoseconds* out) {
  nanoseconds d{};
  if (!p.Duration(f, &d)) return;
  if (d <= nanoseconds(0)) {
    p.Report(f.key, f.line, "must be greater than 0");
    return;
  }
  *out = d;
}

void ParseTcp(Parser& p, const Value& v, TcpConfig* c) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { p.Bool(f, &c->enabled); }},
               {"ports", [&](const Value& f) { p.PortSet(f, &c->ports); }},
               {"latency_buckets", [&](const Value& f) { p.Buckets(f, &c->latency_buckets); }},
           });
}

void ParseTopology(Parser& p, const Value& v, TopologyConfig* c) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { p.Bool(f, &c->enabled); }},
               {"granularity",
                [&](const Value& f) {
                  p.OneOf(f, {"pod", "workload"}, &c->granularity);
                }},
               {"external_peers",
                [&](const Value& f) {
                  p.OneOf(f, {"aggregate", "address"}, &c->external_peers);
                }},
               {"service_graph_metrics",
                [&](const Value& f) { p.Bool(f, &c->service_graph_metrics); }},
           });
}

void ParseBlockio(Parser& p, const Value& v, BlockioConfig* c) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { p.Bool(f, &c->enabled); }},
               {"devices", [&](const Value& f) { p.StringSet(f, "device", &c->devices); }},
           });
}

void ParseSyscalls(Parser& p, const Value& v, SyscallsConfig* c) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { p.Bool(f, &c->enabled); }},
               {"syscalls", [&](const Value& f) { p.Syscalls(f, c); }},
           });
}

void ParseCpu(Parser& p, const Value& v, CpuConfig* c) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { p.Bool(f, &c->enabled); }},
               // 0 is allowed: it records every off-CPU episode, however short.
               {"offcpu_min", [&](const Value& f) { p.Duration(f, &c->offcpu_min); }},
               {"stacks", [&](const Value& f) { p.Bool(f, &c->stacks); }},
           });
}

void ParseDns(Parser& p, const Value& v, DnsConfig* c) {
  p.Map(v, {
               {"enabled", [&](const Value& f) { p.Bool(f, &c->enabled); }},
               {"ports", [&](const Value& f) { p.PortSet(f, &c->ports); }},
           });
}

// For collectors whose only key is `enabled`.
void ParseEnabledOnly(Parser& p, const Value& v, bool* enabled) {
  p.Map(v, {{"enabled", [&](const Value& f) { p.Bool(f, enabled); }}});
}

void ParseCollectors(Parser& p, const Value& v, CollectorsConfig* c) {
  p.Map(v,
        {
            {"tcp", [&](const Value& s) { ParseTcp(p, s, &c->tcp); }},
            {"topology", [&](const Value& s) { ParseTopology(p, s, &c->topology); }},
            {"drops", [&](const Value& s) { ParseEnabledOnly(p, s, &c->drops.enabled); }},
            {"blockio", [&](const Value& s) { ParseBlockio(p, s, &c->blockio); }},
            {"syscalls", [&](const Value& s) { ParseSyscalls(p, s, &c->syscalls); }},
            {"cpu", [&](const Value& s) { ParseCpu(p, s, &c->cpu); }},
            {"dns", [&](const Value& s) { ParseDns(p, s, &c->dns); }},
            {"pagecache", [&](const Value& s) { ParseEnabledOnly(p, s, &c->pagecache.enabled); }},
        });
}

void ParseDocument(Parser& p, const YAML::Node& root, Config* c) {
  p.Map(Value{root, "", std::max(LineOf(root), 1)},
        {
            {"interval", [&](const Value& v) { ParseInterval(p, v, &c->interval); }},
            {"targets", [&](const Value& v) { ParseTargets(p, v, &c->targets); }},
            {"kubernetes", [&](const Value& v) { ParseKubernetes(p, v, &c->kubernetes); }},
            {"limits", [&](const Value& v) { ParseLimits(p, v, &c->limits); }},
            {"collectors", [&](const Value& v) { ParseCollectors(p, v, &c->collectors); }},
        });
}

int ExceptionLine(const YAML::Mark& mark) { return mark.is_null() ? 0 : mark.line + 1; }

}  // namespace

bool TargetsConfig::Filters() const {
  // exclude_namespaces alone does not count: without Kubernetes metadata nothing
  // can be excluded by namespace, and the default config excludes kube-system,
  // so counting it would switch every default install off the BPF fast path of
  // "watch every cgroup" onto per-event control-map lookups.
  return !namespaces.empty() || !pod_selector.empty() || !host_processes;
}

bool* Config::EnabledFlag(std::string_view name) {
  CollectorsConfig& c = collectors;
  if (name == "tcp") return &c.tcp.enabled;
  if (name == "topology") return &c.topology.enabled;
  if (name == "drops") return &c.drops.enabled;
  if (name == "blockio") return &c.blockio.enabled;
  if (name == "syscalls") return &c.syscalls.enabled;
  if (name == "cpu") return &c.cpu.enabled;
  if (name == "dns") return &c.dns.enabled;
  if (name == "pagecache") return &c.pagecache.enabled;
  return nullptr;
}

const bool* Config::EnabledFlag(std::string_view name) const {
  return const_cast<Config*>(this)->EnabledFlag(name);
}

std::string ConfigProblem::ToString() const {
  std::string out;
  if (line > 0) absl::StrAppend(&out, "line ", line, ": ");
  if (!key.empty()) absl::StrAppend(&out, key, ": ");
  absl::StrAppend(&out, message);
  return out;
}

EnvLookup ProcessEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

Config DefaultConfig() {
  Config config;
  SyscallsConfig& s = config.collectors.syscalls;
  std::vector<std::string> names = std::move(s.syscalls);
  s.syscalls.clear();
  s.numbers.clear();
  s.unavailable.clear();
  // The built-in names are all real syscalls somewhere, so each is either
  // native here or (epoll_wait on arm64) set aside exactly as the parser does.
  for (std::string& name : names) {
    int nr = 0;
    switch (ResolveSyscall(name, &nr)) {
      case SyscallKind::kNative:
        s.syscalls.push_back(std::move(name));
        s.numbers.push_back(nr);
        break;
      case SyscallKind::kOtherArch:
      case SyscallKind::kUnknown:
        s.unavailable.push_back(std::move(name));
        break;
    }
  }
  return config;
}

ConfigResult ParseConfig(std::string_view yaml_text, const EnvLookup& env) {
  ConfigResult result;
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    result.problems.push_back(ConfigProblem{"", ExceptionLine(e.mark), e.msg});
    return result;
  }
  // Empty documents (a trailing "---", a comment-only part) carry no keys.
  std::erase_if(documents, [](const YAML::Node& d) { return d.IsNull(); });
  if (documents.size() > 1) {
    result.problems.push_back(
        ConfigProblem{"", std::max(LineOf(documents[1]), 1),
                      "the config must be a single YAML document, found a second one (\"---\")"});
    return result;
  }

  Config config = DefaultConfig();
  Parser parser(env);
  if (!documents.empty()) {
    try {
      ParseDocument(parser, documents[0], &config);
    } catch (const YAML::Exception& e) {
      // Not expected (values are only read as scalars), but a config must never
      // take the process down: report it like any other problem.
      parser.Report("", ExceptionLine(e.mark), e.msg);
    }
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

std::optional<std::chrono::nanoseconds> ParseDuration(std::string_view text) {
  if (text == "0") return nanoseconds(0);
  if (text.empty()) return std::nullopt;
  struct Unit {
    std::string_view name;
    int64_t ns;
  };
  constexpr int64_t kSecond = 1'000'000'000;
  // Largest first. As in Prometheus, each unit may appear once and only in
  // this order, so "1m30s" is valid and "30s1m" is not.
  static constexpr Unit kUnits[] = {
      {"y", 365 * 24 * 3600 * kSecond},
      {"w", 7 * 24 * 3600 * kSecond},
      {"d", 24 * 3600 * kSecond},
      {"h", 3600 * kSecond},
      {"m", 60 * kSecond},
      {"s", kSecond},
      {"ms", 1'000'000},
      {"us", 1'000},
      {"ns", 1},
  };
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  int64_t total = 0;
  size_t next_unit = 0;
  while (!text.empty()) {
    size_t digits = 0;
    while (digits < text.size() && is_digit(text[digits])) ++digits;
    if (digits == 0) return std::nullopt;
    int64_t count = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, count);
    if (ec != std::errc() || ptr != text.data() + digits) return std::nullopt;
    text.remove_prefix(digits);
    size_t letters = 0;
    while (letters < text.size() && !is_digit(text[letters])) ++letters;
    const std::string_view unit = text.substr(0, letters);
    text.remove_prefix(letters);
    size_t u = next_unit;
    while (u < std::size(kUnits) && kUnits[u].name != unit) ++u;
    if (u == std::size(kUnits)) return std::nullopt;
    next_unit = u + 1;
    if (count > (std::numeric_limits<int64_t>::max() - total) / kUnits[u].ns) return std::nullopt;
    total += count * kUnits[u].ns;
  }
  return nanoseconds(total);
}

}  // namespace kmon
