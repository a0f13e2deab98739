"""A tool actor killed (SIGKILL to its PID) in the middle of a python_exec call, under a turn.

What must hold: the call fails with a clear tool error the model reads, the turn goes on to its
answer, and the pool replaces the member (back to its size, the next call served).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.executor import TOOL_ACTOR_DIED, ActorToolExecutor
from agentcluster.agent import AgentLoop, AgentProfile, TurnContext
from agentcluster.config import LlmSettings, Settings, load_settings
from agentcluster.llm import ChatMessage, LiteLLMClient
from agentcluster.testing import FakeLLM, Reply, Rule, Script, ToolCall
from agentcluster.tools import AllowAllPolicy, ToolInvocation
from tests.conftest import eventually
from tests.integration.test_faults_llm import RecordingJournal
from tests.support.sandbox import require_sandbox

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.filterwarnings(
        "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier"
        ":UserWarning:pydantic._internal._generate_schema"
    ),
]

PROFILE = AgentProfile(name="coder", model="m", tools=["python_exec"], max_steps=3)
SLOW_CODE = "import time\nprint('started', flush=True)\ntime.sleep(120)"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    run = uuid.uuid4().hex[:6]
    return load_settings(
        {
            "tools": {
                "workspace_root": tmp_path,
                "pool_min": 1,
                "pool_max": 1,
                "python_wall_s": 180,
                "call_timeout_s": 200,
            },
            "runtime": {"host_prefix": f"f{run}", "namespace": f"faults-{run}"},
        }
    )


@pytest.fixture
async def executor(settings: Settings) -> AsyncIterator[ActorToolExecutor]:
    require_sandbox()
    created = await ActorToolExecutor.create(settings, [PROFILE])
    yield created
    pool = created._tool_pool()
    await pool.shutdown()
    # The manager is detached: end it too if shutdown left it (ours, in this test's namespace).
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(f"pool-{pool.name}", namespace=settings.runtime.namespace))


def _members(settings: Settings) -> list[Any]:
    """Handles of this test's tool actors (named pool members in its own namespace)."""
    namespace = settings.runtime.namespace
    prefix = f"pool-{settings.runtime.host_prefix}-tools-"
    return [
        ray.get_actor(entry["name"], namespace=namespace)
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == namespace and entry["name"].startswith(prefix)
    ]


def _member_pids(settings: Settings) -> list[int]:
    """The PIDs of this test's live tool actors."""
    pids: list[int] = []
    for handle in _members(settings):
        try:
            pids.append(int(ray.get(handle.health.remote(), timeout=60)["actor_pid"]))
        except ray.exceptions.RayError:
            continue  # a member the pool is still starting or already replacing
    return pids


async def test_a_killed_tool_actor_fails_the_call_and_the_turn_goes_on(
    settings: Settings, executor: ActorToolExecutor
) -> None:
    token = uuid.uuid4().hex
    async with FakeLLM(Script()) as fake:
        fake.script.add_rule(
            Rule(
                when=lambda r: token in str(r.messages) and r.last_role == "tool",
                reply=Reply(content="the code did not finish"),
            )
        )
        call = ToolCall("python_exec", {"code": SLOW_CODE})
        fake.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(tool_calls=[call])))
        [old_pid] = await asyncio.to_thread(_member_pids, settings)
        turn = asyncio.create_task(_turn(fake, executor, token))
        # Killed once the actor counts the call (it is then inside the sandbox's sleep).
        await eventually(lambda: _calls_started(settings), timeout=60, message="call started")
        os.kill(old_pid, signal.SIGKILL)
        journal = await asyncio.wait_for(turn, 120)
    assert journal.ending == ("completed", "the code did not finish")
    tool_message = next(r for r in fake.requests if r.last_role == "tool").messages[-1]
    assert TOOL_ACTOR_DIED in str(tool_message["content"])

    async def replaced() -> bool:
        stats = await executor._tool_pool().stats()
        pids = await asyncio.to_thread(_member_pids, settings)
        return stats.size == 1 and bool(pids) and old_pid not in pids

    await eventually(replaced, timeout=120, message="the pool replaced the killed member")
    outcome = await executor.execute(_invocation("print(6*7)"))
    assert outcome.ok and "42" in str(outcome.result)


async def _calls_started(settings: Settings) -> bool:
    def busy() -> bool:
        members = _members(settings)
        return any(ray.get(m.health.remote(), timeout=30)["calls"] > 0 for m in members)

    return await asyncio.to_thread(busy)


def _invocation(code: str) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="t",
        session_id=f"s-{uuid.uuid4().hex[:8]}",
        turn_id="t1",
        agent="coder",
        tool_call_id=uuid.uuid4().hex,
        tool="python_exec",
        arguments={"code": code},
    )


async def _turn(fake: FakeLLM, executor: ActorToolExecutor, text: str) -> RecordingJournal:
    settings = LlmSettings(api_base=fake.base_url, api_key="x", timeout_s=5, max_retries=0)
    loop = AgentLoop(PROFILE, LiteLLMClient(settings), executor, AllowAllPolicy(), _keep_all)
    journal = RecordingJournal()
    context = TurnContext(tenant_id="t", session_id="s-fault", turn_id="t1", agent="coder")
    await loop.run_turn(context, [ChatMessage(role="user", content=text)], journal)
    return journal


def _keep_all(messages: list[ChatMessage], *_: Any) -> list[ChatMessage]:
    return messages
