#!/usr/bin/env bash
# Installs, builds and runs every test: unit, golden (with promtool) and the root
# tests that load BPF into this kernel; prints the benchmark figures first.
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
  build/tests/syscall_overhead 1000000 || echo "benchmark syscall_overhead failed"
  build/tests/tcp_overhead 4 3 2>/dev/null || echo "benchmark tcp_overhead failed"
  build/tests/blockio_overhead 2 4 || echo "benchmark blockio_overhead failed"
fi
# The parsers of untrusted input under libFuzzer (ASan+UBSan), each for a fixed time.
scripts/fuzz.sh "${KMON_FUZZ_SECONDS:-10}"
# Last, so ctest's summary closes the output.
(cd build && ctest --output-on-failure --timeout 300)
