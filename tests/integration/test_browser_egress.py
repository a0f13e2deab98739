"""Browser egress and isolation on real Chromium: every request passes the actor's proxy.

An allowed site on 127.0.0.1 serves pages that reach, in every way a page can, for a second
listener on 127.0.0.2 that the tenant's policy does not allow; that listener counts every TCP
connection it accepts and must count none. A tenant whose policy allows 127.0.0.0/8 runs the same
page as a control (the listener then does see it, so the test can fail). Names resolve through a
fixed table (no DNS); only loopback is ever connected to.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import ray

from actors.browser import BrowserActor, PooledBrowserTools
from actors.pool import ActorPool, PoolConfig, PoolSpec
from agentcluster.browser import BrowserLlm
from agentcluster.browser._handlers import agent_tools as _agent_tools
from agentcluster.config import BrowserSettings
from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Script
from agentcluster.tools import PolicyDecision, ToolInvocation, ToolOutcome
from agentcluster.tools._ssrf import AddressCategory, DefaultNetworkPolicy
from tests.conftest import eventually
from tests.integration.test_browser import index_of
from tests.support.network import StaticResolver

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

SETTINGS = BrowserSettings(action_timeout_s=20.0, task_max_steps=3)
CLOSED = "t-closed"  # may reach 127.0.0.1 only
OPEN = "t-open"  # may reach all of 127.0.0.0/8 (the control)


class TenantCidrPolicy:
    """Per-tenant CIDR allowlists over DefaultNetworkPolicy; tools other than
    browser_evaluate allowed."""

    def __init__(self, cidrs: dict[str, list[str]]) -> None:
        self._by_tenant = {t: DefaultNetworkPolicy(allow_cidrs=c) for t, c in cidrs.items()}

    async def decide_network(
        self,
        *,
        tenant_id: str,
        agent: str,
        tool: str,
        scheme: str,
        host: str,
        ip: str,
        port: int,
        category: AddressCategory,
    ) -> PolicyDecision:
        policy = self._by_tenant.get(tenant_id, DefaultNetworkPolicy())
        return await policy.decide_network(
            tenant_id=tenant_id,
            agent=agent,
            tool=tool,
            scheme=scheme,
            host=host,
            ip=ip,
            port=port,
            category=category,
        )

    async def decide_tool(self, invocation: ToolInvocation) -> PolicyDecision:
        allowed = invocation.tool != "browser_evaluate"
        return PolicyDecision(allowed=allowed, reason="test policy", engine="test")


POLICY = functools.partial(TenantCidrPolicy, {CLOSED: ["127.0.0.1/32"], OPEN: ["127.0.0.0/8"]})
RESOLVER = StaticResolver({"site.test": ["127.0.0.1"], "sneaky.test": ["127.0.0.2"]})


# --- servers ----------------------------------------------------------------------------------


class Listener(ThreadingHTTPServer):
    """An HTTP server that counts every connection it accepts and records each request."""

    daemon_threads = True

    def __init__(self, host: str, pages: dict[str, str] | None = None) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str]] = []  # (path, Cookie header)
        self.pages = pages or {}
        super().__init__((host, 0), _Handler)
        self.port = int(self.server_address[1])
        self.origin = f"http://{host}:{self.port}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Listener

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Cookie", "")))
        path = urlsplit(self.path).path
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.server.pages["redirect-to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.pages.get(path, "<title>plain</title><p>plain page</p>").encode()
        kind = "text/javascript" if path.endswith(".js") else "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def attack_pages(target: str, named: str) -> dict[str, str]:
    """Pages that make the browser ask for ``target`` (an origin) in every way a page can."""
    sub = f"""<title>loading</title>
