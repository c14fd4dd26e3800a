// A file for one test, removed when it goes out of scope: also when an ASSERT
// returns from the test early.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace kmon {

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/kmon-test-XXXXXX";
    const int fd = mkstemp(tmpl);
    if (fd < 0) return;
    path_ = tmpl;
    ok_ = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    close(fd);
  }
  ~TempFile() {
    if (!path_.empty()) unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  bool ok() const { return ok_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool ok_ = false;
};

}  // namespace kmon
