"""Cron expressions to ticks: time zones, daylight saving, the minimum interval, bad input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentcluster.errors import ValidationFailed
from agentcluster.schedules import check_schedule, next_fire, tick_key

NOW = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)  # a Friday, two days before Berlin's DST start


def test_ticks_are_local_to_the_time_zone_across_daylight_saving() -> None:
    friday = next_fire("0 9 * * 1-5", "Europe/Berlin", NOW)
    monday = next_fire("0 9 * * 1-5", "Europe/Berlin", friday)
    assert friday == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)  # 9:00 CEST on Monday
    assert monday == datetime(2026, 3, 31, 7, 0, tzinfo=UTC)
    assert next_fire("0 9 * * *", "UTC", NOW) == datetime(2026, 3, 28, 9, 0, tzinfo=UTC)


def test_six_fields_put_seconds_first_and_names_work() -> None:
    assert next_fire("*/15 * * * * *", "UTC", NOW) == datetime(2026, 3, 27, 12, 0, 15, tzinfo=UTC)
    assert next_fire("@daily", "UTC", NOW) == datetime(2026, 3, 28, tzinfo=UTC)


def test_the_first_tick_is_returned_and_close_ticks_are_refused() -> None:
    assert check_schedule("*/5 * * * *", "UTC", 60, NOW) == datetime(2026, 3, 27, 12, 5, tzinfo=UTC)
    with pytest.raises(ValidationFailed, match="shortest interval"):
        check_schedule("*/2 * * * * *", "UTC", 60, NOW)
    assert check_schedule("*/2 * * * * *", "UTC", 1, NOW) == datetime(
        2026, 3, 27, 12, 0, 2, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("cron", "timezone", "message"),
    [
        ("not a cron", "UTC", "cron"),
        ("61 * * * *", "UTC", "cron"),
        ("* * * * * * *", "UTC", "cron"),
        ("", "UTC", "cron"),
        ("0 0 31 2 *", "UTC", "cron"),  # never fires
        ("0 9 * * *", "Mars/Olympus", "timezone"),
        ("0 9 * * *", "../../etc/passwd", "timezone"),
    ],
)
def test_bad_schedules_are_validation_errors(cron: str, timezone: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        check_schedule(cron, timezone, 60, NOW)


def test_a_ticks_key_names_the_schedule_and_the_tick() -> None:
    key = tick_key("s1", datetime(2026, 3, 27, 12, 0, 15, tzinfo=UTC))
    assert key == "schedule:s1:20260327T120015.000000Z"
    assert tick_key("s1", datetime(2026, 3, 27, 12, 0, 16, tzinfo=UTC)) != key
