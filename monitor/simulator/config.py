"""What a simulated Rutter organization looks like: credentials, fleet, pace, delivery faults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Real values of Rutter's `Platform` enum (docs/rutter-api.md §5), a mix of commerce, accounting and payments.
DEFAULT_PLATFORMS: tuple[str, ...] = (
    "SHOPIFY",
    "QUICKBOOKS",
    "NETSUITE",
    "XERO",
    "AMAZON",
    "WOO_COMMERCE",
    "BIG_COMMERCE",
    "STRIPE",
    "SAGE_INTACCT",
    "ZOHOBOOKS",
)

DEFAULT_API_VERSIONS: tuple[str, ...] = ("2023-03-14", "2024-04-30", "2024-08-31", "2025-02-28")


class InitialMix(StrEnum):
    """How the initial fleet (and `bulk_create`) is spread over the lifecycle."""

    MIXED = "mixed"  # mostly ongoing, some syncing, unhealthy, needing an update or disabled
    ONGOING = "ongoing"  # every connection ready, history complete and healthy


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything a simulator run depends on; the same config, seed and clock sequence give the same run."""

    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 - the simulator's own made-up credential
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 20  # initial fleet size
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    seed: int = 1
    webhook_url: str | None = None  # where to POST signed webhooks (None: send none)
    time_scale: float = 1.0  # multiplies every simulated duration: 1/600 turns minutes into tenths of seconds
    evolve: bool = True  # False: nothing happens unless a test or a scenario drives it
    rate_limit: int = 500  # requests per sliding 10 s window per organization
    retry_after: float | None = None  # None: 429s carry no Retry-After (Rutter documents none)
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    api_versions: tuple[str, ...] = DEFAULT_API_VERSIONS
    initial_mix: InitialMix = InitialMix.MIXED
    arrivals_per_hour: float = 0.5  # new connections per simulated hour while evolving
    incident_rate: float = 0.02  # chance, per connection and sync period, that an episode starts
    sync_period_minutes: int = 60  # Rutter's continuous sync runs every 60 minutes
    # Wall-clock seconds between the background task's step() calls (live runs: demo, `simulate`). Tests on a
    # FakeClock pass None and call step() themselves, so nothing moves behind their back.
    step_interval: float | None = 0.5
    webhook_timeout: float = 10.0  # seconds (wall clock) one webhook POST may take

    def problems(self) -> list[str]:
        """Every inconsistent value, so a caller can refuse a config with one message."""
        out: list[str] = []
        if not self.platforms:
            out.append("platforms must not be empty")
        if self.connections < 0:
            out.append("connections must be >= 0")
        if self.time_scale <= 0:
            out.append("time_scale must be > 0")
        if self.rate_limit < 1:
            out.append("rate_limit must be >= 1")
        for name in ("drop_rate", "duplicate_rate", "reorder_rate", "incident_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(f"{name} must be between 0 and 1")
        if self.drop_rate + self.duplicate_rate + self.reorder_rate > 1.0:
            out.append("drop_rate + duplicate_rate + reorder_rate must not exceed 1")
        if self.step_interval is not None and self.step_interval <= 0:
            out.append("step_interval must be > 0")
        if not self.api_versions:
            out.append("api_versions must not be empty")
        return out
