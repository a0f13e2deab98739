"""Webhooks: a turn's outcome POSTed to the URL its session or its message names.

Delivery is at least once and survives any process: the delivery is written in the same
transaction as the turn's outcome (``webhook_deliveries``), and one elected dispatcher (the
holder of a lease in the store; every host controller runs one) sends what is due, retrying with
exponential backoff for ``SA01_WEBHOOKS_RETRY_FOR_S``. Each attempt is an event of the session
(``webhook.delivered``, ``webhook.failed``).

The target is checked like ``http_fetch``'s: the URL is read as a browser reads it, its host
resolved once and every address decided by the tenant's network policy (tool ``webhook``, the
session's agent) before any connection, and the connection goes to a checked address only. A
target the policy denies is never connected to: the delivery fails at once, finally.

Requests are signed as the Standard Webhooks specification says (standardwebhooks.com):
``webhook-id`` (the delivery's id, the same on every retry), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over ``{id}.{timestamp}.{body}``
with the tenant's secret (``whsec_`` + base64 key; ``GET /v1/webhooks/secret``, rotated with
``POST /v1/webhooks/secret/rotate``). :func:`verify` is the receiving side's check.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx

from agentcluster.config import WebhookSettings
from agentcluster.domain import WebhookDelivery
from agentcluster.errors import AgentClusterError, ToolError
from agentcluster.store import ScheduleStore, SessionStore, WebhookStore
from agentcluster.tools import SsrfGuard, parse_web_url

__all__ = ["LEASE", "WebhookDispatcher", "sign", "verify", "webhook_url_problem"]

log = logging.getLogger(__name__)

LEASE = "webhook-dispatcher"
TOOL = "webhook"
"""The tool name the network policy sees for webhook targets."""
_TOLERANCE_S = 300
_DEFAULT_PORT = {"http": 80, "https": 443}

TransportFactory = Callable[[], httpx.AsyncBaseTransport]


class DispatchStore(WebhookStore, ScheduleStore, SessionStore, Protocol):
    """What the dispatcher uses: deliveries, the lease, and sessions (their agent)."""


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> bool:
    """Whether a received request carries a valid signature of ``secret`` made within five
    minutes of ``now`` (the receiving side's check; header names in lower case)."""
    try:
        timestamp = int(headers["webhook-timestamp"])
        delivery_id = headers["webhook-id"]
        signatures = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > _TOLERANCE_S:
        return False
    expected = sign(secret, delivery_id, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in signatures)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook (not an absolute http(s) URL read the same way by every
    parser), or None."""
    try:
        parse_web_url(url)
    except ToolError as exc:
        return exc.message
    return None


def _default_transport() -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(retries=0)


class WebhookDispatcher:
    """Sends due deliveries while it holds the dispatcher lease.

    Args:
        store: deliveries, the lease, sessions.
        guard: resolves and checks each target (the tenant's network policy).
        settings: timing and retries.
        holder: this dispatcher's name in the lease (unique per process).
        transport_factory: builds the httpx transport of each attempt.
        on_event: told the session id after each attempt's event is committed (the cluster
            lets the session's live streams show it).
    """

    def __init__(
        self,
        store: DispatchStore,
        guard: SsrfGuard,
        settings: WebhookSettings,
        holder: str,
        transport_factory: TransportFactory = _default_transport,
        on_event: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._on_event = on_event
        self._store = store
        self._guard = guard
        self._settings = settings
        self._holder = holder
        self._transport_factory = transport_factory

    async def tick(self, now: datetime | None = None) -> int:
        """Attempt every due delivery (concurrently) if this dispatcher holds the lease;
        returns how many were attempted."""
        now = now or datetime.now(UTC)
        if not await self._store.acquire_lease(LEASE, self._holder, self._settings.lease_s):
            return 0
        due = await self._store.due_webhook_deliveries(now)
        await asyncio.gather(*(self._attempt(delivery, now) for delivery in due))
        return len(due)

    async def _attempt(self, delivery: WebhookDelivery, now: datetime) -> None:
        try:
            status = await self._post(delivery)
        except ToolError as exc:  # the target is refused: never connected to, never retried
            await self._record(delivery, None, exc.message, retry_at=None)
            return
        except (httpx.HTTPError, OSError, AgentClusterError) as exc:
            await self._record(delivery, None, _describe(exc), self._retry_at(delivery, now))
            return
        except Exception as exc:  # one broken delivery must not stop the others: retried
            log.exception("webhook delivery %s failed unexpectedly", delivery.delivery_id)
            await self._record(delivery, None, _describe(exc), self._retry_at(delivery, now))
            return
        if 200 <= status < 300:
            await self._record(delivery, status, None, retry_at=None)
        else:
            error = f"the webhook answered {status}"
            await self._record(delivery, status, error, self._retry_at(delivery, now))

    def _retry_at(self, delivery: WebhookDelivery, now: datetime) -> datetime | None:
        wait = min(2.0**delivery.attempts, self._settings.backoff_max_s)
        retry_at = now + timedelta(seconds=wait)
        give_up = delivery.created_at + timedelta(seconds=self._settings.retry_for_s)
        return retry_at if retry_at <= give_up else None

    async def _record(
        self,
        delivery: WebhookDelivery,
        status: int | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        await self._store.record_webhook_attempt(
            delivery, status_code=status, error=error, retry_at=retry_at
        )
        if self._on_event is not None:
            await self._on_event(delivery.session_id)
        if error is not None:
            log.info("webhook %s of turn %s: %s", delivery.url, delivery.turn_id, error)

    async def _post(self, delivery: WebhookDelivery) -> int:
        url = parse_web_url(delivery.url)
        session = await self._store.get_session(delivery.tenant_id, delivery.session_id)
        target = await self._guard.check(
            scheme=url.scheme,
            host=url.host,
            port=url.port,
            tenant_id=delivery.tenant_id,
            agent=session.agent,
            tool=TOOL,
        )
        body = delivery.payload.encode()
        timestamp = int(time.time())
        secret = await self._store.webhook_secret(delivery.tenant_id)
        headers = {
            "content-type": "application/json",
            "user-agent": "agentcluster-webhooks/1",
            "webhook-id": delivery.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, delivery.delivery_id, timestamp, body),
        }
        failures: list[str] = []
        for ip in target.addresses:  # only checked addresses: no second resolution
            try:
                return await self._post_to(
                    url.scheme, url.host, url.port, url.rest, ip, headers, body
                )
            except httpx.ConnectError as exc:
                failures.append(f"{ip}: {exc or type(exc).__name__}")
        raise httpx.ConnectError(f"cannot connect to {url.host}: {'; '.join(failures)}")

    async def _post_to(
        self,
        scheme: str,
        host: str,
        port: int,
        rest: str,
        ip: object,
        headers: dict[str, str],
        body: bytes,
    ) -> int:
        literal = f"[{ip}]" if ":" in str(ip) else str(ip)
        request = httpx.Request(
            "POST",
            f"{scheme}://{literal}:{port}{rest}",
            headers={
                **headers,
                "host": host if port == _DEFAULT_PORT[scheme] else f"{host}:{port}",
            },
            content=body,
            extensions={"sni_hostname": host} if scheme == "https" else {},
        )
        async with httpx.AsyncClient(
            transport=self._transport_factory(),
            trust_env=False,
            follow_redirects=False,  # a redirect is not delivery: the target answered 3xx
            timeout=self._settings.timeout_s,
        ) as client:
            response = await client.send(request)
            await response.aclose()
            return response.status_code


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "the webhook did not answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
