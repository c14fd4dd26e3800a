// libcurl for the Kubernetes API client, loaded when the client first needs it.
//
// libcurl (Debian's, built against OpenSSL) brings ~20 libraries with it (OpenSSL,
// Kerberos, LDAP, SASL, ssh2, rtmp, nghttp2, ...): ~3 MiB of RSS in mapped pages that a
// kmon without the Kubernetes provider never uses. So the exporter does not link it:
// the first API client opens libcurl.so.4 with dlopen and runs curl_global_init once.
#pragma once

#include <absl/status/statusor.h>
#include <curl/curl.h>

namespace kmon {

/// The libcurl functions the API client calls, resolved from libcurl.so.4.
struct CurlApi {
  decltype(&::curl_easy_init) easy_init;
  decltype(&::curl_easy_setopt) easy_setopt;
  decltype(&::curl_easy_getinfo) easy_getinfo;
  decltype(&::curl_easy_cleanup) easy_cleanup;
  decltype(&::curl_easy_strerror) easy_strerror;
  decltype(&::curl_multi_init) multi_init;
  decltype(&::curl_multi_add_handle) multi_add_handle;
  decltype(&::curl_multi_remove_handle) multi_remove_handle;
  decltype(&::curl_multi_perform) multi_perform;
  decltype(&::curl_multi_poll) multi_poll;
  decltype(&::curl_multi_info_read) multi_info_read;
  decltype(&::curl_multi_cleanup) multi_cleanup;
  decltype(&::curl_multi_strerror) multi_strerror;
  decltype(&::curl_slist_append) slist_append;
  decltype(&::curl_slist_free_all) slist_free_all;
};

/// libcurl, opened (and globally initialised) by the first call from any thread; later
/// calls return the same. An error (FailedPrecondition) names the library and dlerror()
/// when it cannot be opened or lacks a function; it is returned again on every call.
absl::StatusOr<const CurlApi*> Curl();

}  // namespace kmon
