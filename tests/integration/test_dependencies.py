"""An unreachable dependency fails fast and the error names it (closed loopback ports)."""

from __future__ import annotations

import socket
import time

import pytest

from agentcluster.config import load_settings
from agentcluster.errors import DependencyUnavailable
from agentcluster.eventlog import ensure_topics
from agentcluster.health import probe_all, require_all
from agentcluster.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _closed_port() -> int:
    """A loopback port with no listener (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_each_unreachable_dependency_is_named() -> None:
    settings = load_settings(
        {
            "db": {"dsn": f"postgresql://u:p@127.0.0.1:{_closed_port()}/db"},
            "kafka": {"bootstrap_servers": f"127.0.0.1:{_closed_port()}"},
            "redis": {"url": f"redis://127.0.0.1:{_closed_port()}/0"},
            "policy": {"url": f"http://127.0.0.1:{_closed_port()}"},
        }
    )
    started = time.monotonic()
    statuses = {status.name: status for status in await probe_all(settings, timeout_s=2)}
    assert time.monotonic() - started < 30  # bounded, not a hang (generous: not a benchmark)
    assert {name: s.state for name, s in statuses.items()} == {
        "postgresql": "down",
        "kafka": "down",
        "redis": "down",
        "opa": "down",
    }
    for name, status in statuses.items():
        assert status.detail.startswith(f"{name}: "), status.detail
    with pytest.raises(DependencyUnavailable) as caught:
        await require_all(settings, timeout_s=2)
    assert caught.value.dependency in statuses


async def test_the_store_and_the_event_log_name_themselves() -> None:
    with pytest.raises(DependencyUnavailable, match=r"^postgresql: cannot reach") as caught:
        await open_store(f"postgresql://u:p@127.0.0.1:{_closed_port()}/db", connect_timeout_s=2)
    assert caught.value.dependency == "postgresql"
    with pytest.raises(DependencyUnavailable, match=r"^kafka: cannot reach") as kafka:
        await ensure_topics(f"127.0.0.1:{_closed_port()}", [], timeout_s=2)
    assert kafka.value.dependency == "kafka"


async def test_embedded_defaults_report_their_stand_ins(tmp_path: object) -> None:
    settings = load_settings(
        {
            "db": {"dsn": "sqlite:///" + str(tmp_path) + "/x.db"},
            "kafka": {"bootstrap_servers": None},
            "redis": {"url": None},
            "policy": {"url": None},
        }
    )
    statuses = {status.name: status.state for status in await probe_all(settings)}
    assert statuses == {"sqlite": "up", "kafka": "embedded", "redis": "embedded", "opa": "embedded"}
