#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, with ASan and UBSan) and runs each
# for a fixed time on its seed corpus (tests/fuzz/corpus/<name>). A crash, a leak, UB or
# a hang (-timeout) fails the run and prints the input that did it.
#   scripts/fuzz.sh [seconds per target, default 10] [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
build=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build" -DKMON_FUZZ=ON -DKMON_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(ls tests/fuzz/fuzz_*.cc | xargs -n1 basename | sed 's/\.cc$//')
fi
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  mkdir -p "$work/$name"
  seeds=()
  [[ -d tests/fuzz/corpus/$name ]] && seeds+=("tests/fuzz/corpus/$name")
  # Real binaries of this machine seed the ELF reader: no binary is kept in the tree.
  [[ $name == elf_symbols ]] && cp /bin/true /usr/lib/x86_64-linux-gnu/libz.so.1 "$work/$name/" 2>/dev/null
  if out=$("$build/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$work/" "$work/$name" "${seeds[@]}" 2>&1); then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' <<<"$out")
    cov=$(grep -oE 'cov: [0-9]+' <<<"$out" | tail -n 1)
    echo "fuzz $t: ok, $runs runs in ${seconds}s, $cov"
  else
    failed+=("$t")
    echo "fuzz $t: FAILED"
    tail -n 60 <<<"$out"
    for a in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
      [[ -e $a ]] && { echo "input ($a):"; od -c "$a" | head -n 20; }
    done
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
