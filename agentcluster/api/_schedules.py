"""The schedules part of the HTTP API v1 contract: a message a session gets on a cron schedule."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import available_timezones

from pydantic import Field, JsonValue, field_validator

from agentcluster.api._models import MAX_CONTENT_CHARS, _In, _Out
from agentcluster.domain import MissedTicks, Schedule

__all__ = [
    "CRON_PATTERN",
    "TIME_ZONES",
    "ScheduleIn",
    "ScheduleList",
    "ScheduleOut",
    "WebhookSecretOut",
]


def _any_case(word: str) -> str:
    return "".join(f"[{char.upper()}{char.lower()}]" for char in word)


def _cron_field(number: str) -> str:
    """A list of ``*``, numbers or ranges, each with an optional step, in one cron field."""
    value = f"(?:{number})"
    item = f"(?:\\*|{value}(?:-{value})?)(?:/[1-9][0-9]?)?"
    return f"{item}(?:,{item})*"


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_SECOND = "[1-5]?[0-9]"
_FIELDS = (
    "[1-5]?[0-9]",  # minute
    "1?[0-9]|2[0-3]",  # hour
    "[1-9]|[12][0-9]|3[01]",  # day of the month
    "|".join(["[1-9]|1[0-2]", *map(_any_case, _MONTHS)]),  # month
    "|".join(["[0-7]", *map(_any_case, _WEEKDAYS)]),  # day of the week (0 and 7: Sunday)
)
CRON_PATTERN = (
    "^(?:@(?:hourly|daily|midnight|weekly|monthly|yearly|annually)"
    f"|(?:{_cron_field(_SECOND)} )?{' '.join(map(_cron_field, _FIELDS))})$"
)
"""A cron expression this server reads: 5 fields, or 6 with seconds first, parted by one space;
``*``, numbers, names, ranges, steps and lists; or a ``@daily``-style name."""

TIME_ZONES = frozenset(available_timezones())
"""The IANA time zones this server knows (the system's tz database)."""


class ScheduleIn(_In):
    """``POST /v1/sessions/{id}/schedules``."""

    cron: str = Field(
        min_length=1,
        max_length=200,
        pattern=CRON_PATTERN,
        description=(
            "5 fields (minute hour day-of-month month day-of-week) parted by one space, 6 with "
            "seconds first, or @hourly/@daily/@weekly/@monthly/@yearly; refused with 422: "
            "ticks closer than SA01_SCHEDULES_MIN_INTERVAL_S (60 s) apart, a day no month "
            "named has (`0 0 30 2 *`)"
        ),
        examples=["0 9 * * 1-5"],
    )
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    timezone: str = Field(
        default="UTC",
        description="IANA time zone the expression is read in",
        examples=["Europe/Berlin"],
        json_schema_extra={"enum": list[JsonValue](sorted(TIME_ZONES))},
    )
    missed: MissedTicks = Field(
        default="once",
        description=(
            "ticks missed while no ticker ran (the whole cluster down): `once` sends one "
            "message for all of them, `skip` waits for the next tick"
        ),
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, timezone: str) -> str:
        if timezone not in TIME_ZONES:
            raise ValueError(f"unknown time zone {timezone!r} (an IANA name such as Europe/Berlin)")
        return timezone


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
