"""Schedules and the ticker's lease on SQLAlchemy (the :class:`~agentcluster.store.ScheduleStore`
role)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from agentcluster.domain import MissedTicks, Schedule
from agentcluster.errors import ConflictError, NotFoundError
from agentcluster.store._sql_base import SqlStoreBase, new_id
from agentcluster.store.models import LeaseRow, ScheduleRow, SessionRow, utcnow

__all__ = ["SqlSchedules"]


def schedule_of(row: Any) -> Schedule:
    return Schedule(
        schedule_id=row.schedule_id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        cron=row.cron,
        timezone=row.timezone,
        content=row.content,
        missed=row.missed,
        next_fire_at=row.next_fire_at,
        last_fired_at=row.last_fired_at,
        created_at=row.created_at,
    )


class SqlSchedules(SqlStoreBase):
    """A session's schedules, the due ones, and the lease that elects one ticker."""

    async def create_schedule(
        self,
        tenant_id: str,
        session_id: str,
        *,
        cron: str,
        timezone: str,
        content: str,
        missed: MissedTicks,
        next_fire_at: datetime,
        max_per_session: int,
    ) -> Schedule:
        """Add a schedule to an active session of the tenant.

        Raises:
            NotFoundError: no such session for this tenant.
            ConflictError: the session is closed, or has ``max_per_session`` schedules.
        """
        async with self.transaction() as connection:
            status = await connection.scalar(
                select(SessionRow.status)
                .where(SessionRow.session_id == session_id, SessionRow.tenant_id == tenant_id)
                .with_for_update()
            )
            if status is None:
                raise NotFoundError(f"session {session_id} not found")
            if status != "active":
                raise ConflictError(f"session {session_id} is closed")
            count = await connection.scalar(
                select(func.count()).where(ScheduleRow.session_id == session_id)
            )
            if int(count or 0) >= max_per_session:
                raise ConflictError(
                    f"session {session_id} has {max_per_session} schedules, the most allowed"
                )
            values = {
                "schedule_id": new_id(),
                "tenant_id": tenant_id,
                "session_id": session_id,
                "cron": cron,
                "timezone": timezone,
                "content": content,
                "missed": missed,
                "next_fire_at": next_fire_at,
                "created_at": utcnow(),
            }
            await connection.execute(insert(ScheduleRow).values(**values))
        return Schedule(**values)

    async def list_schedules(self, tenant_id: str, session_id: str) -> list[Schedule]:
        """The session's schedules, oldest first (404 for another tenant's session)."""
        async with self.transaction() as connection:
            await _require_session(connection, tenant_id, session_id)
            rows = await connection.execute(
                select(ScheduleRow)
                .where(ScheduleRow.session_id == session_id)
                .order_by(ScheduleRow.created_at, ScheduleRow.schedule_id)
            )
            return [schedule_of(row) for row in rows]

    async def delete_schedule(self, tenant_id: str, session_id: str, schedule_id: str) -> None:
        """Remove a schedule; its ticks already submitted stay messages.

        Raises:
            NotFoundError: no such schedule in this tenant's session.
        """
        async with self.transaction() as connection:
            deleted = await connection.execute(
                delete(ScheduleRow).where(
                    ScheduleRow.schedule_id == schedule_id,
                    ScheduleRow.session_id == session_id,
                    ScheduleRow.tenant_id == tenant_id,
                )
            )
        if not deleted.rowcount:
            raise NotFoundError(f"schedule {schedule_id} not found")

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[Schedule]:
        """Schedules whose next tick is at or before ``now``, earliest first."""
        async with self.transaction() as connection:
            rows = await connection.execute(
                select(ScheduleRow)
                .where(ScheduleRow.next_fire_at <= now)
                .order_by(ScheduleRow.next_fire_at)
                .limit(limit)
            )
            return [schedule_of(row) for row in rows]

    async def advance_schedule(
        self, schedule: Schedule, *, fired_at: datetime | None, next_fire_at: datetime
    ) -> bool:
        """Move a schedule past the tick it was due at (``fired_at``: when a message was
        submitted for it, None for a skipped tick); False when another ticker moved it first."""
        values: dict[str, Any] = {"next_fire_at": next_fire_at}
        if fired_at is not None:
            values["last_fired_at"] = fired_at
        async with self.transaction() as connection:
            moved = await connection.execute(
                update(ScheduleRow)
                .where(
                    ScheduleRow.schedule_id == schedule.schedule_id,
                    ScheduleRow.next_fire_at == schedule.next_fire_at,
                )
                .values(**values)
            )
        return bool(moved.rowcount)

    async def drop_schedule(self, schedule_id: str) -> None:
        """Remove a schedule whose session is gone or closed."""
        async with self.transaction() as connection:
            await connection.execute(
                delete(ScheduleRow).where(ScheduleRow.schedule_id == schedule_id)
            )

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; False while another holder
        has it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        async with self.transaction() as connection:
            taken = await connection.execute(
                update(LeaseRow)
                .where(
                    LeaseRow.name == name,
                    or_(LeaseRow.holder == holder, LeaseRow.expires_at < now),
                )
                .values(holder=holder, expires_at=expires)
            )
            if taken.rowcount:
                return True
            if await connection.scalar(select(LeaseRow.holder).where(LeaseRow.name == name)):
                return False
        try:
            async with self.transaction() as connection:
                await connection.execute(
                    insert(LeaseRow).values(name=name, holder=holder, expires_at=expires)
                )
        except IntegrityError:  # another holder created it first
            return False
        return True


async def _require_session(connection: Any, tenant_id: str, session_id: str) -> None:
    found = await connection.scalar(
        select(SessionRow.session_id).where(
            SessionRow.session_id == session_id, SessionRow.tenant_id == tenant_id
        )
    )
    if found is None:
        raise NotFoundError(f"session {session_id} not found")
