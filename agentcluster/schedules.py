"""Schedules: a message a session gets at each tick of a cron expression.

Cron expressions have 5 fields (minute hour day month weekday) or 6 with seconds first, and the
``@daily``-style names (croniter). Ticks are computed in the schedule's time zone (an IANA name,
``UTC`` by default), so ``0 9 * * 1-5`` is 9:00 local on weekdays across daylight-saving changes.

One :class:`ScheduleTicker` submits due ticks at a time: the elected holder of a lease in the
store. Each tick's message carries an idempotency key derived from the schedule and the tick,
so a tick submitted twice (two tickers across a lease handover, a retry after a crash between
submitting and recording it) is one message and one turn.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from agentcluster.config import ScheduleSettings
from agentcluster.domain import Schedule, Submission
from agentcluster.errors import ConflictError, NotFoundError, ValidationFailed
from agentcluster.store import ScheduleStore

__all__ = ["LEASE", "ScheduleTicker", "check_schedule", "next_fire", "tick_key"]

log = logging.getLogger(__name__)

LEASE = "schedule-ticker"
_PROBE_TICKS = 8  # consecutive ticks checked against the minimum interval

Submit = Callable[..., Awaitable[Submission]]
"""``Runtime.send_message``: (tenant_id, session_id, content, *, idempotency_key)."""


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(f"timezone: unknown time zone {timezone!r}") from None


def _seconds_first(cron: str) -> bool:
    return len(cron.split()) == 6


def next_fire(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick of ``cron`` strictly after ``after``, in UTC.

    Raises:
        ValidationFailed: the expression or the time zone is not valid, or never fires.
    """
    local = after.astimezone(_zone(timezone))
    try:
        ticks = croniter(cron, local, second_at_beginning=_seconds_first(cron))
        tick: datetime = ticks.get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValidationFailed(f"cron: {cron!r} is not a valid expression ({exc})") from None
    return tick.astimezone(UTC)


def check_schedule(cron: str, timezone: str, min_interval_s: float, now: datetime) -> datetime:
    """Validate a schedule and return its first tick after ``now``.

    Raises:
        ValidationFailed: invalid expression or time zone, or ticks closer than
            ``min_interval_s`` seconds.
    """
    if not cron.strip() or len(cron.split()) not in (1, 5, 6):
        raise ValidationFailed(
            "cron: expected 5 fields (minute hour day month weekday), 6 with seconds first, "
            "or a name such as @daily"
        )
    first = tick = next_fire(cron, timezone, now)
    for _ in range(_PROBE_TICKS):
        following = next_fire(cron, timezone, tick)
        if (following - tick).total_seconds() < min_interval_s:
            raise ValidationFailed(
                f"cron: {cron!r} fires {(following - tick).total_seconds():g} s apart; the "
                f"shortest interval allowed is {min_interval_s:g} s (SA01_SCHEDULES_MIN_INTERVAL_S)"
            )
        tick = following
    return first


def tick_key(schedule_id: str, fire_at: datetime) -> str:
    """The idempotency key of one tick's message."""
    return f"schedule:{schedule_id}:{fire_at.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}"


class ScheduleTicker:
    """Submits the messages of due ticks, while it holds the ticker lease.

    Args:
        store: the schedules and the lease.
        submit: commits a message (``Runtime.send_message``).
        settings: tick period, lease duration.
        holder: this ticker's name in the lease (unique per process).
    """

    def __init__(
        self, store: ScheduleStore, submit: Submit, settings: ScheduleSettings, holder: str
    ) -> None:
        self._store = store
        self._submit = submit
        self._settings = settings
        self._holder = holder

    async def tick(self, now: datetime | None = None) -> int:
        """Submit every due tick if this ticker holds the lease; returns how many it submitted.

        Raises:
            InfrastructureError: the store cannot be reached (the next tick tries again).
        """
        now = now or datetime.now(UTC)
        if not await self._store.acquire_lease(LEASE, self._holder, self._settings.lease_s):
            return 0
        fired = 0
        for schedule in await self._store.due_schedules(now):
            fired += await self._fire(schedule, now)
        return fired

    async def _fire(self, schedule: Schedule, now: datetime) -> int:
        following = next_fire(schedule.cron, schedule.timezone, max(now, schedule.next_fire_at))
        # A tick later than a lease handover can explain was missed (no ticker ran then).
        missed = now - schedule.next_fire_at > timedelta(seconds=self._settings.lease_s * 2)
        if missed and schedule.missed == "skip":
            await self._store.advance_schedule(schedule, fired_at=None, next_fire_at=following)
            return 0
        try:
            await self._submit(
                schedule.tenant_id,
                schedule.session_id,
                schedule.content,
                idempotency_key=tick_key(schedule.schedule_id, schedule.next_fire_at),
            )
        except (NotFoundError, ConflictError) as exc:  # the session is gone or closed
            log.info("schedule %s: dropped (%s)", schedule.schedule_id, exc)
            await self._store.drop_schedule(schedule.schedule_id)
            return 0
        await self._store.advance_schedule(schedule, fired_at=now, next_fire_at=following)
        return 1
