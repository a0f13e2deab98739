"""Node autoscaling with Ray's fake multinode provider and cluster/fake-multinode.yaml: demand for
browser actors adds browser worker nodes, and once the browsers are gone the idle nodes go away.

The demand is the real one: the browser pool of :mod:`actors.browser` with
SA01_BROWSER_RESOURCE=browser, whose members (BrowserActor, each starting its Chromium) ask for
resources={"browser": 1}, which only browser_worker nodes offer. Releasing the leases is all the
test does to scale down: the pool stops its idle browsers by itself (scale_down_after_s, 30 s), and
the autoscaler removes the nodes idle for idle_timeout_minutes (15 s).

The cluster is the test's own (free loopback ports, its own temp dir and token; see
tests/cluster/_fake_cluster.py), every one of its sockets listens on 127.0.0.1, and teardown kills
only its processes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.cluster._fake_cluster import Driver, FakeCluster, NodeView
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BROWSERS = 2  # browser_worker max_workers in the config, one browser per node
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
SCALE_UP_TIMEOUT_S = 120.0  # nodes ~5 s each, Chromium 2-7 s
SCALE_DOWN_TIMEOUT_S = 150.0  # pool scale-down 30 s + idle timeout 15 s + health checks


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    started = FakeCluster.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def driver(cluster: FakeCluster) -> Iterator[Driver]:
    settings = {
        "SA01_BROWSER_RESOURCE": "browser",
        "SA01_BROWSER_POOL_MIN": "0",
        "SA01_BROWSER_POOL_MAX": str(BROWSERS),
        "SA01_RUNTIME_NAMESPACE": f"fake-{uuid.uuid4().hex[:8]}",
    }
    process = Driver(cluster, settings)
    try:
        yield process
    finally:
        process.close()


def _browser_nodes(nodes: list[NodeView]) -> list[NodeView]:
    return [node for node in nodes if node.alive and node.browsers > 0]


def _nodes_where(
    driver: Driver, condition: Callable[[list[NodeView]], bool]
) -> Callable[[], Awaitable[list[NodeView]]]:
    """A probe for ``eventually``: the nodes once they meet ``condition`` (else nothing)."""

    async def probe() -> list[NodeView]:
        nodes = await asyncio.to_thread(driver.nodes)
        return nodes if condition(nodes) else []

    return probe


async def test_browser_demand_adds_nodes_and_idle_nodes_go_away(
    cluster: FakeCluster, driver: Driver
) -> None:
    nodes = await asyncio.to_thread(driver.nodes)
    assert [node.alive for node in nodes] == [True], "only the head at the start"
    (head,) = nodes
    assert head.browsers == 0, "the head must not offer browsers"

    started = time.monotonic()
    members = await asyncio.to_thread(driver.lease, BROWSERS, SCALE_UP_TIMEOUT_S)
    up_s = time.monotonic() - started
    assert len(set(members)) == BROWSERS
    nodes = await asyncio.to_thread(driver.nodes)
    browser_nodes = _browser_nodes(nodes)
    assert len(browser_nodes) == BROWSERS, f"{nodes}\n{cluster.monitor_log()}"
    assert {node.address for node in nodes} == {"127.0.0.1"}, nodes
    off_loopback = {item for item in cluster.listeners() if item[0] not in LOOPBACK}
    assert not off_loopback, f"listening beyond loopback: {off_loopback}"

    started = time.monotonic()
    assert await asyncio.to_thread(driver.release) == BROWSERS
    added = {node.node_id for node in browser_nodes}
    gone = await eventually(
        _nodes_where(driver, lambda now: not any(n.alive for n in now if n.node_id in added)),
        timeout=SCALE_DOWN_TIMEOUT_S,
        interval=1.0,
        message=f"idle browser nodes removed\n{cluster.monitor_log()}",
    )
    down_s = time.monotonic() - started
    assert [node.node_id for node in gone if node.alive] == [head.node_id], "head left alone"
    stats = await asyncio.to_thread(driver.pool_stats)
    assert stats["size"] == 0, stats
    print(f"scale up (lease {BROWSERS} browsers) {up_s:.1f}s; scale down {down_s:.1f}s")
