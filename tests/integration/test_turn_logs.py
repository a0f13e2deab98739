"""A session host's logs for a turn are JSON lines carrying the tenant, session and turn ids
(in-process SessionHostCore on PostgreSQL, LiteLLM against the fake LLM; no Ray needed)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import pytest
import yaml

from actors.compose import build_runtime_deps
from agentcluster.config import load_settings
from agentcluster.logs import configure_logging
from agentcluster.runtime import SessionHostCore
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def log_stream(restore_loggers: None) -> io.StringIO:
    return io.StringIO()


async def test_turn_logs_carry_the_tenant_session_and_turn_ids(
    postgres_dsn: str, fake_llm: FakeLLM, tmp_path: Path, log_stream: io.StringIO
) -> None:
    profile = {"name": "quiet", "model": "fake-a", "tools": [], "max_output_tokens": 64}
    (tmp_path / "quiet.yaml").write_text(yaml.safe_dump(profile))
    settings = load_settings(
        {
            "db": {"dsn": postgres_dsn},
            "llm": {"api_base": fake_llm.base_url, "api_key": "test", "max_retries": 0},
            "policy": {"url": None},
            "runtime": {"agents_dir": tmp_path, "host_prefix": f"l{uuid.uuid4().hex[:6]}"},
        }
    )
    configure_logging(settings, log_stream)
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="logged")))
    deps = await build_runtime_deps(settings)
    host = SessionHostCore("log-host", lambda: asyncio.sleep(0, deps))
    try:
        tenant = await deps.store.create_tenant("logs")
        session = await deps.store.create_session(tenant.tenant_id, "quiet")
        submission = await deps.store.submit_message(tenant.tenant_id, session.session_id, token)
        outcome = await host.wait_turn(
            tenant.tenant_id, session.session_id, submission.turn_id, submission.seq - 1, 60
        )
        assert outcome is not None and outcome.type == "turn.completed"

        async def turn_logged() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
            return [line for line in lines if submission.turn_id in str(line["message"])]

        # The outcome is committed (and answered) a moment before the turn's task returns.
        ended = await eventually(turn_logged, timeout=30, message="the turn's log line")
    finally:
        await host.stop()
        await deps.store.close()
    assert ended[0]["tenant_id"] == tenant.tenant_id
    assert ended[0]["session_id"] == session.session_id
    assert ended[0]["turn_id"] == submission.turn_id
    assert "completed after 1 step(s)" in str(ended[0]["message"])
