"""Entry points: run, simulate, demo, check-config. Each builds what it needs and nothing else."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from monitor import __version__, gcpolicy
from monitor.alerting.routing import routing_problems
from monitor.app import Daemon, Running, start
from monitor.clock import SystemClock
from monitor.config import ConfigError, Settings, load_settings
from monitor.log import configure
from monitor.store import StoreError

log = structlog.get_logger()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rutter-monitor", description="Monitoring of Rutter connections.")
    parser.add_argument("--version", action="version", version=f"rutter-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon against Rutter")
    run.add_argument("--config", type=Path, help="TOML file; the environment wins over it")
    check = sub.add_parser("check-config", help="validate the configuration, list every problem")
    check.add_argument("--config", type=Path)
    sim = sub.add_parser("simulate", help="run the Rutter simulator alone")
    from monitor.simulator.cli import configure_parser

    configure_parser(sim)
    demo = sub.add_parser("demo", help="the simulator and the daemon together, with fast settings")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="the daemon's port")
    demo.add_argument("--simulator-port", type=int, default=8081)
    demo.add_argument("--connections", type=int, default=40)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--database", help="database URL (default: a fresh SQLite file in a temporary folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "run":
        return run(args.config)
    if args.command == "simulate":
        from monitor.simulator.cli import run as run_simulator

        configure("info")
        return _until_signal(run_simulator(args))
    if args.command == "demo":
        return demo(args)
    return 2  # pragma: no cover - argparse enforces the choices


def _problems(config: Path | None) -> tuple[Settings | None, list[str]]:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        return None, exc.problems
    return settings, settings.problems_for_run() + routing_problems(settings)


def check_config(config: Path | None) -> int:
    """Print every problem of the configuration; exit 1 if there is any."""
    _, problems = _problems(config)
    if problems:
        print(f"configuration has {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("configuration OK")
    return 0


def run(config: Path | None) -> int:
    """The daemon, until SIGTERM or SIGINT."""
    settings, problems = _problems(config)
    if settings is None or problems:
        for problem in problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    configure(settings.monitor_log_level)
    daemon = Daemon(settings, clock=SystemClock())
    gcpolicy.defer_full_collections()  # this process's policy; the full collections run in _serve
    try:
        _until_signal(_serve(daemon))
    except (StoreError, ConfigError) as exc:
        message = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
        print(f"rutter-monitor cannot start: {message}", file=sys.stderr)
        return 1
    if daemon.leadership_lost.is_set():
        return 3  # a supervisor restarts the process, which then stands by
    return 0


async def _serve(daemon: Daemon) -> None:
    """Serve until a signal (the caller cancels us) or until leadership is lost."""
    running = await start(daemon)
    collector = asyncio.create_task(gcpolicy.collect_periodically(daemon.clock), name="full-gc")
    try:
        await daemon.leadership_lost.wait()
    finally:
        collector.cancel()
        await running.stop()


def _until_signal(main_coro: object) -> int:
    """Run a coroutine until SIGTERM/SIGINT, then cancel it so its cleanup runs."""

    async def runner() -> None:
        task = asyncio.ensure_future(main_coro)  # type: ignore[call-overload]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopping on signal")

    with asyncio.Runner(loop_factory=loop_factory()) as loop_runner:
        loop_runner.run(runner())
    return 0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux, macOS): its transports and callbacks cost the webhook path
    about a tenth less CPU per request (bench/ingest.py); asyncio's own loop elsewhere."""
    try:
        import uvloop  # optional: not built for every platform
    except ImportError:
        return None
    return uvloop.new_event_loop


def demo(args: argparse.Namespace) -> int:
    """Simulator + daemon in one process, with time compressed so the fleet moves within a minute."""
    configure("info", json=False)
    return _until_signal(_demo(args))


async def _demo(args: argparse.Namespace) -> None:
    from monitor.simulator import Simulator, SimulatorConfig

    clock = SystemClock()
    folder = tempfile.mkdtemp(prefix="rutter-monitor-demo-")
    database = args.database or f"sqlite+aiosqlite:///{folder}/demo.db"
    sim_config = SimulatorConfig(
        host=args.host,
        port=args.simulator_port,
        connections=args.connections,
        seed=args.seed,
        webhook_url=f"http://{args.host}:{args.port}/webhooks/rutter",
        time_scale=1 / 600,
        duplicate_rate=0.05,
        drop_rate=0.05,
    )
    sim = await Simulator.start(sim_config, clock)
    settings = Settings.model_validate(
        {
            "rutter_client_id": sim_config.client_id,
            "rutter_client_secret": sim_config.client_secret,
            "rutter_api_url": sim.url,
            "monitor_database_url": database,
            "monitor_host": args.host,
            "monitor_port": args.port,
            "monitor_inventory_interval": "10s",
            "monitor_status_interval": "1m",
            "monitor_missed_webhook_grace": "30s",
            "monitor_unhealthy_alert_after": "30s",
            "monitor_initial_sync_stall_after": "2m",
            "monitor_historical_sync_stall_after": "3m",
            "monitor_sync_stale_after": "5m",
            "monitor_resolve_hold_down": "5s",
            "monitor_group_wait": "3s",
            "monitor_alert_eval_interval": "2s",
        }
    )
    running: Running | None = None
    try:
        # With no Slack target in the environment, notifications print here (ConsoleSink).
        running = await start(Daemon(settings, clock=clock, console=sys.stdout))
        print(
            "\nrutter-monitor demo is running\n"
            f"  metrics:      {running.admin_url}/metrics\n"
            f"  connections:  {running.admin_url}/api/v1/connections\n"
            f"  alerts:       {running.admin_url}/api/v1/alerts\n"
            f"  readiness:    {running.admin_url}/readyz\n"
            f"  simulator:    {sim.url} (Rutter API), webhooks to {running.url}/webhooks/rutter\n"
            f"  database:     {database}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        if running is not None:
            await running.stop()
        await sim.stop()
