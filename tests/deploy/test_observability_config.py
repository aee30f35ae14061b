"""Alerts (deploy/kubernetes/monitoring.yaml), the dashboard (deploy/grafana/rdscsi.json) and
docs/metrics.md against each other and against the code.

- docs/metrics.md: every exhaustive label list (`` `label` = `a`, `b` ``) is what the code
  records: the pre-set values of a live registry, the error classes of io/rds/errors.py, the
  literal `.labels(...)` of the module that declares the series;
- every series an alert or a panel names is documented there, and every label value it
  selects is one of the documented values;
- alerts fire once per cluster, have a runbook section in docs/troubleshooting.md, and cover
  the list of conditions the operators asked for; panels count each object once.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .test_manifests import ROOT, SRC, one, rendered

DOC = ROOT / "docs" / "metrics.md"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "rdscsi.json"
PENDING = "*to be emitted by the controller*"
# per-object gauges: one replica's view, never to be summed across replicas
PER_OBJECT = {
    "rds_csi_attachment_state",
    "rds_csi_node_state",
    "rds_csi_orphan_state",
    "rds_csi_kube_informer_synced",
}


class Row:
    def __init__(self, cells: list[str]) -> None:
        self.name = cells[0].strip("` ")
        self.type = cells[1].strip()
        self.labels: dict[str, set[str] | None] = {}
        # `a`, `b` = `x`, `y` (pre-set): a label with "= values" takes the rest of its list
        for m in re.finditer(r"`([a-z_]+)`(\s*=\s*((?:`[^`]+`(?:,\s*)?)+))?", cells[2]):
            values = m.group(3)
            self.labels[m.group(1)] = (
                set(re.findall(r"`([^`]+)`", values)) if values is not None else None
            )
        self.pending = PENDING in cells[-1]


def rows() -> dict[str, Row]:
    out = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `rds_csi_"):
            row = Row([c.strip() for c in line.strip("|").split(" | ")])
            assert row.name not in out, f"{row.name} documented twice"
            out[row.name] = row
    assert out
    return out


def alerts() -> dict[str, dict[str, Any]]:
    rule = one(rendered(), "PrometheusRule", "rdscsi")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def panel_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(series, {label: value}) for each `rds_csi_x{label="value", ...}` (=~ and != skipped)."""
    found = []
    for m in re.finditer(r"(rds_csi_[a-z0-9_]+?)(_bucket|_sum|_count)?\b(\{[^}]*\})?", expr):
        matchers = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(3) or ""))
        found.append((m.group(1), matchers))
    return found


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# --- docs/metrics.md against the code -----------------------------------------------------


def _preset_values() -> dict[tuple[str, str], set[str]]:
    from prometheus_client import CollectorRegistry

    from rdscsi.hooks.metrics import MachineMetrics, MetricsListener
    from rdscsi.io.rds.connection import CommandMetrics
    from rdscsi.machines import MACHINES, ConnectionMachine, compile_machine
    from rdscsi.machines.connection import ConnectionModel

    registry = CollectorRegistry()
    metrics = MachineMetrics([compile_machine(c) for c in MACHINES], registry)
    # One appliance's series are pre-set when its Connection machine is tracked, and the
    # SSH transport's when its connection binds them: the default appliance's here.
    model = ConnectionModel("127.0.0.1:22", "rds", "rds")
    model.state = "starting"
    MetricsListener(metrics, compile_machine(ConnectionMachine)).on_track("connection", model)
    CommandMetrics(registry).of("rds")
    metrics.preset("rds")  # the fence's and sweep's, per appliance as the controller sets them
    out: dict[tuple[str, str], set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            name = sample.name.removesuffix("_bucket")
            for label, value in sample.labels.items():
                if label != "le":
                    out.setdefault((name, label), set()).add(value)
    return out


def _error_classes() -> set[str]:
    """The command failures `Connection.run` counts: the RDSError types of io/rds/errors.py
    (the classifier's and the transport's; other modules' subclasses fail elsewhere)."""
    from rdscsi.io.rds import errors

    return {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, errors.RDSError)
        and value is not errors.RDSError
        and value.__module__ == errors.__name__
    }


