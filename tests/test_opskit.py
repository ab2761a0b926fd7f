"""The ops kit (alerts/, grafana/, Dockerfile, compose.yml, deploy/) checked with the real tools (promtool, amtool,
hadolint, docker-compose), and cross-checked where those tools cannot see: every alert tested and documented, every
metric name in the daemon's contract, every file the image and the stack need present."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.metric_contract import (
    DAEMON_ALERTNAMES,
    DAEMON_PORT,
    LABEL_VALUES,
    METRIC_FAMILIES,
    PROMETHEUS_JOB,
    SCRAPE_SERIES,
    family_of,
    promql_metric_names,
    promql_selectors,
)
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULES = ALERTS / "rules.yml"
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOK = ALERTS / "runbook.md"
ALERTMANAGER = ALERTS / "alertmanager.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
COMPOSE = ROOT / "compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
RUNBOOK_BASE = "https://github.com/rutter-monitor/rutter-monitor/blob/main/alerts/runbook.md"
RUNBOOK_HEADINGS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]
GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval"}
VENV_BIN = Path(sys.executable).parent


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _records() -> dict[str, dict[str, Any]]:
    return {rule["record"]: rule for rule in _rules() if "record" in rule}


def _rule_test_cases() -> list[dict[str, Any]]:
    return [case for path in RULE_TESTS for case in _load_yaml(path)["tests"]]


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_sections() -> dict[str, list[tuple[str, str]]]:
    """Each heading of the runbook, with the (sub-heading, body) pairs one level below it."""
    sections: dict[str, list[tuple[str, str]]] = {}
    stack: list[tuple[int, str]] = []
    for block in re.split(r"^(?=#{1,6} )", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE):
        heading = re.match(r"(#{1,6}) (.+)\n?", block)
        if not heading:
            continue
        level, title = len(heading.group(1)), heading.group(2).strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        if stack and stack[-1][0] == level - 1:
            sections[stack[-1][1]].append((title, block[heading.end() :].strip()))
        sections.setdefault(title, [])
        stack.append((level, title))
    return sections


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel query and every template variable query of every dashboard."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["definition"]
                inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
                yield f"{path.name}: ${variable['name']}", inner.group(1) if inner else query


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for rule in _rules():
        yield f"rules.yml: {rule.get('alert') or rule.get('record')}", rule["expr"]


# --- rules -------------------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` accepts alerts/rules.yml."""
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in alerts/tests/ passes."""
    promtool = require_tool("promtool")
    assert RULE_TESTS, "no promtool unit tests in alerts/tests/"
    result = _run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_follow_the_mixin_conventions() -> None:
    """Every alert has a prefixed CamelCase name, `for:`, a severity, a summary, a templated description and a
    runbook_url pointing at its own anchor."""
    alerts = _alerts()
    assert len(alerts) >= 12
    for name, rule in alerts.items():
        assert re.fullmatch(r"Rutter(?:[A-Z][a-z0-9]*)+", name), name
        assert rule.get("for"), f"{name} has no for:"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip(), name
        assert "{{" in annotations["description"], f"{name}: the description is not templated"
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{_github_anchor(name)}", name


def test_the_issue_alerts_exist() -> None:
    """The fleet alerts issue 4 asks for are all defined."""
    required = {
        "RutterMonitorDown",
        "RutterMonitorAbsent",
        "RutterInventoryFailing",
        "RutterApiErrors",
        "RutterApiRateLimited",
        "RutterWebhookInvalidSignatures",
        "RutterPlatformDegraded",
        "RutterDisablesSpiking",
        "RutterTimeToReadyRegressing",
        "RutterInitialSyncBacklogGrowing",
        "RutterMissedWebhooks",
        "RutterNotificationOutboxStuck",
    }
    assert required <= set(_alerts())
    assert "rutter_monitor_inventory_interval_seconds" in _alerts()["RutterInventoryFailing"]["expr"]
    assert "3 *" in _alerts()["RutterInventoryFailing"]["expr"]


def test_every_alert_has_a_pending_and_a_firing_unit_test() -> None:
    """Each alert has a case proving it pending but not firing yet, and a case with its exact labels and every
    annotation once it fires."""
    cases = _rule_test_cases()
    for name, rule in _alerts().items():
        quiet = {
            str(check["eval_time"])
            for case in cases
            for check in case.get("alert_rule_test", [])
            if check["alertname"] == name and not check.get("exp_alerts")
        }
        pending = {
            str(check["eval_time"])
            for case in cases
            for check in case.get("promql_expr_test", [])
            if f'alertname="{name}"' in check["expr"]
            and any('alertstate="pending"' in sample["labels"] for sample in check.get("exp_samples", []))
        }
        assert quiet & pending, f"{name}: no 'pending, not firing yet' case"
        firing = [
            alert
            for case in cases
            for check in case.get("alert_rule_test", [])
            if check["alertname"] == name
            for alert in check.get("exp_alerts") or []
        ]
        assert firing, f"{name}: no firing case"
        for alert in firing:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], name
            assert set(alert["exp_annotations"]) == set(rule["annotations"]), name


def test_every_recording_rule_has_a_unit_test() -> None:
    """Each recording rule's output is asserted by at least one promql_expr_test."""
    tested = {
        check["expr"].strip()
        for case in _rule_test_cases()
        for check in case.get("promql_expr_test", [])
        if check.get("exp_samples")
    }
    for record in _records():
        assert record in tested, f"recording rule {record} has no promql_expr_test"


