#include "base/strict_yaml.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "yaml-cpp/eventhandler.h"

namespace kmon {
namespace {

using std::chrono::nanoseconds;

int LineOfNode(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null() ? 0 : mark.line + 1;
}

std::string JoinKey(const std::string& path, const std::string& name) {
  return path.empty() ? std::string(name) : absl::StrCat(path, ".", name);
}

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
int ExceptionLine(const YAML::Mark& mark) { return mark.is_null() ? 0 : mark.line + 1; }

// Beyond these a config text is refused before parsing: a real config is a few KiB.
constexpr size_t kMaxConfigBytes = 4 << 20;
constexpr int kMaxDocuments = 1000;
// Histogram bounds in seconds that whole nanoseconds can hold.
constexpr double kMinBucketSeconds = 1e-9;
constexpr double kMaxBucketSeconds = 1e9;

// What the parser saw of one document: whether it holds anything but a null, and
// the line where it starts.
struct DocumentShape : YAML::EventHandler {
  bool content = false;
  int line = 0;
  bool HasContent() const { return content; }
  void Saw(const YAML::Mark& m) {
    if (!content) line = ExceptionLine(m);
    content = true;
  }
  void OnDocumentStart(const YAML::Mark& m) override { line = ExceptionLine(m); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { Saw(m); }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                const std::string&) override {
    Saw(m);
  }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Saw(m);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Saw(m);
  }
  void OnMapEnd() override {}
};

}  // namespace

int YamlLineOf(const YAML::Node& node) { return LineOfNode(node); }

std::string Quote(const std::string& s) { return absl::StrCat("\"", s, "\""); }

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

EnvLookup NoEnv() {
  return [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
}

std::optional<YAML::Node> LoadSingleDocument(std::string_view text,
                                             std::vector<ConfigProblem>* problems) {
  if (text.size() > kMaxConfigBytes) {
    problems->push_back(ConfigProblem{
        "", 0,
        absl::StrCat("the config is ", text.size(), " bytes; at most ", kMaxConfigBytes,
                     " are read")});
    return std::nullopt;
  }
  try {
    // yaml-cpp's LoadAll never returns on some inputs (a lone "," is an endless
    // run of empty documents), so the documents are walked here first, a bounded
    // number of them, with the same parser LoadAll drives: only once that walk
    // has reached the end is LoadAll safe. A document with content is the config;
    // a second one is a mistake ("---" in the middle of a file).
    std::stringstream in{std::string(text)};
    YAML::Parser parser(in);
    int with_content = 0;
    for (int i = 0;; ++i) {
      if (i == kMaxDocuments) {
        problems->push_back(ConfigProblem{
            "", 1,
            absl::StrCat("not a YAML document: the parser found more than ", kMaxDocuments,
                         " documents in it (is the file YAML?)")});
        return std::nullopt;
      }
      DocumentShape doc;
      if (!parser.HandleNextDocument(doc)) break;
      if (!doc.HasContent()) continue;  // a trailing "---", a comment-only part
      if (++with_content > 1) {
        problems->push_back(ConfigProblem{
            "", std::max(doc.line, 1),
            "the config must be a single YAML document, found a second one (\"---\")"});
        return std::nullopt;
      }
    }
    for (const YAML::Node& d : YAML::LoadAll(std::string(text))) {
      if (!d.IsNull()) return d;
    }
    return YAML::Node(YAML::NodeType::Null);
  } catch (const YAML::Exception& e) {
    problems->push_back(ConfigProblem{"", ExceptionLine(e.mark), e.msg});
    return std::nullopt;
  }
}

bool YamlParser::IsPlainBool(const YamlValue& v) {
  return v.node.IsScalar() && !IsQuoted(v.node) && ParseBool(v.node.Scalar()).has_value();
}

void YamlParser::Report(std::string key, int line, std::string message) {
  problems_.push_back(ConfigProblem{std::move(key), line, std::move(message)});
}

// Walks the map at `v`; each key must be one of `fields` and appear once. An
// empty value (`pagecache:` with nothing under it) is an empty map, so every
// key in it keeps its default.
void YamlParser::Map(const YamlValue& v, const std::vector<Field>& fields) {
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
    const int line = LineOfNode(key_node);
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
      for (const Field& f : fields) {
        if (f.listed) names.push_back(f.name);
      }
      Report(key, line,
             absl::StrCat("unknown key (expected one of: ", absl::StrJoin(names, ", "), ")"));
      continue;
    }
    field->handle(YamlValue{entry.second, key, line});
  }
}

// Any scalar, `${VAR}`-expanded. `want` names the expected type for messages.
// `quoted_literal`, when given, is set for a quoted scalar with no ${VAR} in
// it: a string by the user's own choice. One with a variable is judged by its
// expanded value, because in flow style (`{enabled: "${ON}"}`) the quotes are
// required: `{` and `}` would otherwise end the plain scalar.
bool YamlParser::Scalar(const YamlValue& v, const std::string& want, std::string* out,
                        bool* quoted_literal) {
  if (!v.node.IsScalar()) {
    std::string hint;
    if (v.node.IsNull() && want == "a string") hint = " (write \"\" for an empty string)";
    Report(v.key, v.line, absl::StrCat("must be ", want, ", got ", Describe(v.node), hint));
    return false;
  }
  bool substituted = false;
  if (!Expand(v, out, &substituted)) return false;
  // A double-quoted "\0" (or a variable holding one) would cut the value short
  // wherever it reaches C (paths, cgroup names, label values).
  if (out->find('\0') != std::string::npos) {
    Report(v.key, v.line, "must not contain a NUL byte");
    return false;
  }
  if (quoted_literal != nullptr) *quoted_literal = IsQuoted(v.node) && !substituted;
  return true;
}

