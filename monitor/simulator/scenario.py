"""The seed scenario: Rutter's own data-batching example (docs/seed-managing-rutter-connections.txt).

A merchant with 24 months of history on QUICKBOOKS, synced in three batches:

| step | after (realistic) | what happens | webhook |
|---|---|---|---|
| created | 0 | the connection exists, initial sync running | none |
| batch 1 | 20 min | the most recent 6 months of expenses | INITIAL_UPDATE |
| batch 2 | 2 h more | the most recent 6 months of invoices | HISTORICAL_UPDATE |
| batch 3 | 6 h more | the remaining 18 months of expenses and invoices | HISTORICAL_UPDATE (complete) |
| data | 1 h more | a new expense | EXPENSE_CREATED |
| data | 10 min more | an invoice changed | INVOICE_UPDATED |

So time-to-ready is 20 min (histogram bucket le=1800 s) and time-to-historical-complete is 8 h 20 min
(30,000 s, bucket le=43200 s). Delays are multiplied by the model's `time_scale`.

Steppable: `seed_scenario()` creates the connection (no webhook: Rutter has none for creation) and returns
the remaining steps; `play()` runs them one by one and yields after each, so a test can check the daemon in
between.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from monitor.simulator.model import BatchPlan, FleetModel
from monitor.simulator.service import Simulator

SEED_PLATFORM = "QUICKBOOKS"
SEED_STORE_NAME = "Seed Merchant Books"
SEED_PLAN: tuple[BatchPlan, ...] = (
    BatchPlan(6, ("EXPENSES",)),
    BatchPlan(6, ("INVOICES",)),
    BatchPlan(24, ("EXPENSES", "INVOICES")),
)
SEED_TIME_TO_READY_SECONDS = 20 * 60.0
SEED_TIME_TO_HISTORICAL_COMPLETE_SECONDS = (20 * 60 + 2 * 3600 + 6 * 3600) * 1.0
SEED_WEBHOOK_CODES: tuple[str, ...] = (
    "INITIAL_UPDATE",
    "HISTORICAL_UPDATE",
    "HISTORICAL_UPDATE",
    "EXPENSE_CREATED",
    "INVOICE_UPDATED",
)


@dataclass(frozen=True, slots=True)
class ScenarioStep:
    """Wait `delay_seconds` of clock time, then `apply` the change; it sends webhook `code`."""

    name: str
    delay_seconds: float
    code: str
    apply: Callable[[FleetModel], object]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scripted connection and the steps that take it through its life."""

    connection_id: str
    steps: tuple[ScenarioStep, ...]


def seed_scenario(model: FleetModel, *, platform: str = SEED_PLATFORM) -> Scenario:
    """Create the seed merchant now (in initial sync, never touched by evolution) and return its steps."""
    conn = model.create(platform, store_name=SEED_STORE_NAME, plan=SEED_PLAN, evolve=False)
    cid = conn.id
    scale = model.config.time_scale
    steps = (
        ScenarioStep("batch 1: 6 months of expenses", 20 * 60 * scale, "INITIAL_UPDATE", lambda m: m.make_ready(cid)),
        ScenarioStep(
            "batch 2: 6 months of invoices",
            2 * 3600 * scale,
            "HISTORICAL_UPDATE",
            lambda m: m.complete_batch(cid),
        ),
        ScenarioStep(
            "batch 3: remaining 18 months",
            6 * 3600 * scale,
            "HISTORICAL_UPDATE",
            lambda m: m.complete_batch(cid),
        ),
        ScenarioStep("new expense", 3600 * scale, "EXPENSE_CREATED", lambda m: m.entity(cid, "EXPENSE_CREATED")),
        ScenarioStep("invoice updated", 10 * 60 * scale, "INVOICE_UPDATED", lambda m: m.entity(cid, "INVOICE_UPDATED")),
    )
    return Scenario(cid, steps)


async def play(
    sim: Simulator,
    scenario: Scenario,
    wait: Callable[[float], Awaitable[None]],
) -> AsyncIterator[ScenarioStep]:
    """Run the steps: `wait` the delay (FakeClock.advance in tests, clock.sleep live), apply, step the
    simulator and deliver what is queued, then yield the step."""
    for step in scenario.steps:
        await wait(step.delay_seconds)
        step.apply(sim.model)
        await sim.step()
        await sim.drain_webhooks()
        yield step
