"""Settings: durations, the environment over the TOML file, secrets from files, and every problem named."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import ConfigError, load_settings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("6h", 21600), ("2d", 172800), ("1h30m", 5400), ("45", 45), ("500ms", 0.5)],
)
def test_durations_read_like_people_write_them(text: str, seconds: float) -> None:
    """Durations accept s, m, h, d (and combinations) or a bare number of seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["5x", "", "m5", "-3s", "1h 30"])
def test_bad_durations_are_refused(text: str) -> None:
    """Anything else is a ValueError, never a silent zero."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_defaults_match_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults are the ones README and the issues fix."""
    for name in ("MONITOR_PORT", "RUTTER_API_URL", "MONITOR_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.rutter_api_url == "https://production.rutterapi.com/versioned"
    assert s.rutter_api_version == "2024-08-31"
    assert (s.monitor_host, s.monitor_port) == ("0.0.0.0", 8080)
    assert s.monitor_inventory_interval == timedelta(minutes=5)
    assert s.monitor_status_interval == timedelta(hours=1)
    assert s.monitor_rate_limit == 100
    assert s.monitor_dedupe_window == timedelta(hours=1)
    assert s.monitor_webhook_max_bytes == 1024 * 1024
    assert s.monitor_database_url.startswith("sqlite")


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TOML value applies unless the environment sets the same setting; alert overrides and routes parse."""
    config = tmp_path / "monitor.toml"
    config.write_text(
        'monitor_port = 9000\nmonitor_inventory_interval = "2m"\n'
        '[alerts.platforms.NETSUITE]\ninitial_sync_stall_after = "24h"\n'
        '[[routes]]\nplatforms = ["SHOPIFY", "AMAZON"]\nslack_channel = "#commerce-oncall"\n'
    )
    monkeypatch.setenv("MONITOR_PORT", "9100")
    s = load_settings(config)
    assert s.monitor_port == 9100
    assert s.monitor_inventory_interval == timedelta(minutes=2)
    assert s.alerts.platforms["NETSUITE"].initial_sync_stall_after == timedelta(hours=24)
    assert s.routes[0].platforms == ["SHOPIFY", "AMAZON"]


def test_every_problem_is_named_and_no_secret_is_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bad values give two problems naming their settings; the secret's value appears nowhere."""
    monkeypatch.setenv("MONITOR_PORT", "abc")
    monkeypatch.setenv("MONITOR_INVENTORY_INTERVAL", "5x")
    monkeypatch.setenv("RUTTER_CLIENT_SECRET", "s3cr3t-value")
    with pytest.raises(ConfigError) as info:
        load_settings()
    names = [p.split(":")[0] for p in info.value.problems]
    assert names == ["MONITOR_PORT", "MONITOR_INVENTORY_INTERVAL"]
    assert "s3cr3t-value" not in str(info.value)


def test_secrets_come_from_files_and_stay_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RUTTER_CLIENT_SECRET_FILE is read; the settings' repr never shows the secret."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("RUTTER_CLIENT_SECRET_FILE", str(secret_file))
    monkeypatch.delenv("RUTTER_CLIENT_SECRET", raising=False)
    s = load_settings()
    assert s.rutter_client_secret is not None
    assert s.rutter_client_secret.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(s)
    assert s.webhook_secrets() == ["from-a-file"]


def test_webhook_secret_may_hold_two_for_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUTTER_WEBHOOK_SECRET takes two comma-separated secrets and then replaces the client secret."""
    monkeypatch.setenv("RUTTER_CLIENT_SECRET", "client")
    monkeypatch.setenv("RUTTER_WEBHOOK_SECRET", "old, new")
    assert load_settings().webhook_secrets() == ["old", "new"]


def test_run_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RUTTER_CLIENT_ID and RUTTER_CLIENT_SECRET, `run` has two problems naming them."""
    monkeypatch.delenv("RUTTER_CLIENT_ID", raising=False)
    monkeypatch.delenv("RUTTER_CLIENT_SECRET", raising=False)
    problems = load_settings().problems_for_run()
    assert [p.split(":")[0] for p in problems] == ["RUTTER_CLIENT_ID", "RUTTER_CLIENT_SECRET"]
