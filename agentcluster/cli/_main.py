"""The command parser and handlers of ``agentcluster`` (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agentcluster import redact
from agentcluster.bootstrap import build_relay, open_state_store
from agentcluster.cli._chat import Console, run_chat
from agentcluster.cli._local import SERVE_MODULE, LocalFiles, run_down, run_up, serve_pid
from agentcluster.cli._remote import (
    local_url,
    ready_probe,
    resolve_admin_key,
    resolve_api_key,
    resolve_url,
    run_keys_create,
    run_keys_list,
    run_keys_revoke,
    run_status,
)
from agentcluster.client import ApiError, Client, ConnectionFailed
from agentcluster.config import Settings, load_settings
from agentcluster.errors import AgentClusterError, ConfigError, UserError
from agentcluster.health import probe_all
from agentcluster.store import current_revision, head_revision

__all__ = ["main", "parse_args"]

_DESCRIPTION = "The ``agentcluster`` command line."


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
    sandbox_ready = await _check_sandbox(settings)
    return 1 if any(status.state == "down" for status in statuses) or not sandbox_ready else 0


async def _check_sandbox(settings: Settings) -> bool:
    # python_exec's isolation on this node, probed the way a tool actor here would.
    from agentcluster.tools import PythonSandbox, SandboxLimits, SandboxRuntime

    tools = settings.tools
    sandbox = PythonSandbox(SandboxLimits.from_settings(tools), SandboxRuntime.from_settings(tools))
    started = time.monotonic()
    status = await sandbox.status()
    latency_ms = (time.monotonic() - started) * 1000
    state = "ok" if status.isolation == "bwrap" else status.isolation
    detail = status.detail if not status.ready else status.summary()
    print(f"{'python_exec':<11} {state:<9} {latency_ms:7.1f} ms  {detail}")
    return status.ready


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
    print(json.dumps(redact.mask_settings(settings), indent=2))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Become the launcher (``python -m deployments.launcher``): the same process (the PID that
    ``up`` wrote), environment and terminal; the settings are read again from the environment."""
    del settings  # read (and checked) by main() already; the launcher reads them again
    argv = [sys.executable, "-m", SERVE_MODULE, "--address", args.address]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    url = local_url(settings)
    return run_up(
        settings, url, lambda: ready_probe(url), wait_s=args.wait, out=sys.stdout, err=sys.stderr
    )


def _down(args: argparse.Namespace, settings: Settings) -> int:
    url = local_url(settings)
    return run_down(
        LocalFiles.of(settings),
        timeout_s=args.timeout,
        answering=lambda: ready_probe(url) is not None,
        out=sys.stdout,
        err=sys.stderr,
    )


def _status(args: argparse.Namespace, settings: Settings) -> int:
    pid = serve_pid(LocalFiles.of(settings))
    # With the admin key /v1/ready adds each dependency's details; without, names and states.
    with Client(args.url, settings.auth.admin_key, timeout=10.0, retries=0) as client:
        code = run_status(client, args.url, sys.stdout)
    if pid is not None:
        print(f"local       pid {pid} (started by `agentcluster up`)")
    return code


def _chat(args: argparse.Namespace, settings: Settings) -> int:
    key = resolve_api_key(args.key, settings)
    if key is None:
        raise ConfigError(
            "AGENTCLUSTER_API_KEY: not set; pass --key, set the variable, or start the demo "
            "mode (`agentcluster up` with no LLM configured writes the demo key)"
        )
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())
    console = Console(read_line=input, out=sys.stdout, err=sys.stderr, interactive=interactive)
    with Client(args.url, key) as client:
        return run_chat(client, agent=args.agent, session_id=args.session, console=console)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    admin_key = resolve_admin_key(args.admin_key, settings)
    with Client(args.url, admin_key) as client:
        if args.keys_command == "create":
            return run_keys_create(
                client, args.name, args.tenant_id, args.tenant_name, sys.stdout, args.roles
            )
        if args.keys_command == "list":
            return run_keys_list(client, args.tenant_id, sys.stdout)
        return run_keys_revoke(client, args.key_id, sys.stdout)


def _secrets(args: argparse.Namespace, settings: Settings) -> int:
    from agentcluster.cli._secrets import run_secrets_rotate

    return asyncio.run(run_secrets_rotate(settings, args.new_key_file, sys.stdout))


def _db(args: argparse.Namespace, settings: Settings) -> int:
    runner = _db_upgrade if args.db_command == "upgrade" else _db_current
    return asyncio.run(runner(settings))


_SERVER_COMMANDS = frozenset({"serve", "db", "check", "relay", "config"})

Handler = Callable[[argparse.Namespace, Settings], int]

