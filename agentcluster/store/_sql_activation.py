"""Session ownership under a fencing epoch and the open-turn sweeps, on SQLAlchemy (the
:class:`~agentcluster.store.ActivationStore` role; journal writes go through
:meth:`~agentcluster.store._sql_writer.SqlWriting.writer`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from sqlalchemy import Select, and_, not_, or_, select, update

from agentcluster.domain import Activated, Turn
from agentcluster.errors import NotFoundError
from agentcluster.store._sql_base import (
    OPEN_TURN_STATUSES,
    RUNNABLE_TURN_STATUSES,
    message_of,
    session_of,
    turn_of,
)
from agentcluster.store._sql_writer import SqlWriting
from agentcluster.store.models import MessageRow, SessionRow, TurnRow, utcnow

__all__ = ["SqlActivation"]


def _open_turns_query(session_id: str) -> Select[TurnRow, str]:
    # The user message's content comes along, so a worker starting a turn needs no second query.
    return (
        select(TurnRow, MessageRow.content.label("prompt"))
        .join(MessageRow, MessageRow.message_id == TurnRow.message_id)
        .where(TurnRow.session_id == session_id, TurnRow.status.in_(OPEN_TURN_STATUSES))
        .order_by(MessageRow.position)
    )


class SqlActivation(SqlWriting):
    """Claims, activations, releases and the sweeps of sessions with open turns."""

    async def claim_session(self, session_id: str, host_id: str) -> int:
        """Make ``host_id`` the owner with a new epoch; every older epoch is fenced off."""
        async with self.transaction() as connection:
            epoch = await connection.scalar(
                update(SessionRow)
                .where(SessionRow.session_id == session_id)
                .values(owner_epoch=SessionRow.owner_epoch + 1, owner_host=host_id)
                .returning(SessionRow.owner_epoch)
            )
        if epoch is None:
            raise NotFoundError(f"session {session_id} not found")
        return int(epoch)

    async def activate_session(self, session_id: str, host_id: str) -> Activated:
        """Claim a session and load what an activation needs, in one transaction.

        Returns the session (with its new owner epoch), its messages in commit order and its open
        turns in arrival order.

        Raises:
            NotFoundError: no such session.
        """
        async with self.transaction() as connection:
            row = (
                await connection.execute(
                    update(SessionRow)
                    .where(SessionRow.session_id == session_id)
                    .values(owner_epoch=SessionRow.owner_epoch + 1, owner_host=host_id)
                    .returning(*SessionRow.__table__.columns)
                )
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"session {session_id} not found")
            messages = (
                await connection.execute(
                    select(MessageRow)
                    .where(MessageRow.session_id == session_id)
                    .order_by(MessageRow.position)
                )
            ).all()
            turns = (await connection.execute(_open_turns_query(session_id))).all()
        return Activated(
            session=session_of(row),
            messages=[message_of(m) for m in messages],
            open_turns=[turn_of(t) for t in turns],
            # The claim holds the session's row lock: no write came between it and the reads.
            next_seq=row.next_seq,
        )

    async def release_session(self, session_id: str, epoch: int) -> bool:
        """Give up ownership if still the owner (passivation); True if released."""
        async with self.transaction() as connection:
            result = await connection.execute(
                update(SessionRow)
                .where(SessionRow.session_id == session_id, SessionRow.owner_epoch == epoch)
                .values(owner_host=None)
            )
        return bool(result.rowcount)

    async def open_turns(self, session_id: str) -> list[Turn]:
        """Queued and running turns of a session in arrival order (what an activation must run)."""
        return [turn for turn, _prompt in await self.open_turns_with_prompts(session_id)]

    async def open_turns_with_prompts(self, session_id: str) -> list[tuple[Turn, str]]:
        """Like :meth:`open_turns`, each with the content of the user message that started it."""
        async with self.transaction() as connection:
            rows = (await connection.execute(_open_turns_query(session_id))).all()
        return [(turn_of(row), row.prompt) for row in rows]

    async def sessions_with_open_turns(self, owner_host: str, *, prefix: bool = False) -> list[str]:
        """Sessions owned by ``owner_host`` (with ``prefix``: by any owner id starting with it)
        that still have queued or running turns."""
        owner = SessionRow.owner_host
        owned = owner.startswith(owner_host, autoescape=True) if prefix else owner == owner_host
        query = (
            select(SessionRow.session_id)
            .join(TurnRow, TurnRow.session_id == SessionRow.session_id)
            .where(owned, TurnRow.status.in_(RUNNABLE_TURN_STATUSES))
            .distinct()
        )
        async with self.transaction() as connection:
            return list((await connection.execute(query)).scalars().all())

    async def sessions_to_wake(
        self,
        owner_prefix: str,
        live_owners: Collection[str] | None,
        *,
        unowned_after_s: float = 10.0,
        excluding: str | None = None,
        limit: int = 500,
    ) -> list[str]:
        """Sessions with queued or running turns that no live host runs: owned by a host of
        this host set (owner id starting with ``owner_prefix``, not with ``excluding``) not in
        ``live_owners`` (a host that died or was retired; None: ignore owned sessions), or owned
        by nobody (never woken, passivated) with a turn older than ``unowned_after_s``. At most
        ``limit``."""
        owner = SessionRow.owner_host
        cutoff = utcnow() - timedelta(seconds=unowned_after_s)
        unowned = and_(owner.is_(None), TurnRow.created_at < cutoff)
        condition = unowned
        if live_owners is not None:
            orphaned = and_(
                owner.startswith(owner_prefix, autoescape=True),
                owner.not_in(list(live_owners)),
            )
            if excluding is not None:
                orphaned = and_(orphaned, not_(owner.startswith(excluding, autoescape=True)))
            condition = or_(unowned, orphaned)
        query = (
            select(SessionRow.session_id)
            .join(TurnRow, TurnRow.session_id == SessionRow.session_id)
            .where(TurnRow.status.in_(RUNNABLE_TURN_STATUSES), condition)
            .distinct()
            .limit(limit)
        )
        async with self.transaction() as connection:
            return list((await connection.execute(query)).scalars().all())
