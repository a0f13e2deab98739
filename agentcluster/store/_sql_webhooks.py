"""Webhook deliveries and signing secrets on SQLAlchemy (the
:class:`~agentcluster.store.WebhookStore` role)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from agentcluster import events as ev
from agentcluster.domain import WebhookDelivery
from agentcluster.errors import NotFoundError
from agentcluster.store._sql_base import require_tenant
from agentcluster.store._sql_writer import SqlWriting
from agentcluster.store.models import WebhookDeliveryRow, WebhookSecretRow, utcnow

__all__ = ["SqlWebhooks"]

SECRET_PREFIX = "whsec_"


def _delivery_of(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=row.delivery_id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        turn_id=row.turn_id,
        url=row.url,
        payload=row.payload,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
    )


def _new_secret() -> str:
    """``whsec_`` + the base64 of 32 random bytes (the Standard Webhooks form)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class SqlWebhooks(SqlWriting):
    """Pending deliveries, their attempts (each an event of the session), tenants' secrets."""

    async def due_webhook_deliveries(
        self, now: datetime, *, limit: int = 50
    ) -> list[WebhookDelivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        async with self.transaction() as connection:
            rows = await connection.execute(
                select(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.status == "pending",
                    WebhookDeliveryRow.next_attempt_at <= now,
                )
                .order_by(WebhookDeliveryRow.next_attempt_at)
                .limit(limit)
            )
            return [_delivery_of(row) for row in rows]

    async def record_webhook_attempt(
        self,
        delivery: WebhookDelivery,
        *,
        status_code: int | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        """Record one attempt and its event (``webhook.delivered`` when ``error`` is None,
        else ``webhook.failed``, final unless ``retry_at``), in one transaction; an attempt
        another dispatcher recorded first (the row moved on) writes nothing."""
        attempts = delivery.attempts + 1
        ids = {"tenant_id": delivery.tenant_id, "session_id": delivery.session_id}
        event: ev.Event
        if error is None:
            status = "delivered"
            event = ev.WebhookDelivered(
                **ids,
                turn_id=delivery.turn_id,
                url=delivery.url,
                status_code=status_code or 0,
                attempts=attempts,
            )
        else:
            status = "pending" if retry_at is not None else "failed"
            event = ev.WebhookFailed(
                **ids,
                turn_id=delivery.turn_id,
                url=delivery.url,
                error=error,
                attempts=attempts,
                final=retry_at is None,
            )
        async with self.writer(delivery.session_id) as writer:
            moved = await writer.connection.execute(
                update(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.delivery_id == delivery.delivery_id,
                    WebhookDeliveryRow.attempts == delivery.attempts,
                    WebhookDeliveryRow.status == "pending",
                )
                .values(
                    status=status,
                    attempts=attempts,
                    next_attempt_at=retry_at or delivery.next_attempt_at,
                )
            )
            if moved.rowcount:
                await writer.emit(event)

    async def webhook_secret(self, tenant_id: str) -> str:
        """The tenant's signing secret (made on first use).

        Raises:
            NotFoundError: no such tenant.
        """
        async with self.transaction() as connection:
            found = await connection.scalar(
                select(WebhookSecretRow.secret).where(WebhookSecretRow.tenant_id == tenant_id)
            )
            if found is not None:
                return str(found)
            await require_tenant(connection, tenant_id)
        try:
            async with self.transaction() as connection:
                secret = _new_secret()
                await connection.execute(
                    insert(WebhookSecretRow).values(
                        tenant_id=tenant_id, secret=secret, created_at=utcnow()
                    )
                )
                return secret
        except IntegrityError:  # made concurrently: that one counts
            return await self.webhook_secret(tenant_id)

    async def rotate_webhook_secret(self, tenant_id: str) -> str:
        """Replace the tenant's signing secret; deliveries from now on are signed with the new
        one. Returns it."""
        await self.webhook_secret(tenant_id)  # exists from here on
        secret = _new_secret()
        async with self.transaction() as connection:
            changed = await connection.execute(
                update(WebhookSecretRow)
                .where(WebhookSecretRow.tenant_id == tenant_id)
                .values(secret=secret, created_at=utcnow())
            )
        if not changed.rowcount:
            raise NotFoundError(f"tenant {tenant_id} not found")
        return secret