<iframe src="{target}/iframe"></iframe><img src="{target}/img"><img src="{named}/named-img">
<link rel="stylesheet" href="{target}/style.css"><script src="{target}/script.js"></script>
<script>
const tries = [
  fetch("{target}/fetch", {{mode: "no-cors"}}).catch(() => null),
  new Promise(done => {{ const x = new XMLHttpRequest(); x.onloadend = done;
                        x.open("GET", "{target}/xhr"); x.send(); }}),
  new Promise(done => {{ const w = new WebSocket("{target.replace("http", "ws")}/ws");
                        w.onerror = w.onclose = done; }}),
];
navigator.sendBeacon("{target}/beacon", "x");
Promise.all(tries).then(() => {{ document.title = "tried"; }});
</script>"""
    return {
        "/sub.html": sub,
        "/js.html": f'<title>js</title><script>location.href = "{target}/js";</script>',
        "/meta.html": f'<meta http-equiv="refresh" content="0; url={target}/meta"><title>m</title>',
        "/link.html": f'<title>link</title><a id="go" href="{target}/link">go there</a>',
        "redirect-to": f"{target}/redirected",
    }


@pytest.fixture(scope="module")
def forbidden() -> Iterator[Listener]:
    server = Listener("127.0.0.2")
    yield server
    server.close()


@pytest.fixture(scope="module")
def site(forbidden: Listener) -> Iterator[Listener]:
    named = f"http://sneaky.test:{forbidden.port}"
    server = Listener("127.0.0.1", attack_pages(forbidden.origin, named))
    yield server
    server.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    actor = (
        ray.remote(BrowserActor)
        .options(num_cpus=0, max_concurrency=8)
        .remote(SETTINGS, None, None, None, POLICY, RESOLVER)
    )
    await actor.health.remote()
    yield actor
    await actor.stop.remote()
    ray.kill(actor)


async def call(actor: Any, tenant: str, tool: str, llm: Any = None, **arguments: Any) -> Any:
    invocation = ToolInvocation(
        tenant_id=tenant,
        session_id=f"s-{tenant}",
        turn_id="turn-1",
        agent="surfer",
        tool_call_id=f"call-{uuid.uuid4().hex[:8]}",
        tool=tool,
        arguments=arguments,
    )
    return ToolOutcome.model_validate(await actor.execute.remote(invocation, llm))


async def denied_count(actor: Any) -> int:
    return int((await actor.health.remote())["egress"]["denied"])


# --- egress -----------------------------------------------------------------------------------


async def test_chromium_runs_sandboxed_as_an_unprivileged_user_behind_its_proxy(
    browser: Any,
) -> None:
    health = await browser.health.remote()
    assert health["sandbox"] == "namespace+seccomp"
    assert health["egress_proxy"].startswith("http://127.0.0.1:")
    expected_uid = SETTINGS.run_as_uid if health["run_as"] else None
    assert health["browser_uid"] != 0 and (
        expected_uid is None or health["browser_uid"] == expected_uid
    )


async def test_no_way_a_page_asks_reaches_a_listener_the_policy_does_not_allow(
    browser: Any, site: Listener, forbidden: Listener
) -> None:
    await browser.reset.remote()
    before = await denied_count(browser)
    opened = await call(browser, CLOSED, "browser_navigate", url=f"{site.origin}/sub.html")
    assert opened.ok, opened.error

    async def tried() -> bool:
        state = await call(browser, CLOSED, "browser_state")
        return bool(state.ok and state.result["title"] == "tried")

    await eventually(tried, message="the page tries every way out")
    # iframe, 2 images, stylesheet, script, fetch, XHR, WebSocket, beacon: each refused.
    await eventually(
        lambda: _at_least(browser, before + 8), message="the proxy refuses each request"
    )
    for page in ("/js.html", "/meta.html", "/redirect"):
        await call(browser, CLOSED, "browser_navigate", url=f"{site.origin}{page}")
    opened = await call(browser, CLOSED, "browser_navigate", url=f"{site.origin}/link.html")
    page = (await call(browser, CLOSED, "browser_state")).result["page"]
    clicked = await call(browser, CLOSED, "browser_click", index=index_of(page, "a id=go"))
    await eventually(
        lambda: _at_least(browser, before + 12), message="navigations away are refused"
    )
    assert forbidden.connections == 0, forbidden.requests
    assert any(str(forbidden.port) in line for line in clicked.result.get("blocked", []))


async def _at_least(actor: Any, count: int) -> bool:
    return await denied_count(actor) >= count


async def test_the_control_tenant_does_reach_the_listener(
    browser: Any, site: Listener, forbidden: Listener
) -> None:
    await browser.reset.remote()
    seen = forbidden.connections
    opened = await call(browser, OPEN, "browser_navigate", url=f"{site.origin}/sub.html")
    assert opened.ok, opened.error

    async def reached() -> bool:
        return {"/iframe", "/img", "/fetch", "/xhr"} <= {p for p, _ in forbidden.requests}

    await eventually(reached, message="an allowed tenant's page reaches the listener")
    assert forbidden.connections > seen
    await browser.reset.remote()


async def test_ambiguous_urls_and_names_resolving_to_loopback_are_refused(
    browser: Any, site: Listener, forbidden: Listener
) -> None:
    await browser.reset.remote()
    port, seen = forbidden.port, forbidden.connections
    for url, reason in [
        (f"http://127.0.0.2:{port}\\@127.0.0.1:{site.port}/", "backslash"),
        (f"http://127.0.0.1:{site.port}\\@[::ffff:127.0.0.2]:{port}/", "backslash"),
        (f"http://127.0.0.1:{site.port}@127.0.0.2:{port}/", "credentials"),
        (f"http://sneaky.test:{port}/", "loopback"),
    ]:
        outcome = await call(browser, CLOSED, "browser_navigate", url=url)
        assert not outcome.ok and reason in (outcome.error or ""), (url, outcome.error)
    named = await call(browser, CLOSED, "browser_navigate", url=f"http://site.test:{site.port}/")
    assert named.ok and named.result["title"] == "plain"  # resolved by the proxy, pinned
    assert forbidden.connections == seen


# --- fresh context per lease -------------------------------------------------------------------

STORE = """<title>storing</title>
<script>
document.cookie = "who=A; max-age=3600; path=/";
localStorage.setItem("who", "A");
indexedDB.open("db-A").onsuccess = () => {};
caches.open("cache-A").then(c => c.put("/cached", new Response("A")));
</script>
<iframe src="FRAME/frame-store.html" onload="document.title='stored'"></iframe>"""
FRAME_STORE = """<script>
document.cookie = "frame=A; max-age=3600; path=/";
localStorage.setItem("frame", "A");
</script>"""
READ = """<title>reading</title><pre id="out"></pre>
<script>
const out = {cookie: document.cookie, ls: localStorage.getItem("who"), frame: null};
Promise.all([indexedDB.databases(), caches.keys()]).then(([dbs, keys]) => {
  out.dbs = dbs.map(d => d.name); out.caches = keys;
  addEventListener("message", e => {
    out.frame = e.data; document.getElementById("out").textContent = JSON.stringify(out);
    document.title = "read";
  });
  const f = document.createElement("iframe"); f.src = "FRAME/frame-read.html";
  document.body.appendChild(f);
});
</script>"""
FRAME_READ = """<script>
parent.postMessage({cookie: document.cookie, ls: localStorage.getItem("frame")}, "*");
</script>"""


async def test_a_tenants_page_storage_is_invisible_to_the_next_lease(forbidden: Listener) -> None:
    frame = Listener(
        "127.0.0.1", {"/frame-store.html": FRAME_STORE, "/frame-read.html": FRAME_READ}
    )
    top = Listener(
        "127.0.0.1",
        {
            "/store.html": STORE.replace("FRAME", frame.origin),
            "/read.html": READ.replace("FRAME", frame.origin),
        },
    )
    config = PoolConfig(name=f"browser-{uuid.uuid4().hex[:6]}", min_size=1, max_size=1)
    kwargs = {"settings": SETTINGS, "policy_factory": POLICY, "resolver": RESOLVER}
    spec = PoolSpec(
        config=config, actor_class=BrowserActor, kwargs=kwargs, namespace="agentcluster-test"
    )
    pool = ActorPool.start(spec, lease_timeout_s=60.0)
    tools = PooledBrowserTools(pool)
    try:
        stored = await read_as(tools, "session-a", top, "/store.html", "stored")
        assert stored == "stored"
        mine = json.loads(await read_as(tools, "session-a", top, "/read.html", "read"))
        assert "who=A" in mine["cookie"] and mine["ls"] == "A"  # readable within the lease
        assert "frame=A" in mine["frame"]["cookie"] and mine["frame"]["ls"] == "A"
        assert "db-A" in mine["dbs"] and "cache-A" in mine["caches"]
        assert await tools.end_session("session-a")
        top_before, frame_before = len(top.requests), len(frame.requests)

        theirs = json.loads(await read_as(tools, "session-b", top, "/read.html", "read"))
        assert theirs == {
            "cookie": "",
            "ls": None,
            "frame": {"cookie": "", "ls": None},
            "dbs": [],
            "caches": [],
        }
        later = [*top.requests[top_before:], *frame.requests[frame_before:]]
        assert later and all(cookie == "" for _path, cookie in later)  # the servers saw none
    finally:
        await pool.shutdown()
        top.close()
        frame.close()


async def read_as(
    tools: PooledBrowserTools, session_id: str, site: Listener, path: str, title: str
) -> str:
    tenant = CLOSED if session_id == "session-a" else f"{CLOSED}"
    invocation = ToolInvocation(
        tenant_id=tenant,
        session_id=session_id,
        turn_id="turn-1",
        agent="surfer",
        tool_call_id="c1",
        tool="browser_navigate",
        arguments={"url": f"{site.origin}{path}"},
    )
    assert (await tools.execute(invocation)).ok
    look = invocation.model_copy(update={"tool": "browser_state", "arguments": {}})

    async def done() -> bool:
        state = await tools.execute(look)
        return bool(state.ok and state.result["title"] == title)

    await eventually(done, message=f"{path} finishes")
    if title != "read":
        return title
    extract = invocation.model_copy(
        update={"tool": "browser_extract", "arguments": {"selector": "#out"}}
    )
    text = (await tools.execute(extract)).result["text"]
    return text[text.index("{") : text.rindex("}") + 1]


# --- evaluate ---------------------------------------------------------------------------------


def test_browser_task_offers_evaluate_only_when_allowed() -> None:
    without = _agent_tools(None, evaluate=False)  # type: ignore[arg-type]
    assert "evaluate" not in without.registry.registry.actions
    assert "navigate" in without.registry.registry.actions
    allowed = _agent_tools(None, evaluate=True)  # type: ignore[arg-type]
    assert "evaluate" in allowed.registry.registry.actions


async def test_a_model_asking_browser_task_to_evaluate_runs_no_javascript(
    browser: Any, site: Listener
) -> None:
    await browser.reset.remote()
    marker = f"/evaluated-{uuid.uuid4().hex[:6]}"

    def evil(request: RecordedRequest) -> Reply:
        brain = {"evaluation_previous_goal": "ok", "memory": "m", "next_goal": "run js"}
        code = f"fetch('{site.origin}{marker}')"
        return Reply(content={**brain, "action": [{"evaluate": {"code": code}}]})

    with FakeLLM(Script(default=evil)) as llm:
        assert (await call(browser, CLOSED, "browser_navigate", url=f"{site.origin}/")).ok
        model = BrowserLlm(model="fake-browser-model", api_base=llm.base_url, api_key="test")
        outcome = await call(browser, CLOSED, "browser_task", llm=model, task="run some js")
        schema = json.dumps(llm.requests[0].json_schema) if llm.requests else ""
    assert not any(marker in path for path, _ in site.requests)
    assert '"evaluate"' not in schema  # never offered to the model
    assert not (outcome.ok and outcome.result["success"])


def test_the_second_listener_is_really_another_address() -> None:
    assert ipaddress.ip_address("127.0.0.2") not in ipaddress.ip_network("127.0.0.1/32")
