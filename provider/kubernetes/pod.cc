#include "provider/kubernetes/pod.h"

#include <absl/status/status.h>
#include <absl/strings/str_cat.h>
#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <utility>

namespace kmon {
namespace {

using nlohmann::json;

constexpr char kMirrorAnnotation[] = "kubernetes.io/config.mirror";
constexpr char kPodTemplateHashLabel[] = "pod-template-hash";
constexpr size_t kContainerIdLength = 64;
// The CronJob API rejects names over 52 characters, to leave room for the Job suffix.
constexpr size_t kMaxCronJobName = 52;

// nlohmann::json throws on a read of the wrong type, and the API server is not the only
// thing that can hand us JSON, so every read below first checks the type. A member that
// is absent and one that is null mean the same (Go omits or nulls empty fields alike).
const json* Member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string Path(const std::string& parent, const char* key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

absl::Status WrongType(const std::string& path, const char* want) {
  return absl::InvalidArgumentError(absl::StrCat(path, " is not ", want));
}

absl::Status Missing(const std::string& path) {
  return absl::InvalidArgumentError(absl::StrCat(path, " is missing"));
}

// Reads obj[key] into *out when it is a string; an absent member leaves *out as it is.
absl::Status OptString(const json& obj, const char* key, const std::string& parent,
                       std::string* out) {
  const json* v = Member(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return WrongType(Path(parent, key), "a string");
  *out = v->get_ref<const std::string&>();
  return absl::OkStatus();
}

// As OptString, but an absent or empty string is an error.
absl::Status ReqString(const json& obj, const char* key, const std::string& parent,
                       std::string* out) {
  out->clear();
  if (absl::Status s = OptString(obj, key, parent, out); !s.ok()) return s;
  if (out->empty()) return Missing(Path(parent, key));
  return absl::OkStatus();
}

absl::Status OptBool(const json& obj, const char* key, const std::string& parent, bool* out) {
  const json* v = Member(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return WrongType(Path(parent, key), "a boolean");
  *out = v->get<bool>();
  return absl::OkStatus();
}

// *out = obj[key] when it is an object, nullptr when absent.
absl::Status OptObject(const json& obj, const char* key, const std::string& parent,
                       const json** out) {
  *out = Member(obj, key);
  if (*out != nullptr && !(*out)->is_object()) return WrongType(Path(parent, key), "an object");
  return absl::OkStatus();
}

// *out = obj[key] when it is an array, nullptr when absent.
absl::Status OptArray(const json& obj, const char* key, const std::string& parent,
                      const json** out) {
  *out = Member(obj, key);
  if (*out != nullptr && !(*out)->is_array()) return WrongType(Path(parent, key), "an array");
  return absl::OkStatus();
}

std::string Index(const std::string& path, size_t i) { return absl::StrCat(path, "[", i, "]"); }

// A map of strings (labels, annotations).
absl::Status StringMap(const json& obj, const char* key, const std::string& parent,
                       std::map<std::string, std::string>* out) {
  const json* m = nullptr;
  if (absl::Status s = OptObject(obj, key, parent, &m); !s.ok() || m == nullptr) return s;
  for (auto it = m->begin(); it != m->end(); ++it) {
    if (!it->is_string()) {
      return WrongType(absl::StrCat(Path(parent, key), "[\"", it.key(), "\"]"), "a string");
    }
    out->emplace(it.key(), it->get_ref<const std::string&>());
  }
  return absl::OkStatus();
}

bool IsDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool IsLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// "2024-05-01T10:00:00Z" (metav1.Time is RFC 3339 in UTC, whole seconds) -> Unix seconds.
std::optional<int64_t> ParseApiTime(const std::string& text) {
  int year, mon, day, hour, min, sec;
  int consumed = -1;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &year, &mon, &day, &hour, &min, &sec,
                  &consumed) != 6 ||
      consumed != static_cast<int>(text.size())) {
    return std::nullopt;
  }
  struct tm tm = {};
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  return static_cast<int64_t>(timegm(&tm));
}

// "<group>/<version>" -> group; "v1" (the core group) -> "".
std::string_view ApiGroup(std::string_view api_version) {
  size_t slash = api_version.find('/');
  return slash == std::string_view::npos ? std::string_view() : api_version.substr(0, slash);
}

// The CronJob controller names each Job "<cronjob>-<scheduled time>": the scheduled time in
// minutes since the epoch since the controller of Kubernetes 1.21 (8 digits from 1973 until
// 2160), in Unix seconds before it (10 digits from 2001 until 2286). Pods of a Job carry
// nothing else that leads to the CronJob, and Jobs are not watched, so the name is all there
// is. To keep a Job someone named "migrate-2" or "backup-7" a Job, the suffix must be 8 to
// 10 digits and the rest a name the CronJob API accepts (1 to 52 characters). A hand-made
// Job named exactly like a scheduled one is still taken for a CronJob's: a known limit.
std::optional<std::string> CronJobOf(const std::string& job) {
  size_t dash = job.rfind('-');
  if (dash == std::string::npos || dash == 0 || dash > kMaxCronJobName) return std::nullopt;
  std::string_view suffix = std::string_view(job).substr(dash + 1);
  if (suffix.size() < 8 || suffix.size() > 10 || !IsDigits(suffix)) return std::nullopt;
  return job.substr(0, dash);
}

struct OwnerRef {
  std::string api_version, kind, name;
  bool controller = false;
};

absl::Status DecodeOwners(const json& metadata, std::vector<OwnerRef>* owners) {
  const json* refs = nullptr;
  if (absl::Status s = OptArray(metadata, "ownerReferences", "metadata", &refs);
      !s.ok() || refs == nullptr) {
    return s;
  }
  for (size_t i = 0; i < refs->size(); ++i) {
    const json& ref = (*refs)[i];
    std::string path = Index("metadata.ownerReferences", i);
    if (!ref.is_object()) return WrongType(path, "an object");
    OwnerRef owner;
    if (absl::Status s = OptString(ref, "apiVersion", path, &owner.api_version); !s.ok()) return s;
    if (absl::Status s = ReqString(ref, "kind", path, &owner.kind); !s.ok()) return s;
    if (absl::Status s = ReqString(ref, "name", path, &owner.name); !s.ok()) return s;
    if (absl::Status s = OptBool(ref, "controller", path, &owner.controller); !s.ok()) return s;
    owners->push_back(std::move(owner));
  }
  return absl::OkStatus();
}

// Fills workload_kind and workload_name from the owners (the rule is on DecodePod).
void ResolveWorkload(const std::vector<OwnerRef>& owners, bool mirror, KubePod* pod) {
  pod->workload_kind = "Pod";
  pod->workload_name = pod->name;
  // A mirror pod's owner is its Node, which is no workload: the static pod stands alone.
  if (mirror || owners.empty()) return;
  auto top =
      std::find_if(owners.begin(), owners.end(), [](const OwnerRef& o) { return o.controller; });
  const OwnerRef& owner = top != owners.end() ? *top : owners.front();
  if (owner.kind == "Node") return;
  pod->workload_kind = owner.kind;
  pod->workload_name = owner.name;
  // A kind of that name from another API group (a custom resource) is taken as it is.
  std::string_view group = ApiGroup(owner.api_version);
  if (owner.kind == "ReplicaSet" && (owner.api_version.empty() || group == "apps")) {
    // The Deployment controller names a ReplicaSet "<deployment>-<pod-template-hash>" and
    // labels its pods with that hash; a ReplicaSet made otherwise is its own workload.
    auto hash = pod->labels.find(kPodTemplateHashLabel);
    if (hash == pod->labels.end() || hash->second.empty()) return;
    const std::string& rs = owner.name;
    size_t cut = rs.size() - std::min(rs.size(), hash->second.size() + 1);
    if (cut == 0 || rs.compare(cut, std::string::npos, "-" + hash->second) != 0) return;
    pod->workload_kind = "Deployment";
    pod->workload_name = rs.substr(0, cut);
  } else if (owner.kind == "Job" && (owner.api_version.empty() || group == "batch")) {
    if (std::optional<std::string> cron = CronJobOf(owner.name)) {
      pod->workload_kind = "CronJob";
      pod->workload_name = std::move(*cron);
    }
  }
}

// One of status.containerStatuses / initContainerStatuses / ephemeralContainerStatuses.
absl::Status DecodeContainerStatuses(const json& status, const char* key,
                                     std::map<std::string, std::string>* out) {
  const json* list = nullptr;
  if (absl::Status s = OptArray(status, key, "status", &list); !s.ok() || list == nullptr) {
    return s;
  }
  for (size_t i = 0; i < list->size(); ++i) {
    const json& c = (*list)[i];
    std::string path = Index(Path("status", key), i);
    if (!c.is_object()) return WrongType(path, "an object");
    std::string name, id;
    if (absl::Status s = ReqString(c, "name", path, &name); !s.ok()) return s;
    if (absl::Status s = OptString(c, "containerID", path, &id); !s.ok()) return s;
    // "<runtime>://<id>"; empty while the container is being created.
    size_t scheme = id.find("://");
    if (scheme != std::string::npos) id.erase(0, scheme + 3);
    // Cgroup paths carry 64-hex IDs (cgroup_identity.h); another form could never match one.
    if (id.size() != kContainerIdLength || !IsLowerHex(id)) continue;
    out->emplace(std::move(id), std::move(name));
  }
  return absl::OkStatus();
}

absl::Status AddIp(const std::string& text, const std::string& path, std::vector<IpAddress>* ips) {
  std::optional<IpAddress> ip = ParseIpAddress(text);
  if (!ip) {
    return absl::InvalidArgumentError(absl::StrCat(path, " \"", text, "\" is not an IP address"));
  }
  if (std::find(ips->begin(), ips->end(), *ip) == ips->end()) ips->push_back(*ip);
  return absl::OkStatus();
}

absl::Status DecodeIps(const json& status, std::vector<IpAddress>* ips) {
  const json* list = nullptr;
  if (absl::Status s = OptArray(status, "podIPs", "status", &list); !s.ok()) return s;
  if (list != nullptr && !list->empty()) {
    for (size_t i = 0; i < list->size(); ++i) {
      const json& entry = (*list)[i];
      std::string path = Index("status.podIPs", i);
      if (!entry.is_object()) return WrongType(path, "an object");
      std::string text;
      if (absl::Status s = ReqString(entry, "ip", path, &text); !s.ok()) return s;
      if (absl::Status s = AddIp(text, Path(path, "ip"), ips); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  // Servers older than dual-stack (1.16) set only podIP.
  std::string text;
  if (absl::Status s = OptString(status, "podIP", "status", &text); !s.ok()) return s;
  if (text.empty()) return absl::OkStatus();
  return AddIp(text, "status.podIP", ips);
}

absl::StatusOr<KubePod> DecodeChecked(const json& obj) {
  if (!obj.is_object()) return WrongType("pod", "an object");
  const json* metadata = nullptr;
  if (absl::Status s = OptObject(obj, "metadata", "", &metadata); !s.ok()) return s;
  if (metadata == nullptr) return Missing("metadata");
  KubePod pod;
  if (absl::Status s = ReqString(*metadata, "uid", "metadata", &pod.uid); !s.ok()) return s;
  if (absl::Status s = ReqString(*metadata, "namespace", "metadata", &pod.namespace_); !s.ok()) {
    return s;
  }
  if (absl::Status s = ReqString(*metadata, "name", "metadata", &pod.name); !s.ok()) return s;
  if (absl::Status s = StringMap(*metadata, "labels", "metadata", &pod.labels); !s.ok()) return s;
  std::string created;
  if (absl::Status s = OptString(*metadata, "creationTimestamp", "metadata", &created); !s.ok()) {
    return s;
  }
  if (!created.empty()) {
    std::optional<int64_t> seconds = ParseApiTime(created);
    if (!seconds) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata.creationTimestamp \"", created, "\" is not an RFC 3339 time"));
    }
    pod.creation_seconds = *seconds;
  }
  // Only the mirror annotation is read; the others (often large) are not copied.
  const json* annotations = nullptr;
  if (absl::Status s = OptObject(*metadata, "annotations", "metadata", &annotations); !s.ok()) {
    return s;
  }
  std::string mirror;
  if (annotations != nullptr) {
    if (absl::Status s =
            OptString(*annotations, kMirrorAnnotation, "metadata.annotations", &mirror);
        !s.ok()) {
      return s;
    }
  }
  if (!mirror.empty()) pod.uid = mirror;
  std::vector<OwnerRef> owners;
  if (absl::Status s = DecodeOwners(*metadata, &owners); !s.ok()) return s;
  ResolveWorkload(owners, !mirror.empty(), &pod);

  const json* spec = nullptr;
  if (absl::Status s = OptObject(obj, "spec", "", &spec); !s.ok()) return s;
  if (spec != nullptr) {
    if (absl::Status s = OptString(*spec, "nodeName", "spec", &pod.node_name); !s.ok()) return s;
    if (absl::Status s = OptBool(*spec, "hostNetwork", "spec", &pod.host_network); !s.ok()) {
      return s;
    }
  }
  const json* status = nullptr;
  if (absl::Status s = OptObject(obj, "status", "", &status); !s.ok()) return s;
  if (status != nullptr) {
    if (absl::Status s = OptString(*status, "phase", "status", &pod.phase); !s.ok()) return s;
    for (const char* key :
         {"initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"}) {
      if (absl::Status s = DecodeContainerStatuses(*status, key, &pod.containers); !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = DecodeIps(*status, &pod.ips); !s.ok()) return s;
  }
  return pod;
}

}  // namespace

std::optional<IpAddress> ParseIpAddress(std::string_view text) {
  // inet_pton wants a NUL-terminated string; the longest IPv6 text is 45 characters.
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof buf) return std::nullopt;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress out = {};
  if (text.find(':') == std::string_view::npos) {
    out[10] = 0xff;
    out[11] = 0xff;
    if (inet_pton(AF_INET, buf, out.data() + 12) != 1) return std::nullopt;
    return out;
  }
  if (inet_pton(AF_INET6, buf, out.data()) != 1) return std::nullopt;
  return out;
}

absl::StatusOr<KubePod> DecodePod(const nlohmann::json& pod) {
  // Every read above checks its type first; this only keeps a missed case (or a future
  // nlohmann change) from taking the watcher thread down.
  try {
    return DecodeChecked(pod);
  } catch (const nlohmann::json::exception& e) {
    return absl::InternalError(absl::StrCat("pod JSON: ", e.what()));
  }
}

std::string PodUidOf(const nlohmann::json& pod) {
  const json* metadata = Member(pod, "metadata");
  if (metadata == nullptr) return "";
  const json* annotations = Member(*metadata, "annotations");
  const json* mirror = annotations != nullptr ? Member(*annotations, kMirrorAnnotation) : nullptr;
  if (mirror != nullptr && mirror->is_string() && !mirror->get_ref<const std::string&>().empty()) {
    return mirror->get<std::string>();
  }
  const json* uid = Member(*metadata, "uid");
  return uid != nullptr && uid->is_string() ? uid->get<std::string>() : "";
}

PodMeta ToPodMeta(const KubePod& pod) {
  PodMeta meta;
  meta.namespace_ = pod.namespace_;
  meta.name = pod.name;
  meta.workload = pod.workload_name;
  meta.labels = pod.labels;
  meta.containers = pod.containers;
  return meta;
}

}  // namespace kmon
