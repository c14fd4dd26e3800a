#include "collectors/collector.h"

#include <absl/strings/str_cat.h>

#include <chrono>
#include <exception>

#include "base/log.h"
#include "collectors/kernel_features.h"

namespace kmon {
namespace {

absl::Status FromException(const std::string& collector, const char* what, const char* err) {
  return absl::InternalError(absl::StrCat("collector=", collector, ": ", what, ": ", err));
}

}  // namespace

Collector::Collector(std::string name, const CollectorDeps& deps)
    : name_(std::move(name)), deps_(deps), labeler_(deps.workloads) {}

absl::Status Collector::Start(const CollectorConfig& config) noexcept {
  absl::Status st;
  try {
    std::lock_guard<std::mutex> lock(mu_);
    labeler_.SetMaxSeries(config.limits.max_series_per_collector);
    st = DoStart(config);
  } catch (const std::exception& e) {
    st = FromException(name_, "start", e.what());
  } catch (...) {
    st = FromException(name_, "start", "unknown exception");
  }
  // A half-started collector holds kernel objects: free them now, so that a later
  // start (a reload retrying it) begins from nothing.
  if (!st.ok()) Stop();
  return st;
}

absl::Status Collector::Reconfigure(const CollectorConfig& config) noexcept {
  try {
    std::lock_guard<std::mutex> lock(mu_);
    if (!Running()) {
      return absl::FailedPreconditionError(absl::StrCat("collector=", name_, ": not running"));
    }
    labeler_.SetMaxSeries(config.limits.max_series_per_collector);
    return Configure(config);
  } catch (const std::exception& e) {
    return FromException(name_, "reconfigure", e.what());
  } catch (...) {
    return FromException(name_, "reconfigure", "unknown exception");
  }
}

void Collector::ProviderChanged() noexcept {
  absl::Status st;
  try {
    std::lock_guard<std::mutex> lock(mu_);
    if (!Running()) return;
    st = OnProviderChange();
  } catch (const std::exception& e) {
    st = FromException(name_, "provider change", e.what());
  } catch (...) {
    st = FromException(name_, "provider change", "unknown exception");
  }
  if (!st.ok()) {
    LogWarn("following the provider's change failed",
            {{"collector", name_}, {"err", st.ToString()}});
  }
}

void Collector::Collect(std::vector<prometheus::MetricFamily>* out) noexcept {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t before = out->size();
  absl::Status st;
  try {
    std::lock_guard<std::mutex> lock(mu_);
    if (Running()) {
      labeler_.BeginPass();
      st = Read(out);
      labeler_.EndPass();
    }
  } catch (const std::exception& e) {
    st = FromException(name_, "collect", e.what());
  } catch (...) {
    st = FromException(name_, "collect", "unknown exception");
  }
  if (!st.ok()) {
    ++read_errors_;
    // What was appended may be a part of the families: a scrape gets all or none.
    out->erase(out->begin() + static_cast<std::ptrdiff_t>(before), out->end());
    LogWarn("collect failed", {{"collector", name_}, {"err", st.ToString()}});
  }
  try {
    std::lock_guard<std::mutex> lock(last_mu_);
    last_collect_ = st;
  } catch (...) {
  }
  scrape_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

absl::Status Collector::LastCollect() const noexcept {
  try {
    std::lock_guard<std::mutex> lock(last_mu_);
    return last_collect_;
  } catch (...) {
    return absl::InternalError("lock failed");
  }
}

std::string Collector::Detail() const noexcept {
  try {
    std::lock_guard<std::mutex> lock(last_mu_);
    return detail_;
  } catch (...) {
    return "";
  }
}

void Collector::SetDetail(std::string detail) noexcept {
  try {
    std::lock_guard<std::mutex> lock(last_mu_);
    detail_ = std::move(detail);
  } catch (...) {
  }
}

void Collector::Stop() noexcept {
  try {
    DoStop();
  } catch (const std::exception& e) {
    LogError("stop failed", {{"collector", name_}, {"err", e.what()}});
  } catch (...) {
    LogError("stop failed", {{"collector", name_}, {"err", "unknown exception"}});
  }
}

std::map<std::string, uint64_t> Collector::EventsLost() const noexcept {
  std::map<std::string, uint64_t> lost;
  try {
    lost["map_read_error"] = read_errors_.load();
    AddEventsLost(&lost);
  } catch (const std::exception& e) {
    LogWarn("reading lost-event counters failed", {{"collector", name_}, {"err", e.what()}});
  } catch (...) {
  }
  return lost;
}

uint64_t Collector::SeriesOverflow() const noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  return labeler_.Overflowed();
}

KernelFeatures& Collector::Features() const {
  if (deps_.features != nullptr) return *deps_.features;
  static RunningKernelFeatures running;
  return running;
}

void ParseEnabledOnlySection(YamlParser& p, const YamlValue& v, CollectorSection* section) {
  p.Map(v, {{"enabled", [&](const YamlValue& f) { p.Bool(f, &section->enabled); }}});
}

}  // namespace kmon
