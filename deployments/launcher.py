"""Start agentcluster on this machine: a local Ray, the Serve gateway, and, when no LLM is
configured, the bundled fake LLM in a clearly labelled demo mode.

``agentcluster serve`` runs this module as its process (``python -m deployments.launcher
[--address ADDRESS]``): the CLI belongs to the core, which never imports the Ray edge.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve

from actors.inbound import start_inbound
from actors.relay import start_relay
from actors.session import RaySessionRouter
from agentcluster import redact
from agentcluster.bootstrap import open_state_store
from agentcluster.config import Settings, load_settings
from agentcluster.datadir import secure_data_dir, write_private_text
from agentcluster.errors import AgentClusterError, ConfigError, UserError
from agentcluster.testing.fake_llm import FakeLLM
from deployments.gateway import build_gateway, start_proxy

__all__ = ["Launch", "main", "prepare_demo", "serve_forever"]

DEMO_TENANT = "demo"


@dataclass
class Launch:
    """What was started, for the banner."""

    settings: Settings
    url: str
    demo_llm_url: str | None
    api_key: str | None
    admin_key: str | None


def _demo_key_file(settings: Settings) -> Path:
    return settings.data_dir / "demo-api-key"


async def _demo_api_key(settings: Settings) -> str:
    """The demo tenant's API key: created once, kept under the data dir (git-ignored)."""
    path = _demo_key_file(settings)
    store = await open_state_store(settings)
    try:
        if path.exists():
            secret = path.read_text().strip()
            if await store.authenticate(secret) is not None:
                return secret
        tenant = await store.create_tenant(DEMO_TENANT)
        _key, secret = await store.create_api_key(tenant.tenant_id, "demo")
    finally:
        await store.close()
    write_private_text(path, secret + "\n")
    return secret


def prepare_demo(settings: Settings) -> tuple[Settings, str | None, FakeLLM | None]:
    """With no LLM configured, start the fake LLM and point the settings at it.

    Returns the (possibly updated) settings, the fake LLM's URL and its server handle.
    """
    if settings.llm.api_base is not None:
        return settings, None, None
    server = FakeLLM(host="127.0.0.1", models=("demo",)).start_in_thread()
    llm = settings.llm.model_copy(update={"api_base": server.base_url, "api_key": "demo"})
    return settings.model_copy(update={"llm": llm}), server.base_url, server


def serve_forever(settings: Settings, *, ray_address: str = "local") -> None:
    """Start Ray and the gateway, print how to use them, and block until interrupted."""
    secure_data_dir(settings)
    settings, demo_url, demo_server = prepare_demo(settings)
    api_key = asyncio.run(_demo_api_key(settings)) if demo_url else None
    ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    try:
        host, port = settings.gateway.host, settings.gateway.port
        start_proxy(settings, host, port)
        serve.run(build_gateway(settings), name="agentcluster", route_prefix="/")
        _start_kafka_workers(settings)
        launch = Launch(
            settings=settings,
            url=f"http://{host}:{port}",
            demo_llm_url=demo_url,
            api_key=api_key,
            admin_key=settings.auth.admin_key,
        )
        print(banner(launch), flush=True)
        _wait_for_signal()
    finally:
        serve.shutdown()  # no new requests; then hand the running turns over before Ray goes
        _drain_hosts(settings)
        ray.shutdown()
        if demo_server is not None:
            demo_server.stop()


def _drain_hosts(settings: Settings) -> None:
    """Drain the session hosts (``agentcluster down``, Ctrl-C): running turns are left open and
    owned by hosts that are gone, so the host controller resumes them on the next start."""
    try:
        handed_over = asyncio.run(RaySessionRouter(settings).drain_all())
    except Exception as exc:  # never block stopping: turns left running resume anyway
        print(f"agentcluster: draining the session hosts failed: {exc}", flush=True)
        return
    if handed_over:
        print(f"agentcluster: {handed_over} running turn(s) handed over", flush=True)


def _start_kafka_workers(settings: Settings) -> None:
    """With Kafka configured: the outbox relay and the inbound consumer, one actor each."""
    if settings.kafka.bootstrap_servers is None:
        return
    start_relay(settings)
    try:
        asyncio.run(start_inbound(settings))
    except AgentClusterError as exc:
        # The actor stays and keeps trying; the operator should know why it is not consuming yet.
        print(f"agentcluster: Kafka inbound not consuming yet: {exc.message}", flush=True)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def banner(launch: Launch) -> str:
    """How to talk to the running cluster."""
    lines = [
        "",
        f"agentcluster is up: {launch.url}  (API docs: {launch.url}/docs)",
        f"  state store: {launch.settings.db_dsn.split('@')[-1]}",
    ]
    if launch.demo_llm_url:
        lines += [
            f"  DEMO MODE: no LLM configured; answers come from the bundled fake LLM at "
            f"{launch.demo_llm_url}",
            "  (set SA01_LLM_API_BASE / SA01_LLM_API_KEY, or a provider prefix, for a real model)",
        ]
    key = launch.api_key or "<your api key>"
    lines += [
        "",
        f"  export AGENTCLUSTER_URL={launch.url} AGENTCLUSTER_API_KEY={key}",
        '  curl -s -X POST $AGENTCLUSTER_URL/v1/sessions -H "Authorization: Bearer '
        '$AGENTCLUSTER_API_KEY" -H \'Content-Type: application/json\' -d \'{"agent": "default"}\'',
        '  curl -s -X POST "$AGENTCLUSTER_URL/v1/sessions/<session_id>/messages?wait=true" '
        "-H \"Authorization: Bearer $AGENTCLUSTER_API_KEY\" -H 'Content-Type: application/json' "
        '-d \'{"content": "what is 6 * 7?"}\'',
        "",
        "  Ctrl-C stops it.",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentcluster serve",
        description="Run Ray and the gateway on this machine until interrupted.",
    )
    parser.add_argument(
        "--address", default="local", help="Ray address: 'local' starts a new Ray (default)"
    )
    return parser


def _configure_logging(settings: Settings) -> None:
    # As the CLI's server commands do: the settings' level, secrets scrubbed from every record.
    redact.remember_settings(settings)
    logging.basicConfig(
        level=settings.log_level,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[redact.scrub_handler(logging.StreamHandler())],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m deployments.launcher`` (what ``agentcluster serve`` runs).

    Returns:
        0 once stopped; 2 for a configuration or usage error, 1 for another failure, 130 when
        interrupted before the cluster was up (each error printed as one line).
    """
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        _configure_logging(settings)
        serve_forever(settings, ray_address=args.address)
    except (ConfigError, UserError) as exc:
        print(f"agentcluster: {exc.message}", file=sys.stderr)
        return 2
    except AgentClusterError as exc:
        print(f"agentcluster: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