def test_every_alert_has_a_runbook_section() -> None:
    """The runbook has a section for every alert, Prometheus's and the daemon's, with Meaning, Impact, Diagnosis and
    Mitigation, in that order and not empty; and no section for an alert that does not exist."""
    sections = _runbook_sections()
    names = set(_alerts()) | DAEMON_ALERTNAMES
    for name in names:
        assert name in sections, f"no runbook section for {name}"
        assert [title for title, _ in sections[name]] == RUNBOOK_HEADINGS, name
        assert all(body for _, body in sections[name]), f"{name}: an empty runbook heading"
    documented = {title for title in sections if re.fullmatch(r"Rutter[A-Z]\w+", title)}
    assert documented == names


def test_runbook_anchor_helper_matches_github() -> None:
    """Headings become the anchors GitHub generates for them."""
    assert _github_anchor("RutterMonitorDown") == "ruttermonitordown"
    assert _github_anchor("Fleet alerts (Prometheus)") == "fleet-alerts-prometheus"


# --- metric names --------------------------------------------------------------------------------------------


def test_promql_reader_finds_names_and_matchers() -> None:
    """The PromQL reader keeps metric and recording-rule names and drops functions, keywords, labels and durations."""
    expr = (
        'sum by (platform) (rate(rutter_missed_webhooks_total{platform=~"$platform", code!=""}[$__rate_interval]))'
        " / on (platform) group_left clamp_min(platform:rutter_connections:sum offset 1h, 1) > bool 0.5e3"
    )
    assert promql_metric_names(expr) == {"rutter_missed_webhooks_total", "platform:rutter_connections:sum"}
    [(name, matchers), bare] = promql_selectors(expr)
    assert name == "rutter_missed_webhooks_total"
    assert [(m.label, m.op, m.value) for m in matchers] == [("platform", "=~", "$platform"), ("code", "!=", "")]
    assert bare == ("platform:rutter_connections:sum", ())


def test_rules_and_dashboards_use_only_exported_metrics() -> None:
    """Every name a rule or a dashboard reads is a family of the daemon's contract (or a histogram series of one),
    a series Prometheus adds itself, or a recording rule of alerts/rules.yml."""
    records = set(_records())
    unknown = []
    for where, expr in [*_rule_exprs(), *_dashboard_exprs()]:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown += [(where, n) for n in names if not (family_of(n) or n in SCRAPE_SERIES or n in records)]
    assert not unknown


def test_selectors_use_only_exported_labels_and_values() -> None:
    """Matchers on the daemon's metrics use labels those metrics have, and values from their closed sets."""
    problems = []
    for where, expr in [*_rule_exprs(), *_dashboard_exprs()]:
        for name, matchers in promql_selectors(expr):
            family = family_of(name)
            if family is None:
                continue
            allowed = METRIC_FAMILIES[family].labels | {"job", "instance"} | ({"le"} if name != family else set())
            for m in matchers:
                if m.label not in allowed:
                    problems.append((where, name, m.label))
                values = LABEL_VALUES.get((family, m.label))
                if values is None or m.value.startswith("$"):
                    continue
                literals = m.value.split("|") if m.op in {"=~", "!~"} else [m.value]
                if all(re.fullmatch(r"\w+", v) for v in literals):
                    problems += [(where, name, f"{m.label}={v}") for v in literals if v not in values]
    assert not problems


# --- Alertmanager ----------------------------------------------------------------------------------------------


