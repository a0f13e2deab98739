"""The gateway's short-lived cache of callers and policy decisions: concurrent lookups of one
key share one load (a burst of streams opened by one tenant asks the store and the policy once),
a caller that goes away does not cancel the others' load, and refused values are not kept."""

from __future__ import annotations

import asyncio

import pytest

from agentcluster.gateway._service import _Recent


class _Loader:
    """Counts its loads; each waits until released."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        await self.release.wait()
        return self.value


async def test_concurrent_lookups_of_one_key_share_one_load() -> None:
    cache: _Recent[str, str] = _Recent(60)
    loader = _Loader("caller")
    lookups = [asyncio.create_task(cache.load("k", loader, keep=bool)) for _ in range(50)]
    await asyncio.sleep(0)
    loader.release.set()
    assert await asyncio.gather(*lookups) == ["caller"] * 50
    assert loader.calls == 1
    assert await cache.load("k", loader, keep=bool) == "caller"  # remembered
    assert loader.calls == 1


async def test_a_caller_that_goes_away_does_not_cancel_the_others_load() -> None:
    cache: _Recent[str, str] = _Recent(60)
    loader = _Loader("decision")
    first = asyncio.create_task(cache.load("k", loader, keep=bool))
    second = asyncio.create_task(cache.load("k", loader, keep=bool))
    await asyncio.sleep(0)
    first.cancel()
    loader.release.set()
    assert await second == "decision"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert loader.calls == 1


async def test_a_refused_value_or_a_failure_is_asked_again() -> None:
    cache: _Recent[str, str] = _Recent(60)
    outage = _Loader("")
    outage.release.set()
    assert await cache.load("k", outage, keep=bool) == ""
    assert await cache.load("k", outage, keep=bool) == ""
    assert outage.calls == 2  # an outage is never remembered

    async def broken() -> str:
        raise ConnectionError("store down")

    with pytest.raises(ConnectionError):
        await cache.load("k", broken, keep=bool)
    working = _Loader("back")
    working.release.set()
    assert await cache.load("k", working, keep=bool) == "back"


async def test_nothing_is_kept_when_the_ttl_is_zero() -> None:
    cache: _Recent[str, str] = _Recent(0)
    loader = _Loader("fresh")
    loader.release.set()
    await cache.load("k", loader, keep=bool)
    await cache.load("k", loader, keep=bool)
    assert loader.calls == 2
