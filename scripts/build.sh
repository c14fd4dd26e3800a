#!/usr/bin/env bash
# Configures and builds kmon into ./build. -Werror when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
werror=OFF
[[ "${CI:-}" == "true" ]] && werror=ON
cmake -S . -B build -DKMON_WERROR="$werror" >/dev/null
cmake --build build -j"$(nproc)"
