"""A Rutter look-alike for the demo, the tests and the benchmarks: the connection endpoints with Rutter's
auth, version header, error bodies and rate limit; a fleet that evolves through the lifecycle on an injected
clock; and signed webhooks delivered with Rutter's retries and realistic faults (drops, duplicates,
reordering).
"""

from __future__ import annotations

from monitor.simulator.config import DEFAULT_API_VERSIONS, DEFAULT_PLATFORMS, InitialMix, SimulatorConfig
from monitor.simulator.model import BatchPlan, FleetModel, OutgoingWebhook, SimConnection, SimError
from monitor.simulator.platforms import ALL_PLATFORMS
from monitor.simulator.service import Simulator
from monitor.simulator.stats import RequestStats
from monitor.simulator.webhooks import DeliveryAttempt, DeliveryStats

__all__ = [
    "ALL_PLATFORMS",
    "DEFAULT_API_VERSIONS",
    "DEFAULT_PLATFORMS",
    "BatchPlan",
    "DeliveryAttempt",
    "DeliveryStats",
    "FleetModel",
    "InitialMix",
    "OutgoingWebhook",
    "RequestStats",
    "SimConnection",
    "SimError",
    "Simulator",
    "SimulatorConfig",
]
