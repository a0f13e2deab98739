"""Structured logs: JSON lines carrying the ids bound for the work that logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentcluster.config import load_settings
from agentcluster.logs import JsonFormatter, bound, configure_logging, current_ids

pytestmark = pytest.mark.usefixtures("restore_loggers")


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_carries_the_ids_bound_for_its_block_and_nothing_after() -> None:
    stream = io.StringIO()
    configure_logging(load_settings(), stream)
    log = logging.getLogger("agentcluster.test")
    with bound(tenant_id="t1", session_id="s1"), bound(turn_id="u1"):
        log.info("inside %s", "the turn")
    log.warning("outside")
    inside, outside = _lines(stream)
    assert inside["message"] == "inside the turn" and inside["level"] == "INFO"
    assert (inside["tenant_id"], inside["session_id"], inside["turn_id"]) == ("t1", "s1", "u1")
    assert inside["logger"] == "agentcluster.test" and str(inside["ts"]).endswith("Z")
    assert not {"tenant_id", "session_id", "turn_id"} & outside.keys()


def test_tasks_started_in_a_block_keep_its_ids() -> None:
    async def main() -> dict[str, str]:
        with bound(tenant_id="t2", session_id="s2", turn_id="u2"):
            task = asyncio.create_task(asyncio.sleep(0, result=None))
            child = asyncio.create_task(_ids_later())
        await task
        return await child

    async def _ids_later() -> dict[str, str]:
        await asyncio.sleep(0)
        return current_ids()

    assert asyncio.run(main()) == {"tenant_id": "t2", "session_id": "s2", "turn_id": "u2"}


def test_the_active_trace_and_span_ids_are_logged() -> None:
    tracer = TracerProvider().get_tracer("test")
    record = logging.LogRecord("agentcluster.x", logging.INFO, __file__, 1, "traced", None, None)
    with tracer.start_as_current_span("work") as span:
        entry = json.loads(JsonFormatter().format(record))
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")


def test_configuring_twice_keeps_one_handler_and_text_format_is_available() -> None:
    settings = load_settings().model_copy(update={"log_format": "text"})
    first, second = io.StringIO(), io.StringIO()
    configure_logging(settings, first)
    configure_logging(settings, second)
    logging.getLogger("actors.session").error("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1
    assert "ERROR actors.session: once" in second.getvalue()
