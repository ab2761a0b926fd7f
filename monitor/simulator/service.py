"""A running simulator: the fleet model, its HTTP server and its webhook sender, on one injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import random
from types import TracebackType

import aiohttp
import structlog
from aiohttp import web

from monitor.clock import Clock
from monitor.simulator.config import SimulatorConfig
from monitor.simulator.model import FleetModel
from monitor.simulator.server import API_PREFIX, SimulatorServer
from monitor.simulator.stats import RequestStats
from monitor.simulator.webhooks import WebhookSender

log = structlog.get_logger()


class Simulator:
    """Rutter, simulated: serves the API at `url`, evolves the fleet on `step()` and delivers its webhooks."""

    url: str  # the API base, ending in /versioned
    base_url: str  # the server root: the `/_sim` controls live here

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Clock,
        model: FleetModel,
        session: aiohttp.ClientSession,
    ) -> None:
        """Use `Simulator.start()`: it also binds the server."""
        self.config = config
        self.clock = clock
        self.model = model
        self.stats = RequestStats()
        self.webhooks = WebhookSender(config, clock, session, random.Random(f"{config.seed}:delivery"))
        self._session = session
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: SimulatorConfig, clock: Clock) -> Simulator:
        """Build the fleet, bind the server (port 0: any free port) and, given `step_interval`, step it."""
        problems = config.problems()
        if problems:
            raise ValueError("invalid simulator config: " + "; ".join(problems))
        model = FleetModel(config, clock)
        sim = cls(config, clock, model, aiohttp.ClientSession())
        try:
            await sim._serve()
        except BaseException:
            await sim.stop()
            raise
        if config.step_interval is not None:
            sim._task = asyncio.create_task(sim._step_forever(config.step_interval), name="simulator-step")
        log.info("simulator started", url=sim.url, connections=len(model), seed=config.seed)
        return sim

    async def _serve(self) -> None:
        runner = web.AppRunner(SimulatorServer(self).app(), access_log=None)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{host}:{port}"
        self.url = self.base_url + API_PREFIX

    async def stop(self) -> None:
        """Stop stepping, close the server and the webhook session."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def set_webhook_url(self, url: str | None) -> None:
        """Where webhooks go from now on (the receiver's port is often known only after the simulator's)."""
        self.webhooks.url = url

    async def step(self) -> None:
        """Advance the fleet to the clock's now and deliver the webhooks that are due (retries included)."""
        self.model.advance(self.clock.now())
        self.webhooks.enqueue(self.model.take_webhooks())
        self.webhooks.release_held()
        await self.webhooks.deliver_due()

    async def drain_webhooks(self) -> None:
        """Deliver everything queued now, held-back (reordered) ones too; retries keep their planned time."""
        self.webhooks.enqueue(self.model.take_webhooks())
        self.webhooks.release_held(everything=True)
        await self.webhooks.deliver_due()

    async def _step_forever(self, interval: float) -> None:
        # Paced by wall time on purpose: what a step does follows the injected clock, but a FakeClock's sleep
        # would wake at every advance() and step thousands of times per simulated hour.
        while True:
            await asyncio.sleep(interval)
            try:
                await self.step()
            except Exception:  # a step never kills the simulator
                log.exception("simulator step failed")
