#!/usr/bin/env bash
# Offline checks of grafana/ and deploy/: Prometheus rules (promtool check + unit tests),
# the Grafana dashboard (structure, SPEC names, every query parsed by promtool), the
# Kubernetes manifests (kubectl kustomize, then key fields), the systemd unit
# (systemd-analyze verify and security) and the Containerfile's runtime libraries.
#
#   tests/deploy/check.sh [path/to/kmon_exporter]
#
# With the exporter binary, the ConfigMap's config must also pass --check-config and the
# Containerfile must install every library package the binary links. The product
# contract SPEC.md (metric names and labels) is read from $KMON_SPEC, else from
# ../shared/SPEC.md beside the repository; without either, names are not checked.
# Needs promtool (Debian: prometheus), kubectl (kubernetes-client), python3-yaml and
# systemd. Prints one line per check and exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
exporter=${1:+$(readlink -f "$1")}
here=$root/tests/deploy
tmp=$(mktemp -d /tmp/kmon-deploy-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

failed=()
pass=0
run() {  # run NAME COMMAND...: one line per check, the command's output only on failure
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then
    echo "ok   $name"
    pass=$((pass + 1))
  else
    echo "FAIL $name"
    sed 's/^/     | /' "$tmp/out"
    failed+=("$name")
  fi
}
need() {  # need TOOL PACKAGE
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "FAIL $1 not found: install the Debian package $2"
    failed+=("$1 missing")
    return 1
  fi
}

spec=${KMON_SPEC:-}
[[ -z "$spec" && -f "$root/../shared/SPEC.md" ]] && spec=$(readlink -f "$root/../shared/SPEC.md")
if [[ -n "$spec" ]]; then
  echo "metric names and labels from $spec"
else
  echo "skip metric names and labels: no SPEC.md (set KMON_SPEC=path/to/SPEC.md)"
fi

if need python3 python3 && python3 -c 'import yaml' 2>/dev/null; then
  have_py=1
else
  echo "FAIL python3 with yaml not found: install the Debian package python3-yaml"
  failed+=("python3-yaml missing")
  have_py=0
fi

# ---- Prometheus rules
if need promtool prometheus; then
  run "promtool check rules deploy/prometheus/kmon-alerts.yaml" \
    promtool check rules deploy/prometheus/kmon-alerts.yaml
  run "promtool test rules deploy/prometheus/kmon-alerts.test.yaml" \
    promtool test rules deploy/prometheus/kmon-alerts.test.yaml
fi
if ((have_py)); then
  run "alerts use SPEC names and labels" \
    python3 "$here/check_deploy.py" alerts deploy/prometheus/kmon-alerts.yaml "$spec"
fi

# ---- Grafana dashboard
if ((have_py)); then
  run "grafana/kmon-overview.json is valid JSON" python3 -m json.tool grafana/kmon-overview.json
  run "dashboard structure, SPEC names and labels" \
    python3 "$here/check_deploy.py" dashboard grafana/kmon-overview.json "$spec" "$tmp/dashboard-rules.yaml"
  if command -v promtool >/dev/null && [[ -s "$tmp/dashboard-rules.yaml" ]]; then
    run "every dashboard query parses (promtool check rules)" \
      promtool check rules "$tmp/dashboard-rules.yaml"
  fi
fi

# ---- Kubernetes
run "deploy/kubernetes/kmon.yaml is config/kmon.yaml" cmp config/kmon.yaml deploy/kubernetes/kmon.yaml
if ((have_py)); then
  run "deploy/prometheus-operator/prometheusrule.yaml is up to date" \
    python3 "$here/gen_prometheusrule.py"
fi
if need kubectl kubernetes-client; then
  run "kubectl kustomize deploy/kubernetes" \
    sh -c "kubectl kustomize deploy/kubernetes > '$tmp/base.yaml'"
  # 'bases' is deprecated in kustomize >= 4 but the only form kubectl 1.20 knows.
  run "kubectl kustomize deploy/prometheus-operator" \
    sh -c "kubectl kustomize deploy/prometheus-operator > '$tmp/operator.yaml' 2> '$tmp/operator.err' || { cat '$tmp/operator.err'; exit 1; }"
  if ((have_py)) && [[ -s "$tmp/base.yaml" && -s "$tmp/operator.yaml" ]]; then
    run "rendered manifests: RBAC, DaemonSet, probes, mounts, Service, ServiceMonitor" \
      python3 "$here/check_deploy.py" kubernetes "$tmp/base.yaml" "$tmp/operator.yaml" \
      config/kmon.yaml deploy/prometheus/kmon-alerts.yaml
  fi
fi
if [[ -n "$exporter" ]]; then
  run "deploy/kubernetes/kmon.yaml passes kmon_exporter --check-config" \
    env NODE_NAME=node-1 "$exporter" --check-config --config.file=deploy/kubernetes/kmon.yaml
fi

# ---- systemd
if need systemd-analyze systemd; then
  # verify wants ExecStart to exist: check a copy that runs a binary that does.
  bin=${exporter:-/bin/true}
  sed "s#/usr/local/bin/kmon_exporter#$bin#g" deploy/systemd/kmon.service > "$tmp/kmon.service"
  run "systemd-analyze verify deploy/systemd/kmon.service" \
    sh -c "systemd-analyze verify '$tmp/kmon.service' 2>&1 | tee '$tmp/verify.out'; ! grep -q . '$tmp/verify.out'"
  run "systemd-analyze security: exposure <= 4.0" \
    systemd-analyze security --offline=yes --threshold=40 --no-pager "$tmp/kmon.service"
fi

# ---- Containerfile
if [[ -n "$exporter" ]] && ((have_py)); then
  # Library packages of the binary, less what every Debian image has.
  # dpkg knows a merged-/usr library by the path its package ships (often /lib/...).
  owner() { dpkg -S "$1" 2>/dev/null || dpkg -S "${1#/usr}" 2>/dev/null; }
  # libcurl is not linked but opened with dlopen once the Kubernetes provider talks to
  # the API (provider/kubernetes/api_curl.h): it and what it links are needed as well.
  curl=$(ldconfig -p | awk '$1 == "libcurl.so.4" && /x86-64/ {print $NF; exit}')
  pkgs=$(for lib in $( { ldd "$exporter"; [[ -n "$curl" ]] && echo "libcurl => $curl" && ldd "$curl"; } |
      awk '/=>/ {print $3}' | xargs -r readlink -f); do
      owner "$lib"; done | cut -d: -f1 | sort -u |
    grep -vxE 'libc6|libgcc-s1|libstdc\+\+6' | tr '\n' ' ')
  run "Containerfile runtime stage installs: $pkgs" \
    python3 "$here/check_deploy.py" containerfile deploy/container/Containerfile $pkgs
fi

echo "deploy checks: $pass passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
