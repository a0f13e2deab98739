"""browser_task's LLM calls go through the LLM port and the tenant's daily budget.

A browser pool built from the settings (as the session hosts build it: real Chromium, the policy
engine of the settings, the tenants' budgets in Redis and PostgreSQL) runs browser_task with the
fake LLM as its model. The tenant's usage counts exactly what the fake LLM reported for the
browser-use Agent's calls; once the day's token budget is spent, the next browser_task is refused
with the budget's error and the model is not called.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.browser import PooledBrowserTools, browser_pool_spec
from actors.pool import ActorPool
from agentcluster.browser import BrowserLlm
from agentcluster.config import Settings, load_settings
from agentcluster.limits import LimitOverrides, TenantLimitsService, open_tenant_limits
from agentcluster.store import SqlStateStore, open_store
from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Script
from agentcluster.tools import ToolInvocation, ToolOutcome

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.timeout(240),
]

ANSWER = {
    "evaluation_previous_goal": "start",
    "memory": "nothing to browse",
    "next_goal": "answer",
    "action": [{"done": {"text": "hello from the browser", "success": True}}],
}


@pytest.fixture
def settings(postgres_dsn: str) -> Settings:
    namespace = f"ac-budget-{uuid.uuid4().hex[:8]}"
    return load_settings(
        {
            "db": {"dsn": postgres_dsn},
            "runtime": {"namespace": namespace, "host_prefix": namespace},
            # Every budget check reads the tenant's limits again: the override below applies to
            # the very next call.
            "limits": {"refresh_s": 0, "tokens_per_day": 0, "cost_per_day_usd": 0},
            "browser": {"pool_min": 0, "pool_max": 1, "action_timeout_s": 20.0},
        }
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SqlStateStore]:
    opened = await open_store(settings.db_dsn)
    yield opened
    await opened.close()


@pytest.fixture
async def limits(settings: Settings, store: SqlStateStore) -> AsyncIterator[TenantLimitsService]:
    service = open_tenant_limits(settings, store)
    yield service
    await service.aclose()


@pytest.fixture
async def browsers(settings: Settings) -> AsyncIterator[PooledBrowserTools]:
    spec = browser_pool_spec(settings, name=f"{settings.runtime.host_prefix}-browser")
    pool = ActorPool.start(spec, lease_timeout_s=120.0)
    yield PooledBrowserTools(pool)
    await pool.shutdown()


def fake_tokens(request: RecordedRequest, reply: str) -> int:
    """The fake LLM's documented count: ceil(characters / 4) per text, plus 3 per message."""
    prompt = sum(3 + math.ceil(len(str(m.get("content") or "")) / 4) for m in request.messages)
    return prompt + math.ceil(len(reply) / 4)


async def browser_task(
    browsers: PooledBrowserTools, tenant_id: str, llm: BrowserLlm, task: str
) -> ToolOutcome:
    invocation = ToolInvocation(
        tenant_id=tenant_id,
        session_id=f"s-{uuid.uuid4().hex[:8]}",
        turn_id="turn-1",
        agent="tester",
        tool_call_id=f"call-{uuid.uuid4().hex[:8]}",
        tool="browser_task",
        arguments={"task": task, "max_steps": 2},
    )
    outcome = await browsers.execute(invocation, llm)
    await browsers.end_session(invocation.session_id)
    return outcome


async def test_browser_task_is_counted_and_refused_once_the_budget_is_spent(
    store: SqlStateStore, limits: TenantLimitsService, browsers: PooledBrowserTools
) -> None:
    tenant_id = (await store.create_tenant(f"budget-{uuid.uuid4().hex[:6]}")).tenant_id
    reply = Reply(content=ANSWER)
    with FakeLLM(Script(default=lambda request: reply)) as fake:
        llm = BrowserLlm(model="fake-browser-model", api_base=fake.base_url, api_key="test")
        done = await browser_task(browsers, tenant_id, llm, "Say hello.")
        asked: list[Any] = list(fake.requests)
        assert done.ok, done.error
        assert done.result["answer"] == "hello from the browser"
        assert asked and all(request.response_format is not None for request in asked)
        used = (await limits.read(tenant_id)).usage_today.tokens
        assert used == sum(fake_tokens(request, reply.text or "") for request in asked)

        # The day's budget is what the tenant has used: the next call's prompt does not fit.
        await limits.write(tenant_id, LimitOverrides(tokens_per_day=used))
        refused = await browser_task(browsers, tenant_id, llm, "Say hello again.")
        assert not refused.ok
        assert "browser_task refused: daily token budget exceeded" in (refused.error or "")
        assert f"tenant {tenant_id} used {used} of {used} tokens" in (refused.error or "")
        assert len(fake.requests) == len(asked)  # no call was made
    assert (await limits.read(tenant_id)).usage_today.tokens == used
