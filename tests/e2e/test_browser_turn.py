"""A turn in which the model drives a real headless Chromium through the browser tools, over the
HTTP API: pooled browser actor, OPA deciding every call and the navigation target, a screenshot
stored as an attachment. Pages are served by the test on 127.0.0.1."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from agentcluster.testing.fake_llm import FakeLLM, RecordedRequest, Reply, Rule, ToolCall
from tests.e2e.conftest import new_tenant, tenant_policy
from tests.integration.test_browser import Server
from tests.integration.test_browser_egress import Listener, attack_pages

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def site() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


LOOPBACK_ALLOWED = {
    "network": {
        "allow_public": False,
        "allow_hosts": [],
        "allow_cidrs": ["127.0.0.1/32"],
        "allow_metadata": [],
    }
}


@pytest.fixture
async def tenant(http: httpx.AsyncClient) -> AsyncIterator[tuple[str, str]]:
    """A tenant whose policy lets its tools reach 127.0.0.1 (loopback is denied by default)."""
    tenant_id, key = await new_tenant(http, "b")
    async with tenant_policy(tenant_id, LOOPBACK_ALLOWED):
        yield tenant_id, key


def _index(page: str, pattern: str) -> int:
    found = re.search(r"\[(\d+)\]<" + pattern, page)
    assert found, f"no element matching {pattern!r} in:\n{page}"
    return int(found.group(1))


def _call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name=name, arguments=arguments)


def order_form_driver(url: str) -> Any:
    """The fake model's side of the turn: it reads each tool result and picks the next call."""

    def reply(request: RecordedRequest) -> Reply:
        last_user = max(i for i, m in enumerate(request.messages) if m["role"] == "user")
        turn = request.messages[last_user:]
        results = [json.loads(m["content"]) for m in turn if m["role"] == "tool"]
        assert all("error" not in r for r in results), results
        if len(results) == 0:
            return Reply(tool_calls=[_call("browser_navigate", url=f"{url}/form.html")])
        if len(results) == 1:
            return Reply(tool_calls=[_call("browser_state")])
        if len(results) == 2:
            page = results[1]["page"]
            return Reply(
                tool_calls=[
                    _call("browser_type", index=_index(page, "input name=name"), text="Ada"),
                    _call("browser_select", index=_index(page, "select"), option="Green"),
                    _call("browser_click", index=_index(page, "button")),
                ]
            )
        if len(results) == 5:
            return Reply(tool_calls=[_call("browser_extract", selector="#summary")])
        if len(results) == 6:
            return Reply(tool_calls=[_call("browser_screenshot")])
        return Reply(content=f"Done. The page says: {results[5]['text'].strip()}")

    return reply


async def test_a_turn_fills_and_submits_a_form_through_the_browser_tools(
    http: httpx.AsyncClient, tenant: tuple[str, str], site: Server, fake_llm: FakeLLM
) -> None:
    _tenant_id, key = tenant
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(
        Rule(when=lambda r: token in str(r.messages), reply=order_form_driver(site.url))
    )
    created = await http.post("/v1/sessions", json={"agent": "surfer"}, headers=_auth(key))
    session_id = created.json()["session_id"]
    answer = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": f"Order something green for Ada. {token}"},
        headers=_auth(key),
        timeout=180,
    )
    body = answer.json()
    assert body["status"] == "completed", body
    assert body["content"].startswith("Done. The page says:")
    assert "Thanks, Ada: one green order." in body["content"]
    assert "/submitted?name=Ada&colour=green" in site.paths

    events: list[dict[str, Any]] = []
    async with http.stream(
        "GET", f"/v1/sessions/{session_id}/events?after=0", headers=_auth(key)
    ) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
                if events[-1]["type"] == "turn.completed":
                    break
    decided = [e for e in events if e["type"] == "tool.decided"]
    assert [e["tool"] for e in decided] == [
        "browser_navigate",
        "browser_state",
        "browser_type",
        "browser_select",
        "browser_click",
        "browser_extract",
        "browser_screenshot",
    ]
    assert all(e["allowed"] and e["engine"] == "opa" for e in decided)
    shot = next(
        e for e in events if e["type"] == "tool.completed" and e["tool"] == "browser_screenshot"
    )
    attachment = shot["result"]["attachment"]
    assert attachment["media_type"] == "image/png" and "data_b64" not in json.dumps(shot)
    png = await http.get(attachment["url"], headers=_auth(key))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and len(png.content) == attachment["size"]
    _other_tenant, other_key = await new_tenant(http, "o")
    hidden = await http.get(attachment["url"], headers=_auth(other_key))
    assert hidden.status_code == 404


