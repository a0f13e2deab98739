"""Open streams hold a tenant's stream slot for exactly as long as their response runs.

The SSE routes take a :class:`~agentcluster.limits.StreamLease` before the response starts (so a
tenant past ``max_open_streams`` gets a 429 problem at once) and hand it to a
:class:`LeasedEventSource`, which releases it when the response ends for any reason: the stream
finished, it failed, or the client went away (Serve then cancels the request in the replica).
Tying the release to the response, not to the event generator, does not depend on when a
half-consumed generator is garbage-collected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from agentcluster.limits import StreamLease

__all__ = ["RELEASE_TIMEOUT_S", "LeasedEventSource", "release_on_error"]

RELEASE_TIMEOUT_S = 5.0
"""Bound on releasing a slot after a response (past it the lease expires by itself)."""


async def release_shielded(lease: StreamLease) -> None:
    """Release ``lease`` even inside a cancelled request (the slot must not wait for its lease
    to expire because the client left), bounded by RELEASE_TIMEOUT_S."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT_S):
        await lease.release()


@asynccontextmanager
async def release_on_error(lease: StreamLease) -> AsyncIterator[StreamLease]:
    """Release ``lease`` if the block fails; on success the block hands it to a response."""
    try:
        yield lease
    except BaseException:
        await release_shielded(lease)
        raise


class LeasedEventSource(EventSourceResponse):
    """An :class:`EventSourceResponse` that holds ``lease`` until the response has ended."""

    def __init__(self, content: Any, lease: StreamLease, **options: Any) -> None:
        super().__init__(content, **options)
        self.lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await release_shielded(self.lease)
