"""The schedules part of the HTTP API v1 contract: a message a session gets on a cron schedule."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from agentcluster.api._models import MAX_CONTENT_CHARS, _In, _Out
from agentcluster.domain import MissedTicks, Schedule

__all__ = ["ScheduleIn", "ScheduleList", "ScheduleOut", "WebhookSecretOut"]


class ScheduleIn(_In):
    """``POST /v1/sessions/{id}/schedules``."""

    cron: str = Field(
        min_length=1,
        max_length=200,
        description=(
            "5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or "
            "@hourly/@daily/@weekly/@monthly/@yearly; ticks closer than "
            "SA01_SCHEDULES_MIN_INTERVAL_S (60 s) apart are refused"
        ),
        examples=["0 9 * * 1-5"],
    )
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    timezone: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="IANA time zone the expression is read in",
        examples=["Europe/Berlin"],
    )
    missed: MissedTicks = Field(
        default="once",
        description=(
            "ticks missed while no ticker ran (the whole cluster down): `once` sends one "
            "message for all of them, `skip` waits for the next tick"
        ),
    )


class ScheduleOut(_Out):
    schedule_id: str
    session_id: str
    cron: str
    timezone: str
    content: str
    missed: MissedTicks
    next_fire_at: datetime
    last_fired_at: datetime | None = None
    created_at: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleOut:
        return cls(
            schedule_id=schedule.schedule_id,
            session_id=schedule.session_id,
            cron=schedule.cron,
            timezone=schedule.timezone,
            content=schedule.content,
            missed=schedule.missed,
            next_fire_at=schedule.next_fire_at,
            last_fired_at=schedule.last_fired_at,
            created_at=schedule.created_at,
        )


class ScheduleList(_Out):
    items: list[ScheduleOut]


class WebhookSecretOut(_Out):
    """The tenant's webhook signing secret (``whsec_`` + base64 key, Standard Webhooks)."""

    secret: str
