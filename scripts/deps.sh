#!/usr/bin/env bash
# Installs everything kmon needs to build, run and test, from Debian's packages only.
set -euo pipefail

PACKAGES=(
  # build
  cmake g++ make pkg-config clang llvm bpftool git
  # libraries
  libbpf-dev libelf-dev zlib1g-dev prometheus-cpp-dev libcivetweb-dev libyaml-cpp-dev
  libmicrohttpd-dev libgnutls28-dev
  libabsl-dev libseccomp-dev nlohmann-json3-dev libcurl4-openssl-dev libcrypt-dev
  libprotobuf-dev protobuf-compiler libcap-ng-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libclang-rt-14-dev prometheus bpftrace openssl python3-prometheus-client iproute2
  nginx-light wrk fio python3-yaml nftables bind9-dnsutils
)
# kubectl renders the Kubernetes manifests offline; Debian ships it as kubernetes-client.
command -v kubectl >/dev/null 2>&1 || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
