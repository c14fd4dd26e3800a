// What an HTTP route is, independent of the server that serves it: collectors
// declare routes (/debug/offcpu, /api/v1/topology) with these types and never see
// the server, its TLS or its auth.
#pragma once

#include <functional>
#include <map>
#include <string>

namespace kmon {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;
  std::map<std::string, std::string> query;    // decoded ?k=v
  std::map<std::string, std::string> headers;  // names lower-cased
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::map<std::string, std::string> headers;
  /// Sent gzipped to a client that accepts it (metrics, JSON); left as it is
  /// otherwise (a body that is compressed already, an HTML page).
  bool compressible = false;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

}  // namespace kmon
