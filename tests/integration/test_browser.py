"""Browser actors on real headless Chromium, against pages served by the test on 127.0.0.1.

At most two browsers run at once: one actor shared by the module, one in the pool test. Every
Chromium killed here is one these actors started (its PID comes from the actor).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import ray

from actors.browser import CRASHED, BrowserActor, PooledBrowserTools
from actors.pool import ActorPool, PoolConfig, PoolSpec
from agentcluster.browser import BrowserLlm
from agentcluster.config import BrowserSettings
from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Script
from agentcluster.tools import ToolInvocation, ToolOutcome
from agentcluster.tools._ssrf import DefaultNetworkPolicy
from tests.conftest import eventually
from tests.support.network import StaticResolver

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

PAGES = Path(__file__).resolve().parent.parent / "support" / "pages"
SETTINGS = BrowserSettings(action_timeout_s=20.0, task_max_steps=6)
# The test site is on 127.0.0.1, which browsers reach only when the policy allows it.
LOOPBACK_POLICY = functools.partial(DefaultNetworkPolicy, allow_cidrs=["127.0.0.1/32"])
NO_DNS = StaticResolver({})  # names (Chromium's own service hosts) never reach a DNS server


# --- the site ---------------------------------------------------------------------------------


class Site(SimpleHTTPRequestHandler):
    """Static pages, plus /submitted (echoes the form) and /slow (answers after 10 s)."""

    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/submitted":
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            self._html(
                "Order received",
                f'<p id="summary">Thanks, {query.get("name", "?")}: '
                f'one {query.get("colour", "?")} order.</p>',
            )
        elif parts.path == "/slow":
            time.sleep(10)
            self._html("Slow", "<p>finally</p>")
        else:
            super().do_GET()

    def _html(self, title: str, body: str) -> None:
        data = f"<!doctype html><title>{title}</title><body>{body}</body>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class Server:
    def __init__(self) -> None:
        self.paths: list[str] = []
        handler = type("Handler", (Site,), {"paths": self.paths})
        self._httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(PAGES))
        )
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def site() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


async def deny_marked(url: str, invocation: ToolInvocation | None) -> str | None:
    """The test's navigation policy: URLs under /denied are refused."""
    return "refused by the test policy" if "/denied" in url else None


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    actor = (
        ray.remote(BrowserActor)
        .options(num_cpus=0, max_concurrency=8)
        .remote(SETTINGS, None, deny_marked, None, LOOPBACK_POLICY, NO_DNS)
    )
    await actor.health.remote()
    yield actor
    pid = await actor.browser_pid.remote()
    await actor.stop.remote()
    ray.kill(actor)
    assert pid is None or not _running(pid)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def call(actor: Any, tool: str, llm: BrowserLlm | None = None, **arguments: Any) -> Any:
    invocation = ToolInvocation(
        tenant_id="t-browser",
        session_id="s-browser",
        turn_id="turn-1",
        agent="tester",
        tool_call_id=f"call-{uuid.uuid4().hex[:8]}",
        tool=tool,
        arguments=arguments,
    )
    return ToolOutcome.model_validate(await actor.execute.remote(invocation, llm))


def index_of(page: str, pattern: str) -> int:
    found = re.search(r"\[(\d+)\]<" + pattern, page)
    assert found, f"no element matching {pattern!r} in:\n{page}"
    return int(found.group(1))


# --- tools ------------------------------------------------------------------------------------