bool YamlParser::String(const YamlValue& v, std::string* out) { return Scalar(v, "a string", out); }

// A boolean or number: a plain scalar whose text `parse` accepts.
template <typename T, typename ParseFn>
bool YamlParser::Typed(const YamlValue& v, const std::string& want, ParseFn parse, T* out) {
  std::string text;
  bool quoted_literal = false;
  if (!Scalar(v, want, &text, &quoted_literal)) return false;
  const std::optional<T> parsed = parse(text);
  if (!parsed || quoted_literal) {
    Report(
        v.key, v.line,
        absl::StrCat("must be ", want, ", got ", quoted_literal ? "the string " : "", Quote(text)));
    return false;
  }
  *out = *parsed;
  return true;
}

bool YamlParser::Bool(const YamlValue& v, bool* out) {
  return Typed(v, "true or false", ParseBool, out);
}

bool YamlParser::Int(const YamlValue& v, const std::string& want, int64_t* out) {
  return Typed(v, want, ParseInt, out);
}

bool YamlParser::Number(const YamlValue& v, double* out) {
  return Typed(v, "a number", ParseNumber, out);
}

bool YamlParser::Duration(const YamlValue& v, nanoseconds* out) {
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

bool YamlParser::OneOf(const YamlValue& v, std::initializer_list<const char*> allowed,
                       std::string* out) {
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
bool YamlParser::List(const YamlValue& v,
                      const std::function<void(const YamlValue&, size_t)>& item) {
  if (!v.node.IsSequence()) {
    Report(v.key, v.line, absl::StrCat("must be a list, got ", Describe(v.node)));
    return false;
  }
  for (size_t i = 0; i < v.node.size(); ++i) {
    const YAML::Node element = v.node[i];
    const int line = LineOfNode(element);
    item(YamlValue{element, absl::StrCat(v.key, "[", i, "]"), line > 0 ? line : v.line}, i);
  }
  return true;
}

// A list of distinct strings: these lists are sets (namespaces, devices), and
// a repeated entry is more likely a typo for another one than intended.
bool YamlParser::StringSet(const YamlValue& v, const char* what, std::vector<std::string>* out) {
  std::vector<std::string> items;
  std::map<std::string, size_t> seen;
  const size_t before = problems_.size();
  if (!List(v, [&](const YamlValue& e, size_t i) {
        std::string s;
        if (!String(e, &s)) return;
        if (const auto [it, inserted] = seen.emplace(s, i); !inserted) {
          Report(
              e.key, e.line,
              absl::StrCat("duplicate ", what, " ", Quote(s), " (also at index ", it->second, ")"));
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
void YamlParser::PortSet(const YamlValue& v, std::vector<uint16_t>* out) {
  std::vector<uint16_t> ports;
  std::map<int64_t, size_t> seen;
  const size_t before = problems_.size();
  List(v, [&](const YamlValue& e, size_t i) {
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
void YamlParser::Buckets(const YamlValue& v, std::vector<double>* out) {
  std::vector<double> buckets;
  const size_t before = problems_.size();
  std::optional<double> previous;  // last valid bucket, for the ordering check
  if (!List(v, [&](const YamlValue& e, size_t) {
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
        // The kernel side bins whole nanoseconds: a bound must be at least one,
        // stay far from int64's end, and differ from the previous one in them.
        if (b < kMinBucketSeconds || b > kMaxBucketSeconds) {
          Report(e.key, e.line,
                 absl::StrCat("must be from 1e-09 (1 ns) to 1e+09 seconds, got ", FormatDouble(b)));
          return;
        }
        if (previous && std::llround(b * 1e9) <= std::llround(*previous * 1e9)) {
          Report(e.key, e.line,
                 absl::StrCat("must be greater than the previous bucket (", FormatDouble(*previous),
                              ")", b > *previous ? " by at least 1 ns" : ""));
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

// A matchLabels map: label name -> value, both strings.
bool YamlParser::Entries(const YamlValue& v, const std::string& want, const char* names,
                         const std::function<void(const std::string&, const YamlValue&)>& each) {
  if (v.node.IsNull()) return true;
  if (!v.node.IsMap()) {
    Report(v.key, v.line, absl::StrCat("must be ", want, ", got ", Describe(v.node)));
    return false;
  }
  std::map<std::string, int> seen;
  for (const auto& entry : v.node) {
    const int line = LineOfNode(entry.first);
    if (!entry.first.IsScalar() || entry.first.Scalar().empty()) {
      Report(v.key, line,
             absl::StrCat(names, " must be non-empty strings, got ", Describe(entry.first)));
      continue;
    }
    const std::string& name = entry.first.Scalar();
    const std::string key = JoinKey(v.key, name);
    if (const auto [it, inserted] = seen.emplace(name, line); !inserted) {
      Report(key, line, absl::StrCat("duplicate key (first set on line ", it->second, ")"));
      continue;
    }
    each(name, YamlValue{entry.second, key, line});
  }
  return true;
}

void YamlParser::Labels(const YamlValue& v, std::map<std::string, std::string>* out) {
  std::map<std::string, std::string> labels;
  const size_t before = problems_.size();
  if (!Entries(v, "a map of label: value", "label names",
               [&](const std::string& name, const YamlValue& value) {
                 std::string s;
                 if (String(value, &s)) labels[name] = std::move(s);
               })) {
    return;
  }
  if (problems_.size() == before) *out = std::move(labels);
}

// `${VAR}` -> the variable's value (empty when unset), `$$` -> `$`. A `$`
// followed by anything else is kept as is, so values like "pa$word" need no
// escaping. Done per scalar after YAML parsing so that a value containing
// YAML syntax cannot change the document's structure or its line numbers.
bool YamlParser::Expand(const YamlValue& v, std::string* out, bool* substituted) {
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
