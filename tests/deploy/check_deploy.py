#!/usr/bin/env python3
"""Offline checks of kmon's deployment files, called by tests/deploy/check.sh.

  check_deploy.py dashboard DASHBOARD.json SPEC.md RULES_OUT.yaml
      the Grafana dashboard: structure, variables, panels, and that every query uses
      only metric names and labels of the SPEC; writes every query (variables replaced)
      as a recording rule to RULES_OUT.yaml so `promtool check rules` parses them all.
  check_deploy.py alerts RULES.yaml SPEC.md
      the alerting rules use only SPEC metric names and labels.
  check_deploy.py kubernetes BASE_RENDERED.yaml OPERATOR_RENDERED.yaml CONFIG.yaml RULES.yaml
      key fields of the rendered manifests.
  check_deploy.py containerfile Containerfile PACKAGE...
      the runtime stage installs every package the binary's libraries come from.

Each prints one line per problem and exits 1 when there is any.
"""
import json
import re
import sys

import yaml

problems = []


def fail(msg):
    problems.append(msg)


# ---------------------------------------------------------------- SPEC

def spec_metrics(path):
    """name -> (set of labels, is_histogram) from the backticked names of SPEC.md;
    None when no SPEC was given."""
    if not path:
        print("no SPEC.md given: metric names and labels not checked")
        return None
    text = open(path, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r"`((?:kmon|traces)_[a-z0-9_]+)(\{([^}`]*)\})?`([^`\n]{0,14})", text):
        name, labels_text, after = m.group(1), m.group(3) or "", m.group(4)
        labels = set()
        for part in labels_text.split(","):
            part = part.strip()
            if not part or part == "...":
                continue
            labels.add(part.split("=")[0].strip())
        if labels_text.strip() == "...":
            labels = None  # "same as above": resolved below
        hist = "histogram" in after
        old = out.get(name)
        if old:
            labels = (old[0] or set()) | (labels or set())
            hist = hist or old[1]
        out[name] = (labels, hist)
    for name, (labels, hist) in out.items():
        if labels is None:
            out[name] = (set(), hist)
    return out


SERIES_SUFFIXES = ("_bucket", "_sum", "_count")
TARGET_LABELS = {"instance", "job"}
# Labels the dashboard's own PromQL makes (label_replace/label_join for the node graph).
MADE_LABELS = {"id", "source", "target", "title"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "label_replace", "label_join", "max_over_time", "min_over_time", "avg_over_time",
    "sum_over_time", "count_over_time", "absent", "absent_over_time", "clamp_min", "clamp_max",
    "abs", "ceil", "floor", "round", "time", "vector", "scalar", "offset", "bool", "le",
    "humanize", "inf", "nan", "changes", "resets", "sort", "sort_desc", "predict_linear",
}


def resolve(name, spec):
    """(spec name, labels incl. le) for a series name, or None."""
    if name in spec:
        labels, _ = spec[name]
        return name, set(labels)
    for suf in SERIES_SUFFIXES:
        if name.endswith(suf) and name[: -len(suf)] in spec and spec[name[: -len(suf)]][1]:
            labels = set(spec[name[: -len(suf)]][0])
            if suf == "_bucket":
                labels.add("le")
            return name[: -len(suf)], labels
    return None


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check_expr(where, expr, spec, extra_names=None):
    """Every metric name in `expr` is in the SPEC (or a recorded name in `extra_names`,
    name -> labels); every label it names belongs to them. Returns the labels seen.
    Without a SPEC (spec is None) checks nothing."""
    extra_names = extra_names or {}
    if spec is None:
        return set()
    bare = strip_strings(expr)
    used_labels = set()
    metric_labels = set(TARGET_LABELS) | MADE_LABELS
    names = set()
    # selectors: name{labels}
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        name, body = m.group(1), m.group(2)
        if name in PROMQL_WORDS:
            continue
        names.add(name)
        for lm in re.finditer(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)", body):
            r = resolve(name, spec)
            if r and lm.group(1) not in r[1] | TARGET_LABELS:
                fail(f"{where}: label {lm.group(1)} is not a label of {name} in SPEC")
    # every identifier followed by [ or ) or space that looks like a metric
    for m in re.finditer(r"(?<![\w:])((?:kmon|traces)_[a-z0-9_]+)(?![\w:])", bare):
        names.add(m.group(1))
    for name in extra_names:
        if re.search(r"(?<![\w:])" + re.escape(name) + r"(?![\w:])", bare):
            names.add(name)
    for name in names:
        if name in extra_names:
            metric_labels |= extra_names[name]
            continue
        r = resolve(name, spec)
        if r is None:
            fail(f"{where}: metric {name} is not in SPEC")
        else:
            metric_labels |= r[1]
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        for label in m.group(1).split(","):
            label = label.strip()
            if label:
                used_labels.add(label)
    for label in used_labels - metric_labels:
        fail(f"{where}: grouping label {label} belongs to none of the metrics used")
    if not names:
        fail(f"{where}: no metric in {expr!r}")
    return metric_labels


