#!/usr/bin/env bash
# Installs, builds and runs every test: unit, golden (with promtool) and the root
# tests that load BPF into this kernel, also under ASan+UBSan and (the concurrency
# tests) TSan; prints the benchmark figures first.
# As root. With CI=true, root tests that would skip fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
# Classic tracepoints (used by bpftrace in the benchmark) need tracefs.
if [[ ! -e /sys/kernel/tracing/events ]] && [[ $(id -u) == 0 ]]; then
  mount -t tracefs tracefs /sys/kernel/tracing || true
fi
if [[ $(id -u) == 0 ]]; then
  echo "== benchmarks (figures, not pass/fail) =="
  tests/bench/run --quick --no-write || echo "a benchmark failed (see above)"
fi
# The parsers of untrusted input under libFuzzer (ASan+UBSan), each for a fixed time.
scripts/fuzz.sh "${KMON_FUZZ_SECONDS:-10}"
# The tests again under sanitizers, each in a build tree of its own (scripts/sanitize.sh):
# TSan runs the concurrency tests, ASan+UBSan the unit, concurrency and root tests (the
# root tests start that tree's sanitized exporter). A report fails the run.
sanitized=0
scripts/sanitize.sh thread || sanitized=1
scripts/sanitize.sh address || sanitized=1
# Last, so ctest's summary closes the output.
(cd build && ctest --output-on-failure --timeout 300)
exit "$sanitized"
