"""The web console in a real browser: the Node suite in ``tests/console`` (its SSE parser alone,
then playwright-core driving Debian's ``/usr/bin/chromium``, never a downloaded browser) against
a gateway app that includes the console, deployed beside the shared e2e app (same Serve proxy
and session hosts, its own route prefix, so the console also proves it works under a prefix)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.routing import Match

from actors.compose import connect_runtime
from actors.console_probe import ray_cluster_probe
from agentcluster.config import Settings
from agentcluster.console import include_console
from agentcluster.gateway import create_app
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from tests.e2e.conftest import (
    ADMIN_KEY,
    BROWSER_PROFILE,
    PROFILE,
    new_tenant,
    script_tool_turn,
    tenant_policy,
)
from tests.e2e.test_approval_clients import script_approval_turn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SUITE = Path(__file__).resolve().parent.parent / "console"
CHROMIUM = Path("/usr/bin/chromium")
APP = "console"
PREFIX = "/console"
NODE_TIMEOUT_S = 300
CLUSTER_PATH = "/v1/cluster"


def _serves(app: FastAPI, path: str) -> bool:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def console_gateway(settings: Settings) -> Application:
    """The gateway app with the console, as a Serve application: the composition
    ``include_console(create_app(settings))`` of the gateway's wiring (skipped once
    ``create_app`` includes the console itself)."""
    app = create_app(settings, connect_runtime, ray_cluster_probe)
    if not _serves(app, CLUSTER_PATH):
        include_console(app)

    @serve.deployment(name="ConsoleGateway", ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class ConsoleGateway:
        pass

    return ConsoleGateway.bind()


@pytest.fixture(scope="module")
def console_url(gateway_url: str, e2e_settings: Settings) -> Iterator[str]:
    serve.run(console_gateway(e2e_settings), name=APP, route_prefix=PREFIX)
    yield gateway_url + PREFIX
    serve.delete(APP)


@pytest.fixture(scope="module")
def node_suite() -> Path:
    """The suite's directory with its locked dependencies installed (once; node_modules is
    git-ignored and kept between runs). npm never downloads a browser here."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js 20+ and npm are needed for the console's browser tests")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    if not (SUITE / "node_modules" / "playwright-core").is_dir():
        env = os.environ | {"PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=SUITE,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return SUITE


async def _run_suite(
    suite: Path, env: dict[str, str], files: tuple[str, ...] = ("sse.test.mjs", "console.test.mjs")
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "node",
        "--test",
        "--test-reporter=spec",
        "--test-concurrency=1",
        *files,
        cwd=suite,
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return -1, output.decode(errors="replace") + f"\n(killed after {NODE_TIMEOUT_S} s)"
    return int(process.returncode or 0), output.decode(errors="replace")


async def test_console_in_a_browser(
    console_url: str,
    node_suite: Path,
    http: httpx.AsyncClient,
    fake_llm: FakeLLM,
    tmp_path: Path,
) -> None:
    _tenant_id, tenant_key = await new_tenant(http, "ui")
    token = uuid.uuid4().hex[:10]
    stream_prompt = f"tell me a story {token}"
    # Markup in model output must show as text; the words arrive one chunk at a time.
    stream_answer = (
        f"Once upon a time <b>{token}</b> streamed word by word "
        "through the gateway into a browser that showed each one as it came."
    )
    fake_llm.script.add_rule(
        Rule(
            when_last_user_contains=stream_prompt,
            reply=Reply(content=stream_answer, inter_chunk_s=0.08),
        )
    )
    tool_prompt = f"what is 6 times 7? {token}-tool"
    tool_answer = f"6 times 7 is 42 ({token})"
    call = ToolCall(name="calculator", arguments={"expression": "6*7"})
    script_tool_turn(fake_llm, f"{token}-tool", call, tool_answer)
    shot_prompt = f"show me the page {token}-shot"
    shot_answer = f"Here is the screenshot ({token})"
    script_tool_turn(fake_llm, f"{token}-shot", ToolCall(name="browser_screenshot"), shot_answer)

    code, output = await _run_suite(
        node_suite,
        {
            "CONSOLE_URL": f"{console_url}/ui/",
            "CHROMIUM_PATH": str(CHROMIUM),
            "TENANT_KEY": tenant_key,
            "ADMIN_KEY": ADMIN_KEY,
            "AGENT": str(PROFILE["name"]),
            "STREAM_PROMPT": stream_prompt,
            "STREAM_ANSWER": stream_answer,
            "TOOL_PROMPT": tool_prompt,
            "TOOL_ANSWER": tool_answer,
            "TOOL_NAME": call.name,
            "BROWSER_AGENT": str(BROWSER_PROFILE["name"]),
            "SHOT_PROMPT": shot_prompt,
            "SHOT_ANSWER": shot_answer,
            "PROVIDER_NAME": f"ui-{token}",
            "PROVIDER_BASE": fake_llm.base_url,
            "PROVIDER_SECRET": f"sk-console-{uuid.uuid4().hex}",
            "SCREENSHOT_DIR": str(tmp_path),
        },
    )
    print(output)
    assert code == 0, (
        f"the console's browser tests failed (exit {code}); screenshots of each scenario are "
        f"in {tmp_path}:\n{output}"
    )


async def test_console_approvals(
    console_url: str,
    node_suite: Path,
    http: httpx.AsyncClient,
    fake_llm: FakeLLM,
    tmp_path: Path,
) -> None:
    """The session view shows a call the tenant's policy sends to a person; approving, editing
    and rejecting it in the browser resumes each turn to its answer, and a waiting turn can be
    cancelled (approvals.test.mjs)."""
    tenant_id, tenant_key = await new_tenant(http, "ui-approvals")
    token = uuid.uuid4().hex[:10]
    reason = "a <b>person</b> checks every calculation"
    hostile = "<img src=x onerror=alert(1)>6*7"
    prompts = {
        "APPROVE": (f"approve {token}-a", {"expression": "6*7"}, f"approved: 42 ({token})"),
        "EDIT": (f"edit {token}-e", {"expression": hostile}, f"edited: 48 ({token})"),
        "REJECT": (f"reject {token}-r", {"expression": "6*7"}, f"no tool then ({token})"),
    }
    env = {
        "CONSOLE_URL": f"{console_url}/ui/",
        "CHROMIUM_PATH": str(CHROMIUM),
        "TENANT_KEY": tenant_key,
        "AGENT": str(PROFILE["name"]),
        "REASON": reason,
        "EDIT_SHOWN": hostile,
        "SCREENSHOT_DIR": str(tmp_path),
    }
    for name, (prompt, arguments, answer) in prompts.items():
        script_approval_turn(fake_llm, prompt, arguments, answer)
        env |= {f"{name}_PROMPT": prompt, f"{name}_ANSWER": answer}
    env["CANCEL_PROMPT"] = f"cancel {token}-c"
    script_approval_turn(fake_llm, env["CANCEL_PROMPT"], {"expression": "1"}, "never answered")

    policy = {"approvals": [{"tools": ["calculator"], "reason": reason}]}
    async with tenant_policy(tenant_id, policy):
        code, output = await _run_suite(node_suite, env, ("approvals.test.mjs",))
    print(output)
    assert code == 0, (
        f"the console's approval tests failed (exit {code}); screenshots are in {tmp_path}:\n"
        f"{output}"
    )
