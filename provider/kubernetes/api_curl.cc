#include "provider/kubernetes/api_curl.h"

#include <absl/strings/str_cat.h>
#include <dlfcn.h>

#include <type_traits>

namespace kmon {
namespace {

constexpr char kLibcurl[] = "libcurl.so.4";

absl::StatusOr<const CurlApi*> Load() {
  // Never closed: curl_global_init's state and libcurl's threads live as long as kmon.
  void* lib = dlopen(kLibcurl, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load ", kLibcurl, " for the Kubernetes API: ", dlerror()));
  }
  static CurlApi api;
  absl::Status missing;
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (fn == nullptr && missing.ok()) {
      missing = absl::FailedPreconditionError(absl::StrCat(kLibcurl, " has no ", name));
    }
  };
  bind(api.easy_init, "curl_easy_init");
  bind(api.easy_setopt, "curl_easy_setopt");
  bind(api.easy_getinfo, "curl_easy_getinfo");
  bind(api.easy_cleanup, "curl_easy_cleanup");
  bind(api.easy_strerror, "curl_easy_strerror");
  bind(api.multi_init, "curl_multi_init");
  bind(api.multi_add_handle, "curl_multi_add_handle");
  bind(api.multi_remove_handle, "curl_multi_remove_handle");
  bind(api.multi_perform, "curl_multi_perform");
  bind(api.multi_poll, "curl_multi_poll");
  bind(api.multi_info_read, "curl_multi_info_read");
  bind(api.multi_cleanup, "curl_multi_cleanup");
  bind(api.multi_strerror, "curl_multi_strerror");
  bind(api.slist_append, "curl_slist_append");
  bind(api.slist_free_all, "curl_slist_free_all");
  decltype(&::curl_global_init) global_init = nullptr;
  bind(global_init, "curl_global_init");
  if (!missing.ok()) return missing;
  // curl_global_init is not thread-safe itself: it runs here, once, under the static's guard.
  const CURLcode rc = global_init(CURL_GLOBAL_DEFAULT);
  if (rc != CURLE_OK) {
    return absl::FailedPreconditionError(
        absl::StrCat("curl_global_init failed: ", api.easy_strerror(rc)));
  }
  return &api;
}

}  // namespace

absl::StatusOr<const CurlApi*> Curl() {
  static const absl::StatusOr<const CurlApi*> api = Load();
  return api;
}

}  // namespace kmon
