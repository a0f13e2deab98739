"""The transactional outbox as the relay reads it, on SQLAlchemy (the
:class:`~agentcluster.store.OutboxSource` and :class:`~agentcluster.store.OutboxBacklog` roles)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update

from agentcluster.domain import OutboxRecord
from agentcluster.store._sql_base import SqlStoreBase
from agentcluster.store.models import EventRow, utcnow

__all__ = ["SqlOutbox"]


class SqlOutbox(SqlStoreBase):
    """Unpublished events, marking them published, and the backlog's size."""

    async def fetch_unpublished(self, limit: int) -> list[OutboxRecord]:
        """Committed events not yet relayed, in commit-compatible order (per session: by seq)."""
        query = (
            select(
                EventRow.position,
                EventRow.event_id,
                EventRow.session_id,
                EventRow.seq,
                EventRow.payload,
            )
            .where(EventRow.published_at.is_(None))
            .order_by(EventRow.position)
            .limit(limit)
        )
        async with self.transaction() as connection:
            rows = (await connection.execute(query)).all()
        return [
            OutboxRecord(
                position=row.position,
                event_id=row.event_id,
                session_id=row.session_id,
                seq=row.seq,
                payload=row.payload.encode(),
            )
            for row in rows
        ]

    async def mark_published(self, positions: Sequence[int]) -> None:
        if not positions:
            return
        async with self.transaction() as connection:
            for start in range(0, len(positions), 500):
                chunk = list(positions[start : start + 500])
                await connection.execute(
                    update(EventRow)
                    .where(EventRow.position.in_(chunk))
                    .values(published_at=utcnow())
                )

    async def outbox_lag(self) -> int:
        """How many committed events wait for the relay."""
        async with self.transaction() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(EventRow).where(EventRow.published_at.is_(None))
            )
        return int(count or 0)
