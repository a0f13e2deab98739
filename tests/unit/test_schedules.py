"""Cron expressions to ticks: time zones, daylight saving, the minimum interval, bad input."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from agentcluster.api._schedules import CRON_PATTERN, TIME_ZONES, ScheduleIn
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


@pytest.mark.parametrize(
    "cron",
    ["0 9 * * 1-5", "*/2 * * * * *", "0 0 * * MON-fri", "5,35 23-1 1-31/7 jan-Mar 0-7", "@daily"],
)
def test_what_the_schema_allows_is_a_schedule(cron: str) -> None:
    body = ScheduleIn(cron=cron, content="x", timezone="Europe/Berlin")
    assert check_schedule(body.cron, body.timezone, 1, NOW) > NOW


@pytest.mark.parametrize(
    "cron",
    ["61 * * * *", "0  9 * * *", " 0 9 * * *", "* * * * * * *", "*/0 * * * *", "@reboot", "0 L"],
)
def test_what_the_schema_refuses_is_refused_before_the_schedule(cron: str) -> None:
    assert re.fullmatch(CRON_PATTERN, cron) is None
    with pytest.raises(ValueError, match="cron"):
        ScheduleIn(cron=cron, content="x")


def test_time_zones_are_the_ones_the_server_knows() -> None:
    schema = ScheduleIn.model_json_schema()["properties"]["timezone"]
    assert "Europe/Berlin" in schema["enum"] and "UTC" in TIME_ZONES
    for timezone in ("Mars/Olympus", "../../etc/passwd", "europe/berlin"):
        with pytest.raises(ValueError, match="time zone"):
            ScheduleIn(cron="0 9 * * *", content="x", timezone=timezone)