async def test_fill_and_submit_a_form_with_the_browser_tools(browser: Any, site: Server) -> None:
    opened = await call(browser, "browser_navigate", url=f"{site.url}/form.html")
    assert opened.ok, opened.error
    assert opened.result == {"url": f"{site.url}/form.html", "title": "Order form"}

    state = await call(browser, "browser_state")
    assert state.ok and state.result["title"] == "Order form"
    page = state.result["page"]
    typed = await call(browser, "browser_type", index=index_of(page, "input name=name"), text="Ada")
    assert typed.ok, typed.error
    chosen = await call(browser, "browser_select", index=index_of(page, "select"), option="Green")
    assert chosen.ok, chosen.error
    clicked = await call(browser, "browser_click", index=index_of(page, "button"))
    assert clicked.ok, clicked.error

    after = await call(browser, "browser_state")
    assert after.result["url"] == f"{site.url}/submitted?name=Ada&colour=green"
    assert "Thanks, Ada: one green order." in after.result["page"]
    summary = await call(browser, "browser_extract", selector="#summary")
    assert summary.ok and "Thanks, Ada: one green order." in summary.result["text"]
    whole = await call(browser, "browser_extract")
    assert whole.result["text"].strip() == "Thanks, Ada: one green order."


async def test_scroll_search_and_screenshot(browser: Any, site: Server) -> None:
    assert (await call(browser, "browser_navigate", url=f"{site.url}/form.html")).ok
    scrolled = await call(browser, "browser_scroll", direction="down", amount=2)
    assert scrolled.ok and "Scrolled down" in scrolled.result["result"]
    found = await call(browser, "browser_extract", query="End of the form")
    assert found.ok and "End of the form page" in found.result["text"]

    shot = await call(browser, "browser_screenshot")
    assert shot.ok, shot.error
    png = base64.b64decode(shot.result["attachment"]["data_b64"])
    assert shot.result["attachment"]["media_type"] == "image/png"
    assert png.startswith(b"\x89PNG") and shot.result["width"] > 0 and shot.result["height"] > 0


async def test_bad_calls_come_back_as_tool_errors(browser: Any, site: Server) -> None:
    not_http = await call(browser, "browser_navigate", url="file:///etc/passwd")
    assert not not_http.ok and "scheme 'file' is not allowed" in (not_http.error or "")
    denied = await call(browser, "browser_navigate", url=f"{site.url}/denied/page")
    assert not denied.ok and "refused by the test policy" in (denied.error or "")
    assert not any(path.startswith("/denied") for path in site.paths)
    bad = await call(browser, "browser_click", index="first")
    assert not bad.ok and "invalid arguments for browser_click" in (bad.error or "")
    unknown = await call(browser, "browser_fly")
    assert not unknown.ok and "unknown browser tool" in (unknown.error or "")
    no_model = await call(browser, "browser_task", task="do something")
    assert not no_model.ok and "needs a model" in (no_model.error or "")


# --- browser_task -----------------------------------------------------------------------------


def drive_the_order_flow(request: RecordedRequest) -> Reply:
    """A fake model for browser-use's Agent: reads the page in the prompt, answers its JSON."""
    page = request.last_user_text
    brain = {"evaluation_previous_goal": "ok", "memory": "ordering", "next_goal": "continue"}
    if "Thanks," in page:
        answer = re.search(r"Thanks, [^<\n]*", page)
        actions: list[dict[str, Any]] = [
            {"done": {"text": answer.group(0) if answer else "done", "success": True}}
        ]
    elif "<select" in page:
        actions = [
            {"input": {"index": index_of(page, "input name=name"), "text": "Grace"}},
            {"select_dropdown": {"index": index_of(page, "select"), "text": "Blue"}},
            {"click": {"index": index_of(page, "button")}},
        ]
    else:
        actions = [{"click": {"index": index_of(page, "a id=next")}}]
    return Reply(content={**brain, "action": actions})


async def test_browser_task_runs_the_agent_through_a_multi_page_flow(
    browser: Any, site: Server
) -> None:
    with FakeLLM(Script(default=drive_the_order_flow)) as llm:
        assert (await call(browser, "browser_navigate", url=f"{site.url}/start.html")).ok
        model = BrowserLlm(model="fake-browser-model", api_base=llm.base_url, api_key="test")
        outcome = await call(
            browser, "browser_task", llm=model, task="Order one blue item for Grace."
        )
        requests = llm.requests
    assert outcome.ok, outcome.error
    result = outcome.result
    assert result["done"] and result["success"], result
    assert result["answer"] == "Thanks, Grace: one blue order."
    assert result["url"] == f"{site.url}/submitted?name=Grace&colour=blue"
    assert "/submitted?name=Grace&colour=blue" in site.paths
    assert len(requests) == 3  # start page, form page, thanks page
    assert all(request.json_schema is not None for request in requests)
    assert all(request.model == "fake-browser-model" for request in requests)