# ---------------------------------------------------------------- dashboard

VAR_SUBST = {
    "__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600",
    "__interval_ms": "15000", "instance": ".*", "namespace": ".*", "pod": ".*",
    "container": ".*", "device": ".*",
}


def substitute(expr, where):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():
            return m.group(0)  # "$1" of label_replace
        if name not in VAR_SUBST:
            fail(f"{where}: unknown variable ${name}")
            return m.group(0)
        return VAR_SUBST[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


def check_dashboard(path, spec_path, rules_out):
    spec = spec_metrics(spec_path)
    if spec is not None and len(spec) < 30:
        fail(f"{spec_path}: found only {len(spec)} metric names; is it kmon's SPEC?")
    try:
        d = json.load(open(path, encoding="utf-8"))
    except ValueError as e:
        fail(f"{path}: not JSON: {e}")
        return
    if not 36 <= d.get("schemaVersion", 0) <= 41:
        fail(f"{path}: schemaVersion {d.get('schemaVersion')} (want ~39)")
    for key in ("title", "uid", "panels", "templating", "time"):
        if key not in d:
            fail(f"{path}: no {key}")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard: no `datasource` variable of type datasource for prometheus")
    for name in ("instance", "namespace", "pod", "container"):
        v = variables.get(name)
        if not v:
            fail(f"dashboard: no template variable {name}")
            continue
        q = v.get("query", {})
        q = q.get("query", "") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
        if not m or m.group(2) != name:
            fail(f"dashboard: variable {name} is not label_values(..., {name}): {q!r}")
            continue
        check_expr(f"variable {name}", substitute(m.group(1), f"variable {name}"), spec)
        if v.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"dashboard: variable {name} does not use ${{datasource}}")
        if v.get("includeAll") and v.get("allValue") != ".*":
            fail(f"dashboard: variable {name}: All must be .* so that empty labels match")
    rows, seen_ids, rules, kinds = [], set(), [], {}
    cells = {}
    for p in d.get("panels", []):
        pid = p.get("id")
        if pid in seen_ids:
            fail(f"dashboard: panel id {pid} twice")
        seen_ids.add(pid)
        g = p.get("gridPos", {})
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells:
                    fail(f"dashboard: panels {cells[(x, y)]} and {pid} overlap at {x},{y}")
                cells[(x, y)] = pid
        if g.get("x", 0) + g.get("w", 0) > 24:
            fail(f"dashboard: panel {pid} is wider than the grid")
        if p.get("type") == "row":
            rows.append(p.get("title"))
            continue
        kinds.setdefault(p.get("type"), []).append(p)
        where = f"panel {pid} {p.get('title')!r}"
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets", [])
        if not targets:
            fail(f"{where}: no targets")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            if t.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{tw}: datasource is not ${{datasource}}")
            expr = t.get("expr", "")
            if "rate(" in expr and "[$__rate_interval]" not in expr and "[$__range]" not in expr:
                fail(f"{tw}: rate/increase without [$__rate_interval]")
            if re.search(r"\brate\((kmon|traces)_\w+(?<!_total)(?<!_bucket)(?<!_sum)(?<!_count)[{\[]", expr):
                fail(f"{tw}: rate() of something that is not a counter")
            sub = substitute(expr, tw)
            check_expr(tw, sub, spec)
            rules.append({"record": f"kmon_dashboard:panel{pid}:{t.get('refId')}".replace("-", "_"),
                          "expr": sub})
    for want in ("TCP", "Topology", "Drops", "Block I/O", "CPU", "Syscalls", "kmon"):
        if want not in rows:
            fail(f"dashboard: no row {want!r} (rows: {rows})")
    for p in kinds.get("heatmap", []):
        if not any(t.get("format") == "heatmap" for t in p["targets"]):
            fail(f"dashboard: heatmap panel {p['title']!r} has no format=heatmap target")
        if not any("kmon_cpu_offcpu_duration_seconds_bucket" in t["expr"] for t in p["targets"]):
            fail("dashboard: the heatmap is not the off-CPU histogram")
    if not kinds.get("heatmap"):
        fail("dashboard: no heatmap panel")
    ng = kinds.get("nodeGraph", [])
    if not ng:
        fail("dashboard: no nodeGraph panel")
    for p in ng:
        exprs = " ".join(t["expr"] for t in p["targets"])
        for label in ('"source"', '"target"', '"id"', '"title"'):
            if label not in exprs:
                fail(f"dashboard: node graph makes no {label} field")
        if not all(t.get("format") == "table" and t.get("instant") for t in p["targets"]):
            fail("dashboard: node graph targets must be instant tables")
    titles = {p.get("title") for ps in kinds.values() for p in ps}
    for want in ("Request rate", "Request latency p50 / p95 / p99", "Syscall rate by syscall",
                 "Syscall errors by syscall", "Off-CPU episodes (heatmap)", "Service map"):
        if want not in titles:
            fail(f"dashboard: no panel {want!r} (the root test looks for it)")
    with open(rules_out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "kmon-dashboard", "rules": rules}]}, f, width=1000)
    print(f"dashboard: {len(seen_ids)} panels, {len(rules)} queries, rows {rows}")


