"""Shared test setup: offline library settings, the local services, a bounded ``eventually``.

Fixtures both the integration and the end-to-end tests use live here (or in ``tests/support``),
so neither tier's conftest imports the other's.

Integration tests need the services of ``make deps-up``; their endpoints come from the environment
or, when unset, from ``.data/services.env`` written by ``deps-up``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from agentcluster.testing.fake_llm import FakeLLM, Script
from tests.support.postgres import fresh_database

ROOT = Path(__file__).resolve().parent.parent
SERVICES_ENV = ROOT / ".data" / "services.env"

# Offline facts: no cost-map download, no telemetry, tiktoken from LiteLLM's bundled encodings.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "false")
os.environ.setdefault("BROWSER_USE_CLOUD_SYNC", "false")
os.environ.setdefault("BROWSER_USE_VERSION_CHECK", "false")


def _read_services_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if not SERVICES_ENV.exists():
        return values
    for line in SERVICES_ENV.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, _, raw = line.removeprefix("export ").partition("=")
        parts = shlex.split(raw)
        values[key] = parts[0] if len(parts) == 1 else " ".join(parts)
    return values


SERVICES = {
    **_read_services_env(),
    **{k: v for k, v in os.environ.items() if k.startswith("SA01_")},
}


def service(name: str) -> str:
    """An endpoint of the local services, or a clear failure telling how to start them."""
    value = SERVICES.get(name)
    if not value:
        pytest.fail(f"{name} is not set: start the services with `make deps-up`", pytrace=False)
    return value


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test run, dropped afterwards."""
    with fresh_database(service("SA01_DB_DSN")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the whole test session (started on first use)."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"enable_worker_prestart": True},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    """The scripted OpenAI-compatible server on loopback; tests add rules keyed on unique text."""
    server = FakeLLM(Script()).start_in_thread()
    yield server
    server.stop()


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition not met",
) -> T:
    """Await ``probe`` until it returns a truthy value or ``timeout`` passes (then fail)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"{message} within {timeout}s (last value: {last!r})")


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    """Our packages' loggers as they were, after a test that ran configure_logging (it changes
    process-wide handlers, levels and propagation)."""
    loggers = [logging.getLogger(name) for name in ("agentcluster", "actors", "deployments")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
