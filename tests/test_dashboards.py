"""The hand-written Grafana dashboards and provisioning files, checked against a schema of our own (no Grafana server
can run here), and every panel query parsed by promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.metric_contract import METRIC_FAMILIES, family_of, promql_selectors
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "stat", "timeseries", "heatmap", "bargauge"}
BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval"}
# Values Grafana would substitute, so that promtool can parse the queries.
SUBSTITUTIONS = {"__rate_interval": "1m", "__range": "6h", "__interval": "15s"}
REQUIRED_UIDS = {"rutter-connections-overview", "rutter-monitor-internals"}


def _dashboards() -> dict[str, dict[str, Any]]:
    loaded = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))]
    return {dashboard["uid"]: dashboard for dashboard in loaded}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    nested = [child for panel in dashboard["panels"] for child in panel.get("panels", [])]
    return [*dashboard["panels"], *nested]


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _panels(dashboard) for target in panel.get("targets", [])]


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


DASHBOARDS = _dashboards()


def test_required_dashboards_exist_with_stable_uids() -> None:
    """The connections overview and the monitor internals dashboards exist under their fixed uids, one per file."""
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert len(DASHBOARDS) == len(files)
    assert set(DASHBOARDS) >= REQUIRED_UIDS
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_has_the_required_top_level_keys(uid: str) -> None:
    """A dashboard carries what Grafana needs to provision it: uid, title, tags, time, schema version, panels and
    templating, and no import-time `__inputs`."""
    dashboard = DASHBOARDS[uid]
    for key, kind in {"uid": str, "title": str, "tags": list, "time": dict, "schemaVersion": int}.items():
        assert isinstance(dashboard.get(key), kind), key
    assert isinstance(dashboard["panels"], list)
    assert isinstance(dashboard["templating"]["list"], list)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None
    assert "__inputs" not in dashboard
    assert re.fullmatch(r"[a-z0-9-]{1,40}", uid)
    assert "rutter-monitor" in dashboard["tags"]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panels_have_unique_ids_and_a_valid_non_overlapping_grid(uid: str) -> None:
    """Panel ids are unique integers and every panel sits inside the 24-column grid without overlapping another."""
    panels = _panels(DASHBOARDS[uid])
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert all(isinstance(v, int) and v >= 0 for v in grid.values())
        assert grid["h"] >= 1
        assert grid["w"] >= 1
        assert grid["x"] + grid["w"] <= 24
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_panel_and_target_uses_the_datasource_variable(uid: str) -> None:
    """Every panel has a known type, a title and a description, and every query has a refId, an expr and the
    `${datasource}` Prometheus datasource."""
    for panel in _panels(DASHBOARDS[uid]):
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"].strip()
        if panel["type"] == "row":
            continue
        assert panel.get("description", "").strip(), f"{panel['title']} has no description"
        assert panel["datasource"] == DATASOURCE
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip()


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_template_variables_are_a_datasource_and_multi_value_queries(uid: str) -> None:
    """The `datasource` variable picks a Prometheus datasource; every query variable reads through it, offers All
    as `.*`, and allows several values."""
    variables = _variables(DASHBOARDS[uid])
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    queries = [v for v in variables.values() if v["type"] == "query"]
    assert queries
    for variable in queries:
        assert variable["datasource"] == DATASOURCE
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*"
        assert variable["multi"] is True
        assert variable["query"]["query"] == variable["definition"]
        assert re.fullmatch(r"label_values\(\w+, \w+\)", variable["definition"])


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_variables_are_defined_and_matched_as_regexes(uid: str) -> None:
    """Every `$var` in a query is a dashboard variable or a Grafana built-in, and dashboard variables are only
    matched with `=~`, so that All and multiple values work."""
    dashboard = DASHBOARDS[uid]
    defined = set(_variables(dashboard))
    for title, target in _targets(dashboard):
        used = set(re.findall(r"\$\{?(\w+)\}?", target["expr"]))
        assert used <= defined | BUILTIN_VARIABLES, f"{title}: {used - defined - BUILTIN_VARIABLES}"
        for _, matchers in promql_selectors(target["expr"]):
            for matcher in matchers:
                if matcher.value.startswith("$"):
                    assert matcher.op == "=~", f'{title}: {matcher.label}{matcher.op}"{matcher.value}"'


@pytest.mark.parametrize(("uid", "variable"), [("rutter-connections-overview", "platform")])
def test_every_query_filters_by_the_dashboard_variable(uid: str, variable: str) -> None:
    """Every selector of a series with a `platform` label (a metric or a per-platform recording rule) is filtered
    by the platform variable, so the whole dashboard follows the selection."""
    for title, target in _targets(DASHBOARDS[uid]):
        for name, matchers in promql_selectors(target["expr"]):
            family = family_of(name)
            # A recording rule keeps the label its level names first (platform:..., platform_health:...).
            has_label = variable in METRIC_FAMILIES[family].labels if family else name.startswith(variable)
            if has_label:
                assert any(m.label == variable and m.value == f"${variable}" for m in matchers), f"{title}: {name}"


def test_internals_queries_follow_the_instance_variable() -> None:
    """Every selector in the monitor internals dashboard is filtered by the instance variable."""
    for title, target in _targets(DASHBOARDS["rutter-monitor-internals"]):
        for name, matchers in promql_selectors(target["expr"]):
            assert any(m.label == "instance" and m.value == "$instance" for m in matchers), f"{title}: {name}"


def test_heatmaps_read_histogram_buckets() -> None:
    """Heatmap panels ask Prometheus for buckets summed by `le`, in Grafana's heatmap format."""
    heatmaps = [p for d in DASHBOARDS.values() for p in _panels(d) if p["type"] == "heatmap"]
    assert heatmaps
    for panel in heatmaps:
        assert panel["options"]["calculate"] is False
        for target in panel["targets"]:
            assert target["format"] == "heatmap"
            assert "_bucket{" in target["expr"]
            assert "by (le)" in target["expr"]
            assert target["legendFormat"] == "{{le}}"


