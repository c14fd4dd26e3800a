#!/usr/bin/env python3
"""Writes (or checks) deploy/prometheus-operator/prometheusrule.yaml from
deploy/prometheus/kmon-alerts.yaml: a rule file's `groups` is exactly a PrometheusRule's
`spec.groups`, so the two must never drift apart.

  gen_prometheusrule.py          exit 1 and say so when the file is stale
  gen_prometheusrule.py --write  regenerate it
"""
import os
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SRC = os.path.join(ROOT, "deploy", "prometheus", "kmon-alerts.yaml")
DST = os.path.join(ROOT, "deploy", "prometheus-operator", "prometheusrule.yaml")

HEADER = """\
# GENERATED from deploy/prometheus/kmon-alerts.yaml by tests/deploy/gen_prometheusrule.py
# --write; edit that file, not this one. prometheus-operator loads these rules into every
# Prometheus whose ruleSelector matches the labels below.
"""


def render() -> str:
    with open(SRC, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "kmon", "labels": {"app.kubernetes.io/name": "kmon"}},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def main() -> int:
    text = render()
    if "--write" in sys.argv[1:]:
        with open(DST, "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    try:
        with open(DST, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    if current != text:
        print(f"{os.path.relpath(DST, ROOT)} is stale: run python3 "
              "tests/deploy/gen_prometheusrule.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
