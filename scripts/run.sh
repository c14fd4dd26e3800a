#!/usr/bin/env bash
# Quick start: install, build, and run kmon_exporter on its built-in defaults
# (metrics on :9877/metrics). Extra arguments go to the exporter. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Only what runs: the exporter and the TLS compat library beside it, not the tests.
scripts/build.sh kmon_exporter kmon_openssl_compat
exec build/kmon_exporter "$@"