@pytest.mark.parametrize(
    ("uid", "needle"),
    [
        ("rutter-connections-overview", 'lifecycle_stage="initial_sync"'),
        ("rutter-connections-overview", "platform_health:rutter_connections:sum"),
        ("rutter-connections-overview", "rutter_connection_time_to_ready_seconds_bucket"),
        ("rutter-connections-overview", "platform:rutter_connection_time_to_ready_seconds:p50_6h"),
        ("rutter-connections-overview", "platform:rutter_connection_time_to_ready_seconds:p95_6h"),
        ("rutter-connections-overview", "rutter_connection_time_to_historical_complete_seconds_bucket"),
        ("rutter-connections-overview", "rutter_connection_stage_transitions_total"),
        ("rutter-connections-overview", "rutter_connection_health_transitions_total"),
        ("rutter-connections-overview", "sum by (reason)"),
        ("rutter-connections-overview", "rutter_connection_oldest_in_stage_seconds"),
        ("rutter-connections-overview", "rutter_monitor_alerts_firing"),
        ("rutter-connections-overview", "rutter_missed_webhooks_total"),
        ("rutter-monitor-internals", "sum by (outcome) (rate(rutter_webhooks_received_total"),
        ("rutter-monitor-internals", "rutter_webhook_ack_seconds_bucket"),
        ("rutter-monitor-internals", "rutter_api_requests_total"),
        ("rutter-monitor-internals", '"429|452"'),
        ("rutter-monitor-internals", "rutter_api_request_duration_seconds_bucket"),
        ("rutter-monitor-internals", "rutter_monitor_last_inventory_success_timestamp_seconds"),
        ("rutter-monitor-internals", "rutter_monitor_notifications_total"),
        ("rutter-monitor-internals", "rutter_monitor_outbox_pending"),
        ("rutter-monitor-internals", "rutter_monitor_outbox_oldest_age_seconds"),
    ],
)
def test_dashboard_shows_what_the_issue_lists(uid: str, needle: str) -> None:
    """Each view issue 4 asks for has a query on its dashboard."""
    assert any(needle in target["expr"] for _, target in _targets(DASHBOARDS[uid])), needle


def test_promtool_parses_every_panel_query(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables substituted, is valid PromQL for promtool."""
    promtool = require_tool("promtool")
    rules = []
    for uid, dashboard in DASHBOARDS.items():
        for title, target in _targets(dashboard):
            expr = re.sub(r"\$\{?(\w+)\}?", lambda m: SUBSTITUTIONS.get(m.group(1), ".*"), target["expr"])
            name = re.sub(r"\W+", "_", f"{uid}:{title}:{target['refId']}").strip("_")
            rules.append({"record": f"panel:{name}", "expr": expr})
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "panels.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_datasource_provisioning_points_at_the_stack() -> None:
    """Grafana gets a default Prometheus datasource at http://prometheus:9090, the stack's Prometheus."""
    config = yaml.safe_load((PROVISIONING / "datasources" / "rutter-monitor.yml").read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    [prometheus] = [d for d in config["datasources"] if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["isDefault"] is True
    assert prometheus["access"] == "proxy"


def test_dashboard_provider_loads_the_dashboards_from_files() -> None:
    """Grafana's dashboard provider reads JSON files from one folder, and no UI edit can drift from the files."""
    config = yaml.safe_load((PROVISIONING / "dashboards" / "rutter-monitor.yml").read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"].startswith("/")
