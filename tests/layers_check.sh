#!/usr/bin/env bash
# The shape of the product code, checked on every test run:
#  - layers run one way: base <- provider <- collectors (and bpf) <- exporter. An
#    include against the direction fails here (a call against it already fails to
#    link: see the kmon_layer_* targets in CMakeLists.txt);
#  - no product source file is over 650 lines.
set -uo pipefail
root="${1:-$(dirname "$0")/..}"
cd "$root" || exit 2
fail=0
check() {  # folder, then the folders it must not include
  local dir=$1
  shift
  for up in "$@"; do
    if hits=$(grep -rnE "^#include \"$up/" "$dir" 2>/dev/null); then
      echo "layers: $dir/ includes $up/ (against the direction of the layers):"
      echo "$hits"
      fail=1
    fi
  done
}
check base provider collectors exporter bpf
check provider collectors exporter
check collectors exporter
check bpf collectors exporter provider base
while read -r n f; do
  [[ "$f" == total ]] && continue
  if ((n > 650)); then
    echo "size: $f has $n lines (at most 650 in product code)"
    fail=1
  fi
done < <(find base provider collectors exporter bpf -name '*.cc' -o -name '*.h' -o -name '*.c' |
         xargs wc -l)
if ((fail == 0)); then echo "layers and file sizes: ok"; fi
exit $fail
