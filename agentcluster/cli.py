"""The ``agentcluster`` command line.

Commands: ``serve`` (Ray and the gateway on this machine: the main job), ``db upgrade`` /
``db current`` (migrations), ``check`` (probe every configured dependency), ``relay`` (run the
outbox relay in the foreground), ``config`` (show effective settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from agentcluster.bootstrap import build_relay, open_state_store
from agentcluster.config import Settings, load_settings
from agentcluster.errors import AgentClusterError
from agentcluster.health import probe_all
from agentcluster.store import current_revision, head_revision

__all__ = ["main"]


async def _db_upgrade(settings: Settings) -> int:
    store = await open_state_store(settings, migrate=True)
    try:
        revision = await current_revision(store.engine)
    finally:
        await store.close()
    print(f"{store.description}: at revision {revision} (head {head_revision()})")
    return 0


async def _db_current(settings: Settings) -> int:
    store = await open_state_store(settings, migrate=False)
    try:
        revision = await current_revision(store.engine)
    finally:
        await store.close()
    print(f"{store.description}: revision {revision or '(empty)'}; head {head_revision()}")
    return 0 if revision == head_revision() else 1


async def _check(settings: Settings) -> int:
    statuses = await probe_all(settings)
    for status in statuses:
        print(f"{status.name:<11} {status.state:<9} {status.latency_ms:7.1f} ms  {status.detail}")
    return 1 if any(status.state == "down" for status in statuses) else 0


async def _relay(settings: Settings) -> int:
    store = await open_state_store(settings)
    relay = await build_relay(settings, store)
    if relay is None:
        print(
            "relay: SA01_KAFKA_BOOTSTRAP_SERVERS is unset; events stay in the store",
            file=sys.stderr,
        )
        await store.close()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await relay.run(stop)
    finally:
        await store.close()
    return 0


def _config(settings: Settings) -> int:
    shown = settings.model_dump(mode="json")
    for section in ("auth", "crypto"):
        shown[section] = {key: "***" if value else None for key, value in shown[section].items()}
    if settings.db.dsn:
        shown["db"]["dsn"] = settings.db.dsn.split("@")[-1]
    print(json.dumps(shown, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentcluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="migrate the database to the newest schema")
    db_commands.add_parser("current", help="show the schema revision (exit 1 if not at head)")
    commands.add_parser("check", help="probe every configured dependency")
    commands.add_parser("relay", help="relay the outbox to Kafka until interrupted")
    commands.add_parser("config", help="print the effective settings (secrets masked)")
    serve = commands.add_parser(
        "serve", help="run Ray and the gateway on this machine until interrupted (the main job)"
    )
    serve.add_argument(
        "--address", default="local", help="Ray address: 'local' starts a new Ray (default)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentcluster`` command."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
        if args.command == "config":
            return _config(settings)
        if args.command == "serve":
            from agentcluster.launcher import serve_forever

            serve_forever(settings, ray_address=args.address)
            return 0
        if args.command == "db":
            runner = _db_upgrade if args.db_command == "upgrade" else _db_current
            return asyncio.run(runner(settings))
        if args.command == "check":
            return asyncio.run(_check(settings))
        return asyncio.run(_relay(settings))
    except AgentClusterError as exc:
        print(f"agentcluster: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
