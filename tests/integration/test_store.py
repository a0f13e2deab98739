"""State store round trips on SQLite and PostgreSQL: the same tests, parametrized by backend."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, select

from agentcluster import events as ev
from agentcluster.errors import ConflictError, NotFoundError, StaleEpochError, ValidationFailed
from agentcluster.store import SqlStateStore, current_revision, hash_api_key, head_revision
from agentcluster.store.models import ApiKeyRow, Base, EventRow, MessageRow, TurnRow

pytestmark = pytest.mark.integration


async def _tenant(store: SqlStateStore) -> str:
    return (await store.create_tenant("acme")).tenant_id


async def test_migrations_reach_head_and_match_the_models(store: SqlStateStore) -> None:
    assert await current_revision(store.engine) == head_revision()

    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with store.engine.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_session_round_trip(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    created = await store.create_session(tenant_id, "default", {"user": "u1"})
    loaded = await store.get_session(tenant_id, created.session_id)
    assert loaded == created
    assert loaded.status == "active"
    assert loaded.metadata == {"user": "u1"}
    assert loaded.created_at.tzinfo is not None

    submission = await store.submit_message(tenant_id, created.session_id, "hello")
    history = await store.list_messages(tenant_id, created.session_id)
    assert [(m.role, m.content, m.turn_id) for m in history] == [
        ("user", "hello", submission.turn_id)
    ]
    turn = await store.get_turn(tenant_id, submission.turn_id)
    assert (turn.status, turn.message_id) == ("queued", submission.message_id)

    events = await store.list_events(tenant_id, created.session_id)
    assert [(e.seq, e.type) for e in events] == [(1, "session.created"), (2, "message.received")]
    assert isinstance(events[1], ev.MessageReceived)
    assert events[1].content == "hello"

    closed = await store.close_session(tenant_id, created.session_id, "done")
    assert closed.status == "closed" and closed.closed_at is not None
    with pytest.raises(ConflictError):
        await store.submit_message(tenant_id, created.session_id, "too late")
    events = await store.list_events(tenant_id, created.session_id, after_seq=2)
    assert [(e.seq, e.type) for e in events] == [(3, "session.closed")]


async def test_a_full_turn_is_recorded_with_its_events(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")
    submission = await store.submit_message(tenant_id, session.session_id, "2+2?")
    epoch = await store.claim_session(session.session_id, "host-a")
    async with store.writer(session.session_id, epoch=epoch) as writer:
        attempt = await writer.start_turn(submission.turn_id)
        await writer.emit(
            ev.TurnStarted(
                tenant_id=tenant_id,
                session_id=session.session_id,
                turn_id=submission.turn_id,
                attempt=attempt,
            )
        )
    async with store.writer(session.session_id, epoch=epoch) as writer:
        await writer.record_tool_call("call-1", submission.turn_id, "calculator", {"x": "2+2"})
        await writer.finish_tool_call(
            submission.turn_id, "call-1", status="completed", result={"value": 4}
        )
        answer = await writer.add_message("assistant", "4", turn_id=submission.turn_id)
        await writer.finish_turn(
            submission.turn_id, "completed", usage={"total_tokens": 9}, answer_message_id=answer
        )
        await writer.emit(
            ev.TurnCompleted(
                tenant_id=tenant_id,
                session_id=session.session_id,
                turn_id=submission.turn_id,
                message_id=answer,
                content="4",
            )
        )
    turn = await store.get_turn(tenant_id, submission.turn_id)
    assert (turn.status, turn.attempt, turn.usage) == ("completed", 1, {"total_tokens": 9})
    assert await store.open_turns(session.session_id) == []
    types = [e.type for e in await store.list_events(tenant_id, session.session_id)]
    assert types == ["session.created", "message.received", "turn.started", "turn.completed"]


async def test_a_write_with_a_stale_epoch_is_rejected(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")
    old = await store.claim_session(session.session_id, "host-a")
    new = await store.claim_session(session.session_id, "host-b")
    assert new == old + 1
    with pytest.raises(StaleEpochError):
        async with store.writer(session.session_id, epoch=old) as writer:
            await writer.add_message("assistant", "from the old owner")
    async with store.writer(session.session_id, epoch=new) as writer:
        await writer.add_message("assistant", "from the new owner")
    contents = [m.content for m in await store.list_messages(tenant_id, session.session_id)]
    assert contents == ["from the new owner"]
    assert not await store.release_session(session.session_id, old)
    assert await store.release_session(session.session_id, new)


async def test_a_failed_transaction_leaves_neither_change_nor_event(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.writer(session.session_id) as writer:
            await writer.add_message("assistant", "half done")
            await writer.emit(
                ev.TurnStarted(tenant_id=tenant_id, session_id=session.session_id, turn_id="t")
            )
            raise Boom
    # A database error part-way (duplicate message id) rolls back the event written before it.
    kept = await store.submit_message(tenant_id, session.session_id, "kept")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        async with store.writer(session.session_id) as writer:
            await writer.emit(
                ev.TurnStarted(tenant_id=tenant_id, session_id=session.session_id, turn_id="t")
            )
            await writer.add_message("assistant", "dup", message_id=kept.message_id)

    assert [m.content for m in await store.list_messages(tenant_id, session.session_id)] == ["kept"]
    events = await store.list_events(tenant_id, session.session_id)
    assert [e.type for e in events] == ["session.created", "message.received"]
    assert [e.seq for e in events] == [1, 2]
    async with store.engine.connect() as connection:
        count = await connection.scalar(
            select(func.count())
            .select_from(EventRow)
            .where(EventRow.session_id == session.session_id)
        )
    assert count == 2


async def test_idempotency_key_returns_the_first_submission(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")
    first = await store.submit_message(tenant_id, session.session_id, "hi", idempotency_key="k-1")
    again = await store.submit_message(tenant_id, session.session_id, "hi", idempotency_key="k-1")
    other = await store.submit_message(tenant_id, session.session_id, "hi", idempotency_key="k-2")
    assert first.created and not again.created and other.created
    assert (again.message_id, again.turn_id) == (first.message_id, first.turn_id)
    async with store.engine.connect() as connection:
        turns = await connection.scalar(
            select(func.count())
            .select_from(TurnRow)
            .where(TurnRow.session_id == session.session_id)
        )
    assert turns == 2


async def test_concurrent_submissions_get_distinct_gapless_seqs(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")
    await asyncio.gather(
        *(store.submit_message(tenant_id, session.session_id, f"m{i}") for i in range(20))
    )
    events = await store.list_events(tenant_id, session.session_id)
    assert [e.seq for e in events] == list(range(1, 22))
    async with store.engine.connect() as connection:
        positions = (
            (
                await connection.execute(
                    select(MessageRow.content)
                    .where(MessageRow.session_id == session.session_id)
                    .order_by(MessageRow.position)
                )
            )
            .scalars()
            .all()
        )
    received = [e.content for e in events if isinstance(e, ev.MessageReceived)]
    assert received == list(positions)


async def test_many_sessions_written_at_once_all_commit_in_order(store: SqlStateStore) -> None:
    # More concurrent writers than the pool holds connections: on SQLite they queue for the
    # one writer (no "database is locked"), on PostgreSQL each locks its own session's row.
    tenant_id = await _tenant(store)
    sessions = [await store.create_session(tenant_id, "default") for _ in range(24)]

    async def send(session_id: str) -> None:
        for i in range(3):
            await store.submit_message(tenant_id, session_id, f"m{i}")

    await asyncio.gather(*(send(session.session_id) for session in sessions))
    for session in sessions:
        events = await store.list_events(tenant_id, session.session_id)
        assert [e.seq for e in events] == [1, 2, 3, 4]
        received = [e.content for e in events if isinstance(e, ev.MessageReceived)]
        assert received == ["m0", "m1", "m2"]


async def test_tenants_are_isolated(store: SqlStateStore) -> None:
    mine, theirs = await _tenant(store), await _tenant(store)
    session = await store.create_session(mine, "default")
    with pytest.raises(NotFoundError):
        await store.get_session(theirs, session.session_id)
    with pytest.raises(NotFoundError):
        await store.submit_message(theirs, session.session_id, "intrusion")
    assert await store.list_events(theirs, session.session_id) == []
    assert await store.list_messages(theirs, session.session_id) == []
    assert (await store.list_sessions(theirs)).items == []
    with pytest.raises(NotFoundError):
        await store.create_session("no-such-tenant", "default")


async def test_session_listing_pages_with_a_cursor(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    created = [(await store.create_session(tenant_id, "default")).session_id for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        page = await store.list_sessions(tenant_id, limit=2, cursor=cursor)
        seen += [s.session_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == created
    with pytest.raises(ValidationFailed):
        await store.list_sessions(tenant_id, cursor="!!not-a-cursor!!")


async def test_api_keys_are_stored_hashed(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    key, secret = await store.create_api_key(tenant_id, "ci")
    assert (await store.authenticate(secret)) == key
    assert await store.authenticate(secret + "x") is None
    async with store.engine.connect() as connection:
        hashes = (await connection.execute(select(ApiKeyRow.key_hash))).scalars().all()
    assert secret not in hashes and hash_api_key(secret) in hashes
    assert [k.key_id for k in await store.list_api_keys(tenant_id)] == [key.key_id]
    await store.revoke_api_key(tenant_id, key.key_id)
    assert await store.authenticate(secret) is None
    with pytest.raises(NotFoundError):
        await store.revoke_api_key(tenant_id, key.key_id)


async def test_outbox_hands_out_and_marks_events(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")
    await store.submit_message(tenant_id, session.session_id, "hi")
    pending = [
        r for r in await store.fetch_unpublished(10_000) if r.session_id == session.session_id
    ]
    assert [r.seq for r in pending] == [1, 2]
    assert ev.load_event(pending[0].payload).type == "session.created"
    await store.mark_published([r.position for r in pending])
    left = [r for r in await store.fetch_unpublished(10_000) if r.session_id == session.session_id]
    assert left == []


async def test_activation_claims_and_loads_in_one_go(store: SqlStateStore) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")
    first = await store.submit_message(tenant_id, session.session_id, "one")
    second = await store.submit_message(tenant_id, session.session_id, "two")
    loaded = await store.activate_session(session.session_id, "host-x")
    assert loaded.session.owner_epoch == session.owner_epoch + 1
    assert loaded.session.owner_host == "host-x"
    assert [m.content for m in loaded.messages] == ["one", "two"]
    assert [t.turn_id for t in loaded.open_turns] == [first.turn_id, second.turn_id]
    with pytest.raises(NotFoundError):
        await store.activate_session("no-such-session", "host-x")


async def test_event_numbers_taken_with_the_lock_stay_gapless_whatever_is_emitted(
    store: SqlStateStore,
) -> None:
    tenant_id = await _tenant(store)
    session = await store.create_session(tenant_id, "default")  # seq 1
    closed = ev.SessionClosed(tenant_id=tenant_id, session_id=session.session_id)
    for reserved, emitted in [(2, 2), (2, 1), (1, 0), (0, 2), (1, 3)]:
        async with store.writer(session.session_id, events=reserved) as writer:
            for _ in range(emitted):
                await writer.emit(closed.model_copy(update={"event_id": str(uuid.uuid4())}))
    seqs = [e.seq for e in await store.list_events(tenant_id, session.session_id)]
    assert seqs == list(range(1, 10))  # 1 + 2 + 1 + 0 + 2 + 3 events, no gap
    assert (await store.get_session(tenant_id, session.session_id)).last_seq == 9
    again = await store.submit_message(tenant_id, session.session_id, "hi", idempotency_key="k")
    replay = await store.submit_message(tenant_id, session.session_id, "hi", idempotency_key="k")
    assert replay.turn_id == again.turn_id  # emitted nothing: its reserved number went back
    assert (await store.get_session(tenant_id, session.session_id)).last_seq == 10
