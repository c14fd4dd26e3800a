#include "collectors/workload_labeler.h"

namespace kmon {
namespace {

const WorkloadLabels kNodeLevel{};
const WorkloadLabels kOverflow{kOverflowLabel, kOverflowLabel, kOverflowLabel};

}  // namespace

WorkloadLabeler::WorkloadLabeler(WorkloadResolver* workloads, int64_t max_series,
                                 Clock::duration grace)
    : workloads_(workloads), max_series_(max_series), missing_(grace) {
  BeginPass();
}

void WorkloadLabeler::BeginPass(Clock::time_point now) {
  ++pass_;
  budget_.Begin(max_series_);
  missing_.Begin(now);
  gone_.clear();
}

void WorkloadLabeler::EndPass() {
  missing_.End();
  // Cgroups no row named in this pass are forgotten: the cache holds live ones only.
  for (auto it = known_.begin(); it != known_.end();) {
    it = it->second.pass == pass_ ? std::next(it) : known_.erase(it);
  }
}

WorkloadLabeler::Known* WorkloadLabeler::Resolve(uint64_t cgroup_id) {
  Known& k = known_[cgroup_id];
  if (k.pass == pass_) return &k;
  k.pass = pass_;
  std::optional<WorkloadLabels> labels = workloads_->Lookup(cgroup_id);
  if (!labels) {
    k.found = false;
    if (missing_.Gone(cgroup_id)) gone_.insert(cgroup_id);
    return &k;
  }
  if (!k.found || !(k.labels == *labels)) {  // new, or renamed (pod metadata arrived)
    k.labels = std::move(*labels);
    k.budget_key = SeriesBudget::KeyOf(k.labels);
  }
  k.found = true;
  return &k;
}

const WorkloadLabels* WorkloadLabeler::Find(uint64_t cgroup_id) {
  if (cgroup_id == 0) return &kNodeLevel;  // no socket, no submitter: node level
  const Known* k = Resolve(cgroup_id);
  return k->found ? &k->labels : nullptr;
}

const WorkloadLabels* WorkloadLabeler::Labels(uint64_t cgroup_id, int64_t series) {
  if (cgroup_id == 0) {
    static const std::string kNodeKey = SeriesBudget::KeyOf(kNodeLevel);
    return budget_.Fits(kNodeKey, series) ? &kNodeLevel : &kOverflow;
  }
  const Known* k = Resolve(cgroup_id);
  if (!k->found) return nullptr;
  return budget_.Fits(k->budget_key, series) ? &k->labels : &kOverflow;
}

std::optional<WorkloadLabels> WorkloadLabeler::Lookup(uint64_t cgroup_id) {
  const WorkloadLabels* labels = Find(cgroup_id);
  if (labels == nullptr) return std::nullopt;
  return *labels;
}

WorkloadLabels WorkloadLabeler::Admit(const WorkloadLabels& labels, int64_t series) {
  return budget_.Admit(labels, series);
}

std::optional<WorkloadLabels> WorkloadLabeler::LabelsFor(uint64_t cgroup_id, int64_t series) {
  const WorkloadLabels* labels = Labels(cgroup_id, series);
  if (labels == nullptr) return std::nullopt;
  return *labels;
}

}  // namespace kmon