def test_amtool_accepts_the_alertmanager_config() -> None:
    """`amtool check-config` accepts alerts/alertmanager.yml."""
    amtool = require_tool("amtool")
    result = _run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "RutterConnectionDisabled", "severity": "critical", "platform": "SHOPIFY"}, "slack-critical"),
        ({"alertname": "RutterMonitorDown", "severity": "critical"}, "slack-critical"),
        ({"alertname": "RutterConnectionNeedsUpdate", "severity": "warning", "platform": "SHOPIFY"}, "slack-commerce"),
        ({"alertname": "RutterInitialSyncStalled", "severity": "warning", "platform": "NETSUITE"}, "slack-accounting"),
        ({"alertname": "RutterSyncStale", "severity": "warning", "platform": "PLAID"}, "slack-default"),
        ({"alertname": "RutterApiErrors", "severity": "warning", "endpoint": "connection"}, "slack-default"),
    ],
)
def test_alertmanager_routes_by_severity_and_platform(labels: dict[str, str], receiver: str) -> None:
    """Critical alerts reach the critical channel, others their platform team's channel, the rest the default."""
    amtool = require_tool("amtool")
    args = [f"{key}={value}" for key, value in labels.items()]
    result = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_platform_degraded_inhibits_that_platforms_connection_alerts() -> None:
    """An inhibition rule mutes exactly the daemon's per-connection alerts of the platform that is degraded."""
    config = _load_yaml(ALERTMANAGER)
    [rule] = [r for r in config["inhibit_rules"] if 'alertname="RutterPlatformDegraded"' in r["source_matchers"]]
    assert rule["equal"] == ["platform"]
    [target] = rule["target_matchers"]
    pattern = re.fullmatch(r'alertname=~"(.+)"', target)
    assert pattern
    muted = {name for name in [*DAEMON_ALERTNAMES, *_alerts()] if re.fullmatch(pattern.group(1), name)}
    assert muted == DAEMON_ALERTNAMES


def test_every_slack_receiver_sends_resolved() -> None:
    """Every Slack receiver also announces resolutions, and alerts are grouped by platform."""
    config = _load_yaml(ALERTMANAGER)
    assert "platform" in config["route"]["group_by"]
    slack_configs = [c for r in config["receivers"] for c in r.get("slack_configs", [])]
    assert slack_configs
    assert all(c["send_resolved"] is True for c in slack_configs)


def test_slack_message_names_connection_and_runbook(tmp_path: Path) -> None:
    """The Slack text template, rendered by amtool, shows each alert's summary, connection id and runbook link."""
    amtool = require_tool("amtool")
    [slack] = _load_yaml(ALERTMANAGER)["receivers"][0]["slack_configs"]
    alert = {
        "status": "firing",
        "labels": {"alertname": "RutterConnectionDisabled", "platform": "SHOPIFY", "connection_id": "conn_42"},
        "annotations": {"summary": "Connection disabled.", "runbook_url": f"{RUNBOOK_BASE}#x"},
        "startsAt": "2024-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": "1",
    }
    data = {"receiver": "slack-default", "status": "firing", "alerts": [alert], "groupLabels": alert["labels"]}
    data |= {"commonLabels": alert["labels"], "commonAnnotations": {}, "externalURL": "http://am"}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "none.tmpl").write_text("")
    rendered = {}
    for field in ("title", "text"):
        result = _run(
            amtool,
            "template",
            "render",
            f"--template.glob={tmp_path / 'none.tmpl'}",
            f"--template.text={slack[field]}",
            f"--template.data={tmp_path / 'data.json'}",
        )
        assert result.returncode == 0, result.stderr
        rendered[field] = result.stdout
    assert rendered["title"].strip() == "[FIRING:1] RutterConnectionDisabled (SHOPIFY)"
    assert rendered["text"].splitlines()[:2] == [
        "*Connection disabled.* (connection `conn_42`)",
        f"Runbook: {RUNBOOK_BASE}#x",
    ]


