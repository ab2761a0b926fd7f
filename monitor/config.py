"""Settings: the environment, optionally a TOML file (`--config`), the environment winning. The only place that
reads the environment. Secrets are SecretStr (never printed) and may come from `<NAME>_FILE`."""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from monitor.store.sql import DEFAULT_DATABASE_URL, normalize_url

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """`90s`, `15m`, `6h`, `2d`, `1h30m`, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 90s, 15m, 6h or 2d")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a duration such as 90s, 15m, 6h or 2d")  # the value is not echoed: it may be a secret
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration, for logs and messages."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]


class PlatformThresholds(BaseModel):
    """Per-platform overrides of the alert thresholds; unset fields keep the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unhealthy_alert_after: Duration | None = None
    initial_sync_stall_after: Duration | None = None
    historical_sync_stall_after: Duration | None = None
    sync_stale_after: Duration | None = None


class AlertsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    platforms: dict[str, PlatformThresholds] = {}


class Route(BaseModel):
    """Sends the alerts of some platforms (or connection names) to their own Slack channel or webhook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    platforms: list[str] = []
    name_pattern: str | None = None
    slack_channel: str | None = None
    slack_webhook_url: SecretStr | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if (self.slack_channel is None) == (self.slack_webhook_url is None):
            raise ValueError("a route needs exactly one of slack_channel or slack_webhook_url")
        if self.name_pattern is not None:
            re.compile(self.name_pattern)
        return self

    @property
    def label(self) -> str:
        """The bounded, secret-free name used as the `channel` metric label."""
        if self.name:
            return self.name
        if self.slack_channel:
            return self.slack_channel
        return "route-" + "-".join(self.platforms or ["default"]).lower()


_SECRET_FIELDS = ("rutter_client_secret", "rutter_webhook_secret", "slack_bot_token", "slack_webhook_url")


class Settings(BaseSettings):
    """Every setting of the daemon. Field names are the environment variable names, lowercased."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=False)

    rutter_client_id: str | None = None
    rutter_client_secret: SecretStr | None = None
    rutter_client_secret_file: Path | None = None
    rutter_api_url: str = "https://production.rutterapi.com/versioned"
    rutter_api_version: str = "2024-08-31"
    rutter_webhook_secret: SecretStr | None = None
    rutter_webhook_secret_file: Path | None = None

    monitor_database_url: str = DEFAULT_DATABASE_URL
    monitor_host: str = "0.0.0.0"
    monitor_port: Port = 8080
    monitor_admin_port: Port | None = None
    monitor_inventory_interval: Duration = timedelta(minutes=5)
    monitor_status_interval: Duration = timedelta(hours=1)
    monitor_rate_limit: Annotated[int, Field(ge=1, le=500)] = 100
    monitor_dedupe_window: Duration = timedelta(hours=1)
    monitor_missed_webhook_grace: Duration = timedelta(minutes=15)
    monitor_webhook_max_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    monitor_shutdown_timeout: Duration = timedelta(seconds=30)
    monitor_log_level: str = "info"
    monitor_inbox_retention: Duration = timedelta(days=7)
    monitor_history_retention: Duration = timedelta(days=180)
    monitor_prune_interval: Duration = timedelta(hours=1)

    monitor_unhealthy_alert_after: Duration = timedelta(hours=1)
    monitor_initial_sync_stall_after: Duration = timedelta(hours=6)
    monitor_historical_sync_stall_after: Duration = timedelta(hours=24)
    monitor_sync_stale_after: Duration = timedelta(hours=3)
    monitor_alert_eval_interval: Duration = timedelta(seconds=10)
    monitor_resolve_hold_down: Duration = timedelta(minutes=2)
    monitor_storm_threshold: Annotated[int, Field(ge=2)] = 10
    monitor_storm_window: Duration = timedelta(minutes=5)
    monitor_group_wait: Duration = timedelta(seconds=30)
    monitor_rutter_dashboard_url: str = "https://dashboard.rutter.com/connections/{connection_id}"

    slack_webhook_url: SecretStr | None = None
    slack_webhook_url_file: Path | None = None
    slack_bot_token: SecretStr | None = None
    slack_bot_token_file: Path | None = None
    slack_channel: str | None = None
    slack_api_url: str | None = None
    alertmanager_url: str | None = None
    alertmanager_resend_interval: Duration = timedelta(minutes=1)

    alerts: AlertsFile = AlertsFile()
    routes: list[Route] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the TOML file; the environment wins over it
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in _SECRET_FIELDS:
            path = data.get(f"{name}_file")
            if path and not data.get(name):
                try:
                    data[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ValueError(f"{name}_file could not be read ({exc.strerror})") from None
        return data

    @field_validator("monitor_database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        normalize_url(value)  # raises ValueError naming what is wrong, password hidden
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.monitor_log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("monitor_log_level must be one of debug, info, warning, error")
        if self.slack_bot_token is not None and not self.slack_channel:
            raise ValueError("slack_bot_token needs slack_channel")
        if "{connection_id}" not in self.monitor_rutter_dashboard_url:
            raise ValueError("monitor_rutter_dashboard_url must contain {connection_id}")
        if self.monitor_admin_port is not None and self.monitor_admin_port == self.monitor_port:
            raise ValueError("monitor_admin_port must differ from monitor_port")
        return self

    def webhook_secrets(self) -> list[str]:
        """The secrets a webhook signature may be made with: RUTTER_WEBHOOK_SECRET (comma-separated for a rotation),
        else the client secret, which is what Rutter signs with."""
        raw = self.rutter_webhook_secret or self.rutter_client_secret
        if raw is None:
            return []
        return [s.strip() for s in raw.get_secret_value().split(",") if s.strip()]

    def problems_for_run(self) -> list[str]:
        """What `run` needs beyond a valid file: Rutter credentials."""
        problems = []
        if not self.rutter_client_id:
            problems.append("RUTTER_CLIENT_ID: required to call Rutter's API")
        if self.rutter_client_secret is None:
            problems.append("RUTTER_CLIENT_SECRET: required (or RUTTER_CLIENT_SECRET_FILE)")
        return problems


class ConfigError(Exception):
    """The configuration is invalid; `problems` names every bad setting and never holds a secret value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = loc[0].upper() if loc else "CONFIG"
        if len(loc) > 1:
            name += " (" + ".".join(loc[1:]) + ")"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return problems


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the one frozen Settings from the environment and the TOML file; raise ConfigError listing every problem."""
    file_data: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_data = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError([f"--config: cannot read {config_file} ({exc.strerror})"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"--config: {config_file} is not valid TOML ({exc})"]) from None
    try:
        return Settings(**file_data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