# ---------------------------------------------------------------- alerts

def check_alerts(path, spec_path):
    spec = spec_metrics(spec_path)
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    recorded = {}
    names = []
    for g in doc["groups"]:
        for r in g["rules"]:
            where = f"rule {r.get('alert') or r.get('record')}"
            labels = check_expr(where, r["expr"], spec, extra_names=recorded)
            if "record" in r:
                recorded[r["record"]] = labels
            if "alert" in r:
                names.append(r["alert"])
                if "for" not in r:
                    fail(f"{where}: no for:")
                ann = r.get("annotations", {})
                for key in ("summary", "description", "runbook"):
                    if not ann.get(key):
                        fail(f"{where}: no {key} annotation")
                if r.get("labels", {}).get("severity") not in ("info", "warning", "critical"):
                    fail(f"{where}: severity label missing or unusual")
    for want in ("KmonTCPRequestLatencyHigh", "KmonTCPResetsSpike", "KmonTCPRetransmitsSpike",
                 "KmonPacketDropsRising", "KmonCollectorDown", "KmonEventsLost",
                 "KmonConfigReloadFailed", "KmonSeriesOverflow"):
        if want not in names:
            fail(f"alerts: no {want}")
    print(f"alerts: {len(names)} alerts, {len(recorded)} recording rules")


# ---------------------------------------------------------------- kubernetes

def docs_of(path):
    return [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]


