// The strict YAML engine every kmon config file is read with (the main config, each
// collector's section, the web config): every key must be known, every value is
// checked before anything is applied, and all problems are collected with their
// dotted key and line instead of stopping at the first, so `--check-config` and a
// rejected reload show the whole list in one go. One set of rules for all files:
// YAML 1.2 booleans only (no yes/no/on/off), quoted scalars are strings, `${VAR}`
// expanded per scalar after parsing.
#pragma once

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kmon {

/// One problem found in a config: which key, on which YAML line (1-based; 0 when
/// the problem is not tied to a line), and what is wrong.
struct ConfigProblem {
  std::string key;  // dotted path, e.g. "collectors.tcp.latency_buckets[3]"
  int line = 0;
  std::string message;
  /// "line 12: collectors.tcp.latency_buckets[3]: must be greater than 0.5"
  std::string ToString() const;
};

/// Looks up an environment variable for ${VAR} expansion; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
/// The process environment.
EnvLookup ProcessEnv();
/// No variables at all (files that do not expand ${VAR}, such as the web config).
EnvLookup NoEnv();

/// Parses a Prometheus-style duration: "15s", "1ms", "1m30s", "2h", "100us", "0".
std::optional<std::chrono::nanoseconds> ParseDuration(std::string_view text);

/// A value to check: its node, its dotted key, and the line problems are reported
/// on. For a map entry that is the key's line, because yaml-cpp marks an empty
/// value (`kubeconfig:` with nothing after it) at the *next* token, which may be
/// several lines further down.
struct YamlValue {
  YAML::Node node;
  std::string key;
  int line = 0;
};

/// 1-based line of a node, 0 when it has none.
int YamlLineOf(const YAML::Node& node);
/// "\"text\"": how messages quote what the user wrote.
std::string Quote(const std::string& s);

/// Reads a config text as exactly one YAML document. Nullopt with the problems
/// filled in on a syntax error or a second document; an empty text is a null node.
std::optional<YAML::Node> LoadSingleDocument(std::string_view text,
                                             std::vector<ConfigProblem>* problems);

/// Checks values against a schema written as code: each section is a Map() call
/// with a table of its keys, each key a handler calling the typed readers below.
/// A reader that finds a problem reports it and leaves its output untouched.
class YamlParser {
 public:
  using Handler = std::function<void(const YamlValue&)>;
  struct Field {
    const char* name;
    Handler handle;
    /// False for keys that are known only to be refused (a format's keys kmon
    /// does not implement): not offered in "expected one of".
    bool listed = true;
  };

  explicit YamlParser(EnvLookup env) : env_(std::move(env)) {}

  std::vector<ConfigProblem> TakeProblems() { return std::move(problems_); }
  /// Problems reported so far (to tell whether a reader added any).
  size_t ProblemCount() const { return problems_.size(); }
  void Report(std::string key, int line, std::string message);

  /// Walks the map at `v`; each key must be one of `fields` and appear once. An
  /// empty value (`pagecache:` with nothing under it) is an empty map, so every
  /// key in it keeps its default.
  void Map(const YamlValue& v, const std::vector<Field>& fields);

  /// Any scalar, `${VAR}`-expanded. `want` names the expected type for messages.
  /// `quoted_literal`, when given, is set for a quoted scalar with no ${VAR} in it.
  bool Scalar(const YamlValue& v, const std::string& want, std::string* out,
              bool* quoted_literal = nullptr);
  bool String(const YamlValue& v, std::string* out);
  bool Bool(const YamlValue& v, bool* out);
  bool Int(const YamlValue& v, const std::string& want, int64_t* out);
  bool Number(const YamlValue& v, double* out);
  bool Duration(const YamlValue& v, std::chrono::nanoseconds* out);
  bool OneOf(const YamlValue& v, std::initializer_list<const char*> allowed, std::string* out);
  /// Calls `item` for each element of the list at `v`, keyed `key[i]` and reported on
  /// the element's own line. False when `v` is not a list.
  bool List(const YamlValue& v, const std::function<void(const YamlValue&, size_t)>& item);
  /// A list of distinct strings (`what` names an element in messages).
  bool StringSet(const YamlValue& v, const char* what, std::vector<std::string>* out);
  /// A list of distinct TCP/UDP port numbers.
  void PortSet(const YamlValue& v, std::vector<uint16_t>* out);
  /// Histogram upper bounds in seconds: finite, positive, strictly increasing, not empty.
  void Buckets(const YamlValue& v, std::vector<double>* out);
  /// Walks a map whose keys the user names (labels, users): `each` gets every
  /// entry once; keys that are not non-empty strings (`names` says what they
  /// are in messages) and repeated keys are problems. A null value has no
  /// entries; anything but a map is reported as not being `want`.
  bool Entries(const YamlValue& v, const std::string& want, const char* names,
               const std::function<void(const std::string&, const YamlValue&)>& each);
  /// A map of string: string (matchLabels).
  void Labels(const YamlValue& v, std::map<std::string, std::string>* out);

  /// True when `v` is a plain (unquoted) scalar spelling a YAML 1.2 boolean.
  static bool IsPlainBool(const YamlValue& v);

 private:
  template <typename T, typename ParseFn>
  bool Typed(const YamlValue& v, const std::string& want, ParseFn parse, T* out);
  bool Expand(const YamlValue& v, std::string* out, bool* substituted);

  EnvLookup env_;
  std::vector<ConfigProblem> problems_;
};

}  // namespace kmon