async def test_navigation_to_loopback_is_denied_without_an_allowlist(
    http: httpx.AsyncClient, tenant_key: str, site: Server, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    target = f"{site.url}/form.html?{token}"
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: token in str(r.messages) and r.messages[-1]["role"] == "tool",
            reply=Reply(content="could not open it"),
        )
    )
    fake_llm.script.add_rule(
        Rule(
            when_last_user_contains=token,
            reply=Reply(tool_calls=[_call("browser_navigate", url=target)]),
        )
    )
    created = await http.post("/v1/sessions", json={"agent": "surfer"}, headers=_auth(tenant_key))
    session_id = created.json()["session_id"]
    answer = await http.post(
        f"/v1/sessions/{session_id}/messages?wait=true",
        json={"content": f"open the form {token}"},
        headers=_auth(tenant_key),
        timeout=180,
    )
    assert answer.json()["content"] == "could not open it"
    assert not any(token in path for path in site.paths)
    messages = (
        await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(tenant_key))
    ).json()["items"]
    tool_result = next(m for m in messages if m["role"] == "tool")["content"]
    assert "127.0.0.1" in tool_result and "loopback" in tool_result


async def test_a_page_in_a_turn_cannot_reach_a_listener_the_tenant_may_not_reach(
    http: httpx.AsyncClient, tenant: tuple[str, str], fake_llm: FakeLLM
) -> None:
    """The model (scripted) opens a page on 127.0.0.1, allowed, whose iframe, images, fetch, XHR,
    WebSocket and beacon aim at 127.0.0.2, which the tenant's OPA data does not allow, then tries
    the backslash form of that address: the 127.0.0.2 listener accepts no connection."""
    _tenant_id, key = tenant
    forbidden = Listener("127.0.0.2")
    site = Listener("127.0.0.1", attack_pages(forbidden.origin, forbidden.origin))
    token = uuid.uuid4().hex
    sneaky = f"http://127.0.0.2:{forbidden.port}\\@127.0.0.1:{site.port}/"

    def reply(request: RecordedRequest) -> Reply:
        results = [m for m in request.messages if m["role"] == "tool"]
        if not results:
            return Reply(tool_calls=[_call("browser_navigate", url=f"{site.origin}/sub.html")])
        if len(results) == 1:
            return Reply(tool_calls=[_call("browser_state")])
        if len(results) == 2:
            return Reply(tool_calls=[_call("browser_navigate", url=sneaky)])
        return Reply(content="done trying")

    fake_llm.script.add_rule(Rule(when=lambda r: token in str(r.messages), reply=reply))
    try:
        created = await http.post("/v1/sessions", json={"agent": "surfer"}, headers=_auth(key))
        session_id = created.json()["session_id"]
        answer = await http.post(
            f"/v1/sessions/{session_id}/messages?wait=true",
            json={"content": f"look around {token}"},
            headers=_auth(key),
            timeout=180,
        )
        assert answer.json()["content"] == "done trying", answer.json()
        messages = (
            await http.get(f"/v1/sessions/{session_id}/messages", headers=_auth(key))
        ).json()["items"]
        results = [m["content"] for m in messages if m["role"] == "tool"]
        assert "/sub.html" in results[0] and str(forbidden.port) in "".join(results[:2])
        assert "backslash" in results[2]
        assert any(path.startswith("/sub.html") for path, _ in site.requests)
        assert forbidden.connections == 0, forbidden.requests
    finally:
        site.close()
        forbidden.close()