def _literal_labels(series: str) -> set[str] | None:
    """The string literals of `.labels("...")` calls in the module declaring `series` (the
    last argument's, after a variable one such as the appliance: `.labels(name, "free")`)."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if f'"{series}"' in text:
            return set(re.findall(r'\.labels\((?:[a-z_.]+,\s*)?"([^"]+)"\)', text))
    return None


def test_documented_label_values_are_what_the_code_records() -> None:
    preset = _preset_values()
    checked = 0
    for row in rows().values():
        for label, values in row.labels.items():
            if values is None:
                continue
            key = (row.name, label)
            if key in preset:
                code = preset[key]
            elif label == "error":
                code = _error_classes()
            elif row.pending:
                continue  # not in the code yet: the alerts/panels are checked against the doc
            else:
                literal = _literal_labels(row.name)
                assert literal, f"{row.name}: no code records it"
                code = literal
            assert values == code, (
                f"{row.name}{{{label}}}: doc {sorted(values)}, code {sorted(code)}"
            )
            checked += 1
    assert checked >= 7


def test_pending_rows_are_the_agreed_names() -> None:
    pending = {n: r for n, r in rows().items() if r.pending}
    assert set(pending) <= {
        "rds_csi_leader",
        "rds_csi_lease_transitions_total",
        "rds_csi_kube_informer_synced",
        "rds_csi_kube_informer_relists_total",
        "rds_csi_kube_informer_failures_total",
        "rds_csi_events_total",
    }
    for name in pending:
        if _literal_labels(name) is not None or f'"{name}"' in "".join(
            p.read_text() for p in SRC.rglob("*.py")
        ):
            pytest.fail(f"{name} is emitted now: drop its '{PENDING}' mark in docs/metrics.md")


# --- alerts --------------------------------------------------------------------------------


def test_the_alerts_cover_what_operators_need() -> None:
    assert set(alerts()) == {
        "RdsCsiApplianceDisconnected",
        "RdsCsiApplianceMisconfigured",
        "RdsCsiReconnectStorm",
        "RdsCsiStaleAttachments",
        "RdsCsiMigrationExpired",
        "RdsCsiNoLeader",
        "RdsCsiKubeWatchFailing",
        "RdsCsiEventsDropped",
        "RdsCsiPoolNearlyFull",
        "RdsCsiOrphansFound",
        "RdsCsiFenceRepaired",
        "RdsCsiMetricsTargetAbsent",
    }


@pytest.mark.parametrize("name", sorted(alerts()))
def test_each_alert_names_documented_series_and_values(name: str) -> None:
    expr = alerts()[name]["expr"]
    documented = rows()
    for series, matchers in selectors(expr):
        assert series in documented, f"{name}: {series} is not in docs/metrics.md"
        for label, value in matchers.items():
            assert label in documented[series].labels, f"{name}: {series} has no {label}"
            values = documented[series].labels[label]
            assert values is None or value in values, f"{name}: {series}{{{label}={value!r}}}"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_each_alert_fires_once_per_cluster(name: str) -> None:
    expr = " ".join(alerts()[name]["expr"].split())
    if expr.startswith("absent("):
        return  # one series per job, no pod label
    groupings = re.findall(r"\b(?:sum|max|min) by \(([^)]*)\)", expr)
    assert groupings, f"{name}: aggregate away pod and instance"
    for grouping in groupings:
        labels = {x.strip() for x in grouping.split(",")}
        assert "namespace" in labels and not labels & {"pod", "instance", "container"}, name
    for series in PER_OBJECT | {"rds_csi_rds_connection_state", "rds_csi_rds_reconnect_total"}:
        if series in expr:
            assert "and on (namespace, pod) rds_csi_leader == 1" in expr, (
                f"{name}: {series} is one replica's view: read it from the leader"
            )


def test_the_storm_alert_counts_only_reconnects_that_came_back() -> None:
    expr = alerts()["RdsCsiReconnectStorm"]["expr"]
    assert 'rds_csi_rds_reconnect_total{status="success"}' in expr
    assert "failure" not in expr


def test_the_target_absent_alert_names_both_jobs() -> None:
    objects = rendered()
    jobs = {
        r["replacement"]
        for o in objects
        if o["kind"] == "PodMonitor"
        for ep in o["spec"]["podMetricsEndpoints"]
        for r in ep["relabelings"]
        if r.get("targetLabel") == "job"
    }
    expr = alerts()["RdsCsiMetricsTargetAbsent"]["expr"]
    assert {f'absent(up{{job="{j}"}} == 1)' for j in jobs} == set(
        re.findall(r"absent\([^)]*\)", expr)
    )


def test_every_alert_has_its_runbook_section() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in TROUBLESHOOTING.read_text().splitlines()
        if line.startswith("#")
    }
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/troubleshooting.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/troubleshooting.md has no section {name}"
        assert (ROOT / url.split("#")[0]).is_file()
    # and the links inside the sections resolve
    for target in re.findall(r"\]\(#([a-z0-9-]+)\)", TROUBLESHOOTING.read_text()):
        assert target in anchors, target


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_variables_are_component_pod_and_appliance() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"DS_PROMETHEUS", "component", "pod", "appliance"}
    assert "component" in variables["component"]["definition"]
    assert '{component=~"$component"}' in variables["pod"]["definition"]
    # the appliances of the fleet, from a series every appliance has from the start
    assert variables["appliance"]["definition"] == (
        'label_values(rds_csi_rds_connection_state{component=~"$component"}, appliance)'
    )
    per_appliance = {n for n, r in rows().items() if "appliance" in r.labels}
    for expr in panel_exprs():
        for series, _ in selectors(expr):
            if series in per_appliance:
                assert 'appliance=~"$appliance"' in expr, expr
    # the label exists: the PodMonitors set it
    for o in rendered():
        if o["kind"] == "PodMonitor":
            for ep in o["spec"]["podMetricsEndpoints"]:
                assert any(r.get("targetLabel") == "component" for r in ep["relabelings"])


@pytest.mark.parametrize("expr", panel_exprs())
def test_each_panel_query(expr: str) -> None:
    documented = rows()
    leader_filter = "and on (namespace, pod) rds_csi_leader == 1"
    for series, matchers in selectors(expr):
        assert series in documented, f"{series} is not in docs/metrics.md"
        for label, value in matchers.items():
            if label in ("component", "pod"):
                continue
            values = documented[series].labels.get(label)
            assert values is None or value in values, f"{series}{{{label}={value!r}}}"
    # every selector but the leader filter's follows the variables
    bare = expr.replace(leader_filter, "")
    for m in re.finditer(r"rds_csi_[a-z0-9_]+(\{[^}]*\})?", bare):
        assert 'component=~"$component", pod=~"$pod"' in (m.group(1) or ""), m.group(0)
    for series in PER_OBJECT:
        if series in bare:
            assert leader_filter in expr, f"{series} counted on every replica"
