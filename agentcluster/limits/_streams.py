"""Open streams per tenant: a :class:`StreamLease` holds one slot while a stream or a wait is open.

Why slots and not a request rate: an SSE stream or a ``?wait=true`` call holds a gateway replica's
request slot (Serve's ``max_ongoing_requests``) for as long as it is open. Requests past that
queue in Serve's proxy with no answer, so a tenant opening many streams could starve everyone.
Each tenant therefore holds at most ``max_open_streams`` of them; past it the gateway answers at
once (:class:`~agentcluster.errors.TooManyStreams`, 429).

A slot is leased (``SA01_LIMITS_STREAM_LEASE_S``) and renewed every third of the lease while its
stream is open, so the slots of a replica that crashed free themselves; closing the stream (the
client disconnecting included) releases it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from types import TracebackType

from agentcluster.errors import AgentClusterError, TooManyStreams
from agentcluster.limits._ports import StreamSlots

__all__ = ["STREAM_RETRY_AFTER_S", "StreamLease", "open_stream_lease"]

log = logging.getLogger(__name__)

STREAM_RETRY_AFTER_S = 5
"""``Retry-After`` of a refused stream: slots free when other streams close, which no one can
predict; a few seconds keeps a retrying client from hammering the gateway."""


class StreamLease:
    """One open stream's slot (none when the tenant has no stream limit): renewed in the
    background while held, released once by :meth:`release` or by leaving ``async with``.

    Args:
        slots: where the slot is held (None: an unlimited tenant, nothing held).
        tenant_id: the slot's tenant.
        slot_id: the slot's id in ``slots``.
        lease_s: the lease, renewed every third of it.
    """

    def __init__(
        self, slots: StreamSlots | None, tenant_id: str, slot_id: str, lease_s: float
    ) -> None:
        self.tenant_id = tenant_id
        self.slot_id = slot_id
        self._slots = slots
        self._lease_s = lease_s
        self._renewing: asyncio.Task[None] | None = None
        self._on_release: list[Callable[[], None]] = []
        self._released = False
        if slots is not None:
            self._renewing = asyncio.create_task(self._renew_forever(slots))

    @classmethod
    def unlimited(cls, tenant_id: str) -> StreamLease:
        """A lease that holds nothing (the tenant's streams are not limited)."""
        return cls(None, tenant_id, "", 0.0)

    @property
    def held(self) -> bool:
        """Whether a slot is held (False when unlimited or released)."""
        return self._slots is not None

    async def _renew_forever(self, slots: StreamSlots) -> None:
        interval = self._lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await slots.renew(self.tenant_id, self.slot_id, self._lease_s)
            except AgentClusterError as exc:
                # The stream goes on; its slot may expire meanwhile (counted again at the next
                # renewal that gets through).
                log.warning("stream slot of tenant %s not renewed: %s", self.tenant_id, exc)

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the lease is released (e.g. a replica's own count)."""
        self._on_release.append(callback)

    async def release(self) -> None:
        """Free the slot (idempotent). A failure is logged, not raised: the lease expires."""
        if not self._released:
            self._released = True
            for callback in self._on_release:
                callback()
        slots, self._slots = self._slots, None
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if slots is None:
            return
        try:
            await slots.release(self.tenant_id, self.slot_id)
        except AgentClusterError as exc:
            log.warning(
                "stream slot of tenant %s not released (it expires): %s", self.tenant_id, exc
            )

    async def __aenter__(self) -> StreamLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()


async def open_stream_lease(
    slots: StreamSlots, tenant_id: str, limit: int, lease_s: float
) -> StreamLease:
    """Take one of the tenant's ``limit`` stream slots (``0``: unlimited, nothing taken).

    Raises:
        TooManyStreams: the tenant holds ``limit`` open streams already.
        InfrastructureError: the slots cannot be counted (never silently unlimited).
    """
    if not limit:
        return StreamLease.unlimited(tenant_id)
    slot_id = uuid.uuid4().hex
    decision = await slots.acquire(tenant_id, slot_id, limit, lease_s)
    if not decision.acquired:
        raise TooManyStreams(
            f"too many open streams: the tenant holds {decision.open_streams} of its "
            f"{limit} concurrent streams and waits; close one or retry after "
            f"{STREAM_RETRY_AFTER_S} s",
            retry_after=STREAM_RETRY_AFTER_S,
            max_open_streams=limit,
            open_streams=decision.open_streams,
        )
    return StreamLease(slots, tenant_id, slot_id, lease_s)
