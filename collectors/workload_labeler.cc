#include "collectors/workload_labeler.h"

namespace kmon {

WorkloadLabeler::WorkloadLabeler(WorkloadResolver* workloads, int64_t max_series,
                                 Clock::duration grace)
    : workloads_(workloads), max_series_(max_series), missing_(grace) {
  BeginPass();
}

void WorkloadLabeler::BeginPass(Clock::time_point now) {
  budget_.Begin(max_series_);
  missing_.Begin(now);
  gone_.clear();
}

void WorkloadLabeler::EndPass() { missing_.End(); }

std::optional<WorkloadLabels> WorkloadLabeler::Lookup(uint64_t cgroup_id) {
  if (cgroup_id == 0) return WorkloadLabels{};  // no socket, no submitter: node level
  std::optional<WorkloadLabels> labels = workloads_->Lookup(cgroup_id);
  if (!labels && missing_.Gone(cgroup_id)) gone_.insert(cgroup_id);
  return labels;
}

WorkloadLabels WorkloadLabeler::Admit(const WorkloadLabels& labels, int64_t series) {
  return budget_.Admit(labels, series);
}

std::optional<WorkloadLabels> WorkloadLabeler::LabelsFor(uint64_t cgroup_id, int64_t series) {
  std::optional<WorkloadLabels> labels = Lookup(cgroup_id);
  if (!labels) return std::nullopt;
  return Admit(*labels, series);
}

}  // namespace kmon