# --- crashes ----------------------------------------------------------------------------------


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


async def test_chromium_killed_mid_call_gives_a_clear_error_then_recovers(
    browser: Any, site: Server
) -> None:
    assert (await call(browser, "browser_navigate", url=f"{site.url}/start.html")).ok
    old_pid = await browser.browser_pid.remote()
    old_children = _children(old_pid)
    pending = asyncio.ensure_future(call(browser, "browser_navigate", url=f"{site.url}/slow"))

    async def slow_page_requested() -> bool:
        return "/slow" in site.paths

    await eventually(slow_page_requested, message="the browser asks for the slow page")
    os.kill(old_pid, signal.SIGKILL)
    crashed = await pending
    assert not crashed.ok and crashed.error == CRASHED

    new_pid = await browser.browser_pid.remote()
    assert new_pid is not None and new_pid != old_pid and _running(new_pid)
    recovered = await call(browser, "browser_navigate", url=f"{site.url}/form.html")
    assert recovered.ok, recovered.error

    async def old_processes_gone() -> bool:
        return not any(_running(process.pid) for process in [*old_children])

    await eventually(old_processes_gone, message="the dead browser's children exit")


async def test_chromium_dead_between_calls_is_noticed_by_the_next_call(
    browser: Any, site: Server
) -> None:
    old_pid = await browser.browser_pid.remote()
    os.kill(old_pid, signal.SIGKILL)

    async def dead() -> bool:
        return not _running(old_pid)

    await eventually(dead, message="chromium exits")
    crashed = await call(browser, "browser_state")
    assert not crashed.ok and crashed.error == CRASHED
    assert (await call(browser, "browser_navigate", url=f"{site.url}/start.html")).ok
    health = await browser.health.remote()
    assert health["browser_alive"] and health["restarts"] >= 1


# --- pooled -----------------------------------------------------------------------------------


async def test_a_pooled_browser_is_sticky_per_session_and_reset_between_leases(
    site: Server,
) -> None:
    config = PoolConfig(name=f"browser-{uuid.uuid4().hex[:6]}", min_size=1, max_size=1)
    spec = PoolSpec(
        config=config,
        actor_class=BrowserActor,
        kwargs={"settings": SETTINGS, "policy_factory": LOOPBACK_POLICY, "resolver": NO_DNS},
        namespace="agentcluster-test",
    )
    pool = ActorPool.start(spec, lease_timeout_s=30.0)
    tools = PooledBrowserTools(pool)
    try:

        async def warm() -> bool:
            return (await pool.stats()).idle == 1

        await eventually(warm, timeout=90, message="the pool starts its browser")
        first = ToolInvocation(
            tenant_id="t",
            session_id="session-1",
            turn_id="turn-1",
            agent="a",
            tool_call_id="c1",
            tool="browser_navigate",
            arguments={"url": f"{site.url}/form.html"},
        )
        assert (await tools.execute(first)).ok
        look = first.model_copy(update={"tool": "browser_state", "arguments": {}})
        state = await tools.execute(look)
        assert state.ok and state.result["title"] == "Order form"  # same browser, same page

        other = look.model_copy(update={"session_id": "session-2"})
        impatient = PooledBrowserTools(pool, lease_timeout_s=0.5)
        busy = await impatient.execute(other)
        assert not busy.ok and "no browser is free" in (busy.error or "")

        assert await tools.end_session("session-1")
        fresh = await tools.execute(other)
        assert fresh.ok and fresh.result["url"] == "about:blank"  # reset between leases
        lease = await pool.lease("session-2")
        pid = await lease.member.browser_pid.remote()
        assert pid is not None and _running(pid)
    finally:
        await pool.shutdown()
    assert not _running(pid)  # stopped with its pool
