#!/usr/bin/env bash
# Builds and runs the tests under a sanitizer, each in a build tree of its own:
#   scripts/sanitize.sh address   ASan + UBSan (build-asan): the unit tests, the
#                                 concurrency tests and the root tests, which run the
#                                 sanitized kmon_exporter of that tree
#   scripts/sanitize.sh thread    TSan (build-tsan): the concurrency tests only
# Extra arguments go to ctest (address: e.g. -R Tcp) or to the test binary (thread:
# e.g. --gtest_filter=...). Every report (a child exporter's too) is written under
# BUILD/sanitizer-logs; any report fails the run, also when the test that caused it
# passed. Suppressions (third-party code only, each explained) are in tests/sanitizers/.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-}
shift || true
case "$kind" in
  address) build=build-asan targets=(kmon_exporter kmon_unit_tests kmon_concurrency_tests kmon_root_tests) ;;
  thread) build=build-tsan targets=(kmon_concurrency_tests) ;;
  *) echo "usage: scripts/sanitize.sh address|thread [args]" >&2; exit 2 ;;
esac
werror=OFF
[[ "${CI:-}" == "true" ]] && werror=ON
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -DKMON_SANITIZE="$kind" -DKMON_WERROR="$werror" "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"

logs=$PWD/$build/sanitizer-logs
rm -rf "$logs"
mkdir -p "$logs"
supp=$PWD/tests/sanitizers
# halt_on_error: the first report ends the process, so it cannot be lost in later output.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_string_checks=1:check_initialization_order=1:log_path=$logs/asan"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp:log_path=$logs/tsan"

rc=0
if [[ $kind == address ]]; then
  (cd "$build" && ctest --output-on-failure --timeout 600 -E '^(deploy_check|layers_check)$' "$@") || rc=$?
else
  "$build/tests/kmon_concurrency_tests" "$@" || rc=$?
fi
shopt -s nullglob
reports=("$logs"/*)
if ((${#reports[@]})); then
  for r in "${reports[@]}"; do
    echo "== sanitizer report $(basename "$r") =="
    cat "$r"
  done
  echo "sanitize $kind: ${#reports[@]} report(s)"
  exit 1
fi
((rc == 0)) && echo "sanitize $kind: clean"
exit "$rc"
