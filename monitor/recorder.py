"""The one path from an event to durable state: the pure lifecycle decides, the recorder persists the result, then
updates the in-memory fleet, the metrics, the logs and whoever listens (the alert engine). Webhook processing and
polling both go through here, one unit of work at a time."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from monitor.domain import ConnectionState, Event, Outcome, Transition
from monitor.fleet import Fleet
from monitor.lifecycle import LifecycleSettings, apply
from monitor.metrics import Metrics
from monitor.store import Store

log = structlog.get_logger()

Listener = Callable[[Sequence[ConnectionState]], None]


class Unit:
    """A batch of events decided against the latest states (fleet plus this batch), committed in one transaction."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.states: dict[str, ConnectionState] = {}
        self.outcomes: list[tuple[str, Outcome]] = []
        self.inbox_ids: list[int] = []

    def current(self, connection_id: str) -> ConnectionState | None:
        return self.states.get(connection_id) or self._recorder.fleet.get(connection_id)

    def apply(self, connection_id: str, event: Event, now: datetime, *, access_token: str | None = None) -> Outcome:
        """Decide one event; the result is visible to later events of this unit."""
        outcome = apply(
            self.current(connection_id),
            event,
            now,
            connection_id=connection_id,
            settings=self._recorder.settings,
        )
        state = outcome.state
        if state is not None and access_token and state.access_token != access_token:
            state = dataclasses.replace(state, access_token=access_token)
            outcome = dataclasses.replace(outcome, state=state, changed=True)
        if state is not None and outcome.changed:
            self.states[connection_id] = state
        self.outcomes.append((connection_id, outcome))
        return outcome


class Recorder:
    """Serializes decide-and-commit so the webhook processor and the poller never overwrite each other."""

    def __init__(self, store: Store, fleet: Fleet, metrics: Metrics, settings: LifecycleSettings) -> None:
        self.store = store
        self.fleet = fleet
        self.metrics = metrics
        self.settings = settings
        self.lock = asyncio.Lock()
        self.urgent: set[str] = set()  # connections whose status the poller should refresh first
        self.listeners: list[Listener] = []

    def unit(self) -> Unit:
        return Unit(self)

    async def commit(self, unit: Unit) -> None:
        """Persist a unit, then publish it. Call with `lock` held, from decide to commit."""
        transitions: list[Transition] = []
        for _, outcome in unit.outcomes:
            transitions.extend(outcome.transitions)
        if unit.states or transitions or unit.inbox_ids:
            await self.store.save(list(unit.states.values()), transitions, unit.inbox_ids)
        for state in unit.states.values():
            self.fleet.put(state)
            self.metrics.ensure_platform(state.platform)
        for connection_id, outcome in unit.outcomes:
            self._publish(connection_id, outcome)
        if unit.states:
            changed = list(unit.states.values())
            for listener in self.listeners:
                listener(changed)

    def _publish(self, connection_id: str, outcome: Outcome) -> None:
        state = outcome.state
        platform = state.platform if state is not None else "unknown"
        for t in outcome.transitions:
            self.metrics.observe_transition(platform, t)
            log.info(
                "transition",
                connection_id=connection_id,
                platform=platform,
                dimension=t.dimension.value,
                from_state=t.from_,
                to_state=t.to,
                source=t.source.value,
                reason=t.reason,
            )
        if outcome.time_to_ready_seconds is not None:
            self.metrics.time_to_ready.labels(platform).observe(outcome.time_to_ready_seconds)
        if outcome.time_to_historical_complete_seconds is not None:
            self.metrics.time_to_historical.labels(platform).observe(outcome.time_to_historical_complete_seconds)
        for code in outcome.missed_webhooks:
            self.metrics.ensure_platform(platform)
            self.metrics.missed_webhooks.labels(platform, code).inc()
            log.warning("missed webhook", connection_id=connection_id, platform=platform, code=code)
        if outcome.wants_status:
            self.urgent.add(connection_id)