def check_kubernetes(base_path, operator_path, config_path, rules_path):
    base = docs_of(base_path)
    by_kind = {}
    for d in base:
        by_kind.setdefault(d["kind"], []).append(d)
    want = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
            "DaemonSet", "Service"}
    if set(by_kind) != want:
        fail(f"kubernetes: kinds {sorted(by_kind)}, want {sorted(want)}")
    for d in base:
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            if d["metadata"].get("namespace") != "kmon":
                fail(f"kubernetes: {d['kind']}/{d['metadata']['name']} not in namespace kmon")
    if "DaemonSet" not in by_kind:
        return
    ns = by_kind.get("Namespace", [{}])[0]
    if ns.get("metadata", {}).get("name") != "kmon":
        fail("kubernetes: the Namespace is not kmon")
    # RBAC: get/list/watch on pods and nothing else (kmon watches only pods), bound to
    # the DaemonSet's service account.
    role = by_kind.get("ClusterRole", [{}])[0]
    granted = {}
    for rule in role.get("rules", []):
        for res in rule.get("resources", []):
            granted.setdefault(res, set()).update(rule.get("verbs", []))
    for res in ("pods",):
        if granted.get(res) != {"get", "list", "watch"}:
            fail(f"kubernetes: ClusterRole verbs on {res} are {granted.get(res)}, want get/list/watch")
    extra = set(granted) - {"pods"}
    if extra:
        fail(f"kubernetes: ClusterRole grants more than needed: {sorted(extra)}")
    ds = by_kind["DaemonSet"][0]
    spec = ds["spec"]["template"]["spec"]
    sa = spec.get("serviceAccountName")
    crb = by_kind.get("ClusterRoleBinding", [{}])[0]
    if crb.get("roleRef", {}).get("name") != role.get("metadata", {}).get("name"):
        fail("kubernetes: ClusterRoleBinding does not bind the ClusterRole")
    if {"kind": "ServiceAccount", "name": sa, "namespace": "kmon"} not in crb.get("subjects", []):
        fail(f"kubernetes: ClusterRoleBinding does not bind ServiceAccount kmon/{sa}")
    if sa not in [d["metadata"]["name"] for d in by_kind.get("ServiceAccount", [])]:
        fail(f"kubernetes: serviceAccountName {sa} is not defined")
    # Selector and pod labels.
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    for k, v in ds["spec"]["selector"]["matchLabels"].items():
        if pod_labels.get(k) != v:
            fail(f"kubernetes: DaemonSet selector {k}={v} does not match its pods")
    if spec.get("hostPID") is not True:
        fail("kubernetes: DaemonSet without hostPID")
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("metrics") != 9877:
        fail(f"kubernetes: container ports {ports}, want metrics: 9877")
    for probe, path in (("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        h = c.get(probe, {}).get("httpGet", {})
        port = ports.get(h.get("port"), h.get("port"))
        if h.get("path") != path or port != 9877:
            fail(f"kubernetes: {probe} is {h}, want {path} on 9877")
    env = {e["name"]: e for e in c.get("env", [])}
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail("kubernetes: NODE_NAME does not come from spec.nodeName")
    sc = c.get("securityContext", {})
    caps = set(sc.get("capabilities", {}).get("add", []))
    # Least privilege: the long-running exporter is not privileged and has no SYS_ADMIN
    # (only the short-lived init container that turns bpf_stats on is privileged).
    if sc.get("privileged") or "SYS_ADMIN" in caps or not {"BPF", "PERFMON"} <= caps:
        fail(f"kubernetes: want CAP_BPF/PERFMON without privileged or SYS_ADMIN: {sorted(caps)}")
    inits = spec.get("initContainers", [])
    if [i.get("command") for i in inits] != [["sh", "-c", "echo 1 > /proc/sys/kernel/bpf_stats_enabled"]]:
        fail(f"kubernetes: want one init container turning bpf_stats on, got {inits}")
    res = c.get("resources", {})
    def mib(q):
        m = re.fullmatch(r"(\d+)(Mi|Gi)", str(q or ""))
        return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1) if m else None
    req, lim = mib(res.get("requests", {}).get("memory")), mib(res.get("limits", {}).get("memory"))
    if req is None or lim is None or not 20 <= req <= lim:
        fail(f"kubernetes: memory request/limit {req}/{lim} MiB: want 20 MiB <= request <= limit")
    if not res.get("requests", {}).get("cpu"):
        fail("kubernetes: no CPU request")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    for host in ("/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing", "/proc"):
        vols = [n for n, v in volumes.items() if v.get("hostPath", {}).get("path") == host]
        if not vols or not any(m["name"] in vols for m in mounts.values()):
            fail(f"kubernetes: hostPath {host} is not mounted")
    for path in ("/sys/fs/cgroup", "/sys/kernel/btf"):
        if not mounts.get(path, {}).get("readOnly"):
            fail(f"kubernetes: {path} must be mounted at {path}, read-only")
    # Config: ConfigMap with kmon.yaml == config/kmon.yaml, mounted where --config.file says.
    cms = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    cfg_arg = [a for a in c.get("args", []) if a.startswith("--config.file=")]
    if not cfg_arg:
        fail("kubernetes: no --config.file argument")
    else:
        cfg_path = cfg_arg[0].split("=", 1)[1]
        d, f = cfg_path.rsplit("/", 1)
        m = mounts.get(d)
        vol = volumes.get(m["name"], {}) if m else {}
        cm = cms.get(vol.get("configMap", {}).get("name"))
        if not cm:
            fail(f"kubernetes: {cfg_path} is not a mounted ConfigMap")
        elif cm["data"].get(f) != open(config_path, encoding="utf-8").read():
            fail(f"kubernetes: ConfigMap {cm['metadata']['name']} key {f} differs from {config_path}")
    # Headless Service on the metrics port selecting the DaemonSet's pods.
    svc = by_kind.get("Service", [{}])[0]
    if svc.get("spec", {}).get("clusterIP") != "None":
        fail("kubernetes: Service is not headless")
    for k, v in svc.get("spec", {}).get("selector", {}).items():
        if pod_labels.get(k) != v:
            fail(f"kubernetes: Service selector {k}={v} does not match the pods")
    sports = {p["name"]: p for p in svc.get("spec", {}).get("ports", [])}
    if sports.get("metrics", {}).get("port") != 9877 or \
            ports.get(sports.get("metrics", {}).get("targetPort")) != 9877:
        fail(f"kubernetes: Service ports {sports} do not reach the metrics port")
    # The operator overlay: the base plus a ServiceMonitor on that Service and the rules.
    op = docs_of(operator_path)
    kinds = sorted(d["kind"] for d in op)
    if kinds != sorted([d["kind"] for d in base] + ["PrometheusRule", "ServiceMonitor"]):
        fail(f"prometheus-operator: kinds {kinds}")
    for d in op:
        if d["kind"] == "ServiceMonitor":
            sel = d["spec"]["selector"]["matchLabels"]
            if any(svc["metadata"].get("labels", {}).get(k) != v for k, v in sel.items()):
                fail(f"prometheus-operator: ServiceMonitor selector {sel} misses the Service")
            if [e.get("port") for e in d["spec"]["endpoints"]] != ["metrics"]:
                fail("prometheus-operator: ServiceMonitor does not scrape port metrics")
            if d["metadata"].get("namespace") != "kmon":
                fail("prometheus-operator: ServiceMonitor not in kmon")
        if d["kind"] == "PrometheusRule":
            rules = yaml.safe_load(open(rules_path, encoding="utf-8"))
            if d["spec"]["groups"] != rules["groups"]:
                fail(f"prometheus-operator: PrometheusRule groups differ from {rules_path}")
    print(f"kubernetes: {len(base)} objects; operator overlay {len(op)} objects")


# ---------------------------------------------------------------- Containerfile

def check_containerfile(path, packages):
    text = open(path, encoding="utf-8").read()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(stages) < 2 or not all(s.startswith("debian:12") for s in stages):
        fail(f"Containerfile: stages {stages}, want a multi-stage Debian 12 build")
    runtime = text[text.rfind("\nFROM "):]
    for step in ("scripts/deps.sh", "scripts/build.sh"):
        if step not in text[: text.rfind("\nFROM ")]:
            fail(f"Containerfile: build stage does not run {step}")
    installed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", runtime))
    for p in packages:
        if p not in installed:
            fail(f"Containerfile: runtime stage lacks {p} (a library kmon_exporter links)")
    print(f"Containerfile: runtime covers {len(packages)} library packages")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "containerfile":
        check_containerfile(args[0], args[1:])
    else:
        {"dashboard": check_dashboard, "alerts": check_alerts,
         "kubernetes": check_kubernetes}[cmd](*args)
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
