#!/usr/bin/env bash
# Configures and builds kmon into ./build: every target, or only those named
# (scripts/run.sh builds just the exporter). -Werror when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
werror=OFF
[[ "${CI:-}" == "true" ]] && werror=ON
launcher=()
# A compiler cache, when the machine has one, for repeated builds in several trees.
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B build -DKMON_WERROR="$werror" "${launcher[@]}" >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build build -j"$(nproc)" "${targets[@]}"