_HANDLERS: dict[str, Handler] = {
    "serve": _serve,
    "up": _up,
    "down": _down,
    "status": _status,
    "chat": _chat,
    "keys": _keys,
    "db": _db,
    "secrets": _secrets,
    "check": lambda _args, settings: asyncio.run(_check(settings)),
    "relay": lambda _args, settings: asyncio.run(_relay(settings)),
    "config": lambda _args, settings: _config(settings),
}


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 3600, got {text}")
    return value


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="the gateway (default: $AGENTCLUSTER_URL, else this machine's SA01_GATEWAY_HOST/PORT)",
    )


def _add_lifecycle(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve", help="run Ray and the gateway on this machine until interrupted (the main job)"
    )
    serve.add_argument(
        "--address", default="local", help="Ray address: 'local' starts a new Ray (default)"
    )
    up = commands.add_parser(
        "up", help="start `agentcluster serve` in the background and wait until it is ready"
    )
    up.add_argument(
        "--wait",
        type=_positive_seconds,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for /v1/ready (default 120)",
    )
    down = commands.add_parser("down", help="stop the cluster that `agentcluster up` started")
    down.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait after SIGINT before SIGTERM, then SIGKILL (default 60)",
    )
    status = commands.add_parser(
        "status", help="the gateway's health and readiness (exit 1 unless ready)"
    )
    _add_url(status)


def _add_chat(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chat = commands.add_parser(
        "chat",
        help="talk to an agent in the terminal (reads stdin; `echo hi | agentcluster chat` works)",
    )
    chat.add_argument("--agent", default="default", help="agent profile (default: default)")
    chat.add_argument("--session", metavar="ID", help="resume this session instead of a new one")
    _add_url(chat)
    chat.add_argument(
        "--key", help="API key (default: $AGENTCLUSTER_API_KEY, else <data dir>/demo-api-key)"
    )


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = argparse.ArgumentParser(add_help=False)
    _add_url(admin)
    admin.add_argument("--admin-key", help="the admin key (default: $SA01_AUTH_ADMIN_KEY)")
    keys = commands.add_parser("keys", help="create, list and revoke API keys (admin key)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser(
        "create", parents=[admin], help="create a key; prints its secret once"
    )
    create.add_argument("--name", required=True, help="a label for the key")
    tenant = create.add_mutually_exclusive_group(required=True)
    tenant.add_argument("--tenant-id", help="an existing tenant")
    tenant.add_argument("--tenant-name", help="create a new tenant with this name")
    create.add_argument(
        "--role",
        action="append",
        default=[],
        dest="roles",
        help="a role of the key (repeatable), which the tenant's policy may require",
    )
    listing = keys_commands.add_parser(
        "list", parents=[admin], help="list keys (secrets are never shown)"
    )
    listing.add_argument("--tenant-id", help="only this tenant's keys")
    revoke = keys_commands.add_parser("revoke", parents=[admin], help="revoke a key")
    revoke.add_argument("key_id", metavar="KEY_ID")


def _add_secrets(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = commands.add_parser("secrets", help="provider secrets (encrypted with Fernet)")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    rotate = secrets_commands.add_parser(
        "rotate",
        help="re-encrypt every provider secret from the current key to a new one (all or nothing)",
    )
    rotate.add_argument(
        "--new-key-file",
        type=Path,
        metavar="PATH",
        help="a file (mode 0600) holding the new key (default: $SA01_CRYPTO_NEW_FERNET_KEY; the "
        "embedded mode generates one when neither is given)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentcluster", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_lifecycle(commands)
    _add_chat(commands)
    _add_keys(commands)
    _add_secrets(commands)
    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="migrate the database to the newest schema")
    db_commands.add_parser("current", help="show the schema revision (exit 1 if not at head)")
    commands.add_parser("check", help="probe every configured dependency")
    commands.add_parser("relay", help="relay the outbox to Kafka until interrupted")
    commands.add_parser("config", help="print the effective settings (secrets masked)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (exits with code 2 and a usage message when it is wrong)."""
    return _parser().parse_args(argv)


def _fail(message: str, code: int) -> int:
    print(f"agentcluster: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentcluster`` command."""
    args = parse_args(argv)
    try:
        settings = load_settings()
        # The client commands print their own output; INFO logs (every httpx request) would bury it.
        level = settings.log_level if args.command in _SERVER_COMMANDS else "WARNING"
        redact.remember_settings(settings)
        logging.basicConfig(
            level=level,
            format="%(levelname)s %(name)s: %(message)s",
            handlers=[redact.scrub_handler(logging.StreamHandler())],
        )
        if "url" in args:
            args.url = resolve_url(args.url, settings)
        return _HANDLERS[args.command](args, settings)
    except ConnectionFailed as exc:
        where = getattr(args, "url", None) or "the gateway"
        reason = exc.message.removeprefix(f"{exc.dependency}: ")
        return _fail(f"gateway not reachable at {where} ({reason})", 1)
    except (ConfigError, UserError) as exc:
        code = 1 if isinstance(exc, ApiError) else 2
        return _fail(exc.message, code)
    except AgentClusterError as exc:
        return _fail(exc.message, 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
