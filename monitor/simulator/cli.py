"""`rutter-monitor simulate`: the simulator alone, on the wall clock, until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import os

from monitor.clock import SystemClock
from monitor.simulator.config import DEFAULT_PLATFORMS, InitialMix, SimulatorConfig
from monitor.simulator.service import Simulator

STEP_INTERVAL_SECONDS = 0.5


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _platforms(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one platform")
    return names


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser`."""
    defaults = SimulatorConfig()
    parser.add_argument("--host", default=defaults.host, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8090, help="port to bind, 0 for any (default %(default)s)")
    parser.add_argument("--connections", type=int, default=defaults.connections, help="initial fleet size")
    parser.add_argument(
        "--platforms",
        type=_platforms,
        default=DEFAULT_PLATFORMS,
        help="comma-separated Rutter platform names (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="same seed, same run")
    parser.add_argument("--webhook-url", default=None, help="where to POST signed webhooks (default: send none)")
    parser.add_argument(
        "--client-id",
        default=os.environ.get("RUTTER_CLIENT_ID", defaults.client_id),
        help="Basic-auth user the API accepts (env RUTTER_CLIENT_ID)",
    )
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("RUTTER_CLIENT_SECRET", defaults.client_secret),
        help="Basic-auth password, also the webhook signing key (env RUTTER_CLIENT_SECRET)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        help="multiplies simulated durations: 0.001667 (1/600) turns 10 minutes into 1 second",
    )
    parser.add_argument("--no-evolve", action="store_true", help="the fleet changes only through /_sim controls")
    parser.add_argument("--initial-mix", choices=[m.value for m in InitialMix], default=defaults.initial_mix.value)
    parser.add_argument("--rate-limit", type=int, default=defaults.rate_limit, help="requests per 10 s")
    parser.add_argument("--retry-after", type=float, default=None, help="send Retry-After on 429 (seconds)")
    parser.add_argument("--drop-rate", type=_rate, default=0.0, help="share of webhooks never sent")
    parser.add_argument("--duplicate-rate", type=_rate, default=0.0, help="share of webhooks sent twice")
    parser.add_argument("--reorder-rate", type=_rate, default=0.0, help="share of webhooks sent after a later one")


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator config the parsed flags describe (stepping every 0.5 s of the wall clock)."""
    return SimulatorConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        host=args.host,
        port=args.port,
        connections=args.connections,
        platforms=tuple(args.platforms),
        seed=args.seed,
        webhook_url=args.webhook_url,
        time_scale=args.time_scale,
        evolve=not args.no_evolve,
        initial_mix=InitialMix(args.initial_mix),
        rate_limit=args.rate_limit,
        retry_after=args.retry_after,
        drop_rate=args.drop_rate,
        duplicate_rate=args.duplicate_rate,
        reorder_rate=args.reorder_rate,
        step_interval=STEP_INTERVAL_SECONDS,
    )


async def run(args: argparse.Namespace) -> None:
    """Start the simulator on the wall clock, print where it listens, and serve until cancelled."""
    config = config_from_args(args)
    sim = await Simulator.start(config, SystemClock())
    try:
        print(f"Rutter simulator: API {sim.url} (client id {config.client_id})", flush=True)
        print(f"  controls {sim.base_url}/_sim/connections, stats {sim.base_url}/_sim/stats", flush=True)
        if config.webhook_url:
            print(f"  webhooks -> {config.webhook_url}", flush=True)
        await asyncio.Event().wait()
    finally:
        await sim.stop()