# --- Dockerfile ------------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_hadolint_is_clean() -> None:
    """hadolint reports nothing on the Dockerfile, at its strictest threshold and with no ignore file."""
    hadolint = require_tool("hadolint", str(VENV_BIN / "hadolint"))
    assert not list(ROOT.glob(".hadolint.y*ml"))
    result = _run(hadolint, "--failure-threshold", "style", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip()


def test_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    """The image builds wheels in one stage and installs them, with no build tools, into a slim non-root stage that
    keeps its SQLite file on a volume, exposes 8080, checks /healthz and runs the daemon."""
    stages = [arg for op, arg in _dockerfile_instructions() if op == "FROM"]
    assert len(stages) >= 2
    assert all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    final = _final_stage()
    ops = dict(final)
    user = [arg for op, arg in final if op == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert "/data" in ops["VOLUME"]
    assert ops["EXPOSE"].split() == [str(DAEMON_PORT)]
    assert "MONITOR_DATABASE_URL=sqlite+aiosqlite:////data/rutter-monitor.db" in ops["ENV"].split()
    assert "/healthz" in ops["HEALTHCHECK"]
    assert "urllib" in ops["HEALTHCHECK"]
    assert json.loads(ops["CMD"]) == ["rutter-monitor", "run"]
    installs = [arg for op, arg in final if op == "RUN" and "pip install" in arg]
    assert installs
    assert all("--no-index" in arg and "from=build" in arg for arg in installs)
    assert not any(re.search(r"apt-get|apk |gcc|build-essential", arg) for op, arg in final if op == "RUN")


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching pattern wins)."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            excluded = not negated
    return excluded


def test_every_dockerfile_copy_source_exists_in_the_build_context() -> None:
    """Each file a COPY takes from the build context exists and is not excluded by .dockerignore."""
    sources = []
    for op, arg in _dockerfile_instructions():
        if op != "COPY":
            continue
        words = shlex.split(arg)
        if any(word.startswith("--from") for word in words):
            continue
        sources += [word for word in words if not word.startswith("--")][:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"
        assert not _dockerignored(source), f"COPY source {source} is excluded by .dockerignore"


# --- compose stack ---------------------------------------------------------------------------------------------


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    compose = require_tool("docker-compose", str(VENV_BIN / "docker-compose"))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RUTTER_", "COMPOSE_"))}
    return _run(compose, "-f", str(COMPOSE), *args, env=env)


@pytest.mark.parametrize("profiles", [[], ["demo"], ["live"]])
def test_compose_config_is_clean(profiles: list[str]) -> None:
    """`docker-compose config` validates the stack, alone and with each profile, with no warning."""
    result = _compose(*[arg for p in profiles for arg in ("--profile", p)], "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip()


def _compose_services() -> dict[str, Any]:
    result = _compose("--profile", "demo", "--profile", "live", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_every_file_compose_mounts_exists() -> None:
    """Every bind mount and build context of the stack points at a file or folder of the repository."""
    services = _compose_services()
    binds = [v for s in services.values() for v in s.get("volumes", []) if v["type"] == "bind"]
    assert binds
    for bind in binds:
        assert Path(bind["source"]).exists(), bind["source"]
    for service in services.values():
        if "build" in service:
            assert (Path(service["build"]["context"]) / service["build"].get("dockerfile", "Dockerfile")).exists()


def _mount(service: dict[str, Any], source: Path) -> str:
    [target] = [v["target"] for v in service.get("volumes", []) if v["type"] == "bind" and Path(v["source"]) == source]
    return str(target)


def test_compose_wires_the_kit_together() -> None:
    """Prometheus loads deploy/prometheus.yml and the rules, Alertmanager its config, Grafana the provisioning and
    the dashboards where the provider looks; both daemons answer to the scrape target."""
    services = _compose_services()
    prometheus = services["prometheus"]
    assert f"--config.file={_mount(prometheus, PROMETHEUS_CONFIG)}" in prometheus["command"]
    config = _load_yaml(PROMETHEUS_CONFIG)
    rules_target = _mount(prometheus, RULES)
    assert any(fnmatch.fnmatch(rules_target, pattern) for pattern in config["rule_files"])
    alertmanager = services["alertmanager"]
    assert f"--config.file={_mount(alertmanager, ALERTMANAGER)}" in alertmanager["command"]
    grafana = services["grafana"]
    assert _mount(grafana, ROOT / "grafana" / "provisioning") == "/etc/grafana/provisioning"
    provider = _load_yaml(ROOT / "grafana" / "provisioning" / "dashboards" / "rutter-monitor.yml")
    assert _mount(grafana, ROOT / "grafana" / "dashboards") == provider["providers"][0]["options"]["path"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == PROMETHEUS_JOB]
    [target] = [t for c in job["static_configs"] for t in c["targets"]]
    host, port = target.split(":")
    assert int(port) == DAEMON_PORT
    live, demo = services["rutter-monitor"], services["demo"]
    assert host == "rutter-monitor"
    assert host in demo["networks"]["default"]["aliases"]
    assert live["profiles"] == ["live"]
    assert demo["profiles"] == ["demo"]
    assert demo["command"] == ["rutter-monitor", "demo", "--host", "0.0.0.0"]
    # `config` drops an optional env file that is absent, so read the file itself.
    assert {"path": ".env", "required": False} in _load_yaml(COMPOSE)["services"]["rutter-monitor"]["env_file"]


def test_promtool_accepts_the_prometheus_config() -> None:
    """`promtool check config` accepts deploy/prometheus.yml."""
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
