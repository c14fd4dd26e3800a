#!/usr/bin/env bash
# Quick start: install, build, and run kmon_exporter on its built-in defaults
# (metrics on :9877/metrics). Extra arguments go to the exporter. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Only what runs: the exporter, not the tests.
scripts/build.sh kmon_exporter
exec build/kmon_exporter "$@"
