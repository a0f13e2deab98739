"""The OpenAPI document is exact enough to generate a client from: every error an operation of the
native API can answer is declared as problem+json, request constraints (cursor, Idempotency-Key,
Last-Event-ID, ids, agent names) are in it and agree with what the gateway accepts, and a 405
lists the path's methods in ``Allow``. The schemathesis run against the real gateway is
tests/e2e/test_openapi_contract.py; these need no cluster."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcluster import api
from agentcluster.config import load_settings
from agentcluster.gateway import ProblemError, create_app
from agentcluster.gateway._app import EVENT_ID_PATTERN, _idempotency_key
from agentcluster.gateway._inputs import MAX_EVENT_ID, parse_event_id
from agentcluster.gateway._responses import (
    PROBLEM_JSON,
    derived_statuses,
    digits_at_most,
    problem_responses,
)
from agentcluster.runtime import Runtime
from agentcluster.store._sql_sessions import _decode_cursor, _encode_cursor

PROFILE = {"model": "fake-a", "system_prompt": "You test.", "tools": []}
OPENAI_PATHS = ("/v1/models", "/v1/chat/completions", "/v1/responses")


async def _no_runtime(settings: Any) -> Runtime:
    raise AssertionError("the document needs no runtime")


def _app(tmp_path: Path, agents: tuple[str, ...] = ("tester", "helper")) -> Any:
    for name in agents:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**PROFILE, "name": name}))
    return create_app(load_settings({"runtime": {"agents_dir": tmp_path}}), _no_runtime)


def _native(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, operations in document["paths"].items()
        if path.startswith("/v1/") and not path.startswith(OPENAI_PATHS)
        for method, operation in operations.items()
    ]


def test_every_error_of_the_native_api_is_declared_as_problem_json(tmp_path: Path) -> None:
    document = _app(tmp_path).openapi()
    native = _native(document)
    assert len(native) >= 20
    for path, method, operation in native:
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and (path, status) != ("/v1/ready", "503"):
                schema = response["content"][PROBLEM_JSON]["schema"]
                assert list(response["content"]) == [PROBLEM_JSON], (path, method, status)
                assert schema == {"$ref": "#/components/schemas/Problem"}, (path, method)
    schemas = document["components"]["schemas"]
    assert {"type", "title", "status"} <= set(schemas["Problem"]["required"])
    assert "HTTPValidationError" not in schemas  # FastAPI's 422 shape, which we never send


def test_statuses_follow_from_keys_bodies_parameters_and_the_routes_own_words(
    tmp_path: Path,
) -> None:
    paths = _app(tmp_path).openapi()["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return {s for s in paths[path][method]["responses"] if s[0] in "45"}

    authenticated = {"401", "403", "429", "503"}
    assert statuses("/v1/sessions", "post") == authenticated | {"400", "413", "422"}
    assert statuses("/v1/sessions/{session_id}/messages", "post") == (
        authenticated | {"400", "404", "409", "413", "422"}
    )
    assert statuses("/v1/sessions/{session_id}/events", "get") == authenticated | {
        "400",
        "404",
        "422",
    }
    assert statuses("/v1/agents", "get") == authenticated  # no parameters: never 422
    assert statuses("/v1/settings/providers", "put") >= {"409", "500"}
    assert statuses("/v1/health", "get") == set()
    assert statuses("/v1/ready", "get") == {"503"}  # the key is optional there: never 401
    assert paths["/v1/ready"]["get"]["security"] == [{}, {"bearer": []}]
    assert paths["/v1/agents"]["get"]["security"] == [{"bearer": []}]
    # The OpenAI-compatible routes keep OpenAI's error shape.
    error = paths["/v1/chat/completions"]["post"]["responses"]["401"]["content"]
    assert list(error) == ["application/json"]


def test_derived_statuses_of_an_operation() -> None:
    keyed = {"security": [{"bearer": []}], "requestBody": {}, "parameters": [{}]}
    assert derived_statuses(keyed) == {400, 401, 403, 413, 422, 429, 503}
    assert derived_statuses({"security": [{}, {"bearer": []}]}) == set()
    assert derived_statuses({"parameters": [{"in": "query"}]}) == {422}
    limited = problem_responses(429)[429]["headers"]
    assert {"Retry-After", "RateLimit-Limit"} <= set(limited)
    assert not any(header.get("required") for header in limited.values())
    assert "WWW-Authenticate" in problem_responses(401)[401]["headers"]
    declared = problem_responses(404, 409)
    assert set(declared) == {404, 409}
    assert declared[404]["content"][PROBLEM_JSON]["schema"]["$ref"].endswith("/Problem")


def test_request_constraints_are_in_the_document(tmp_path: Path) -> None:
    document = _app(tmp_path).openapi()
    paths = document["paths"]

    def parameter(path: str, method: str, name: str) -> dict[str, Any]:
        found = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        assert found, (path, method, name)
        return found[0]

    cursor = parameter("/v1/sessions", "get", "cursor")["schema"]["anyOf"][0]
    assert cursor["pattern"] == api.CURSOR_PATTERN
    idempotency = parameter("/v1/sessions/{session_id}/messages", "post", "idempotency-key")
    assert idempotency["schema"]["pattern"] == api.IDEMPOTENCY_KEY_PATTERN
    event_id = parameter("/v1/sessions/{session_id}/events", "get", "last-event-id")
    assert event_id["schema"]["pattern"] == EVENT_ID_PATTERN
    session_id = parameter("/v1/sessions/{session_id}", "get", "session_id")
    assert session_id["schema"]["pattern"] == api.ID_PATTERN
    names = [p["name"] for p in paths["/v1/sessions/{session_id}/messages"]["post"]["parameters"]]
    assert "accept" not in names and "authorization" not in names  # OpenAPI ignores those
    # The agents are deployment data: an enum, and required when none is called "default".
    agent = document["components"]["schemas"]["SessionCreateIn"]
    assert agent["properties"]["agent"]["enum"] == ["helper", "tester"]
    assert "agent" in agent["required"] and "default" not in agent["properties"]["agent"]
    assert parameter("/v1/agents/{name}", "get", "name")["schema"]["enum"] == ["helper", "tester"]
    messages = paths["/v1/sessions/{session_id}/messages"]["post"]["responses"]["200"]
    assert {"application/json", "text/event-stream"} <= set(messages["content"])


def test_a_default_agent_keeps_the_field_optional(tmp_path: Path) -> None:
    document = _app(tmp_path, ("default", "tester")).openapi()
    agent = document["components"]["schemas"]["SessionCreateIn"]
    assert agent["properties"]["agent"]["default"] == "default"
    assert "agent" not in agent.get("required", [])


@pytest.mark.parametrize("limit", [0, 7, 10, 250, 1000, 9999, 2**31 - 1, MAX_EVENT_ID])
def test_digits_at_most_matches_exactly_the_numbers_up_to_the_limit(limit: int) -> None:
    pattern = re.compile(digits_at_most(limit))
    width = len(str(limit))
    for value in {0, 1, limit // 2, limit - 1, limit, limit + 1, 10**width - 1, 10**width}:
        if value < 0:
            continue
        text = str(value)
        assert bool(pattern.match(text)) == (value <= limit and len(text) <= width), text
        padded = text.zfill(width)
        assert bool(pattern.match(padded)) == (value <= limit and len(padded) <= width), padded


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.from_regex(EVENT_ID_PATTERN, fullmatch=True), st.text(max_size=25)))
def test_the_event_id_pattern_is_what_the_gateway_accepts(value: str) -> None:
    try:
        parse_event_id(value)
        accepted = True
    except ProblemError:
        accepted = False
    assert accepted == bool(re.match(EVENT_ID_PATTERN, value)), repr(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.from_regex(api.IDEMPOTENCY_KEY_PATTERN, fullmatch=True), st.text()))
def test_the_idempotency_key_pattern_is_what_the_gateway_accepts(value: str) -> None:
    try:
        _idempotency_key(value)
        accepted = True
    except ProblemError:
        accepted = False
    assert accepted == bool(re.match(api.IDEMPOTENCY_KEY_PATTERN, value)), repr(value)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(api.CURSOR_PATTERN, fullmatch=True))
def test_every_string_of_the_cursor_pattern_is_a_cursor(cursor: str) -> None:
    created_at, session_id = _decode_cursor(cursor)
    assert created_at.tzinfo is not None and session_id


def test_the_store_writes_cursors_of_the_pattern() -> None:
    session_id = "3f2b8a1c-7d4e-4f5a-9b6c-0e1d2c3b4a59"
    stamp = datetime(2026, 12, 2, 4, 30, 1, 123456, tzinfo=UTC)
    for created_at in (
        stamp,
        stamp.replace(tzinfo=None),
        stamp.astimezone().replace(microsecond=7),
    ):
        cursor = _encode_cursor(created_at, session_id)
        assert re.match(api.CURSOR_PATTERN, cursor), cursor
        decoded, decoded_id = _decode_cursor(cursor)
        expected = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
        assert decoded == expected and decoded_id == session_id
    assert _decode_cursor(_encode_cursor(stamp, session_id))[0] - stamp == timedelta(0)


async def test_a_405_lists_every_method_of_the_path_in_allow(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=_app(tmp_path))  # routing only: no lifespan, no runtime
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        sessions = await http.request("PATCH", "/v1/sessions")
        one = await http.put("/v1/sessions/3f2b8a1c-7d4e-4f5a-9b6c-0e1d2c3b4a59")
        health = await http.post("/v1/health")
    assert (sessions.status_code, sessions.headers["allow"]) == (405, "GET, POST")
    assert (one.status_code, one.headers["allow"]) == (405, "DELETE, GET")
    assert (health.status_code, health.headers["allow"]) == (405, "GET")
    assert one.headers["content-type"] == PROBLEM_JSON
    # A literal path is its own resource, though the router would also match a template there.
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        search = await http.request("OPTIONS", "/langgraph/threads/search")
    assert (search.status_code, search.headers["allow"]) == (405, "POST")
    assert one.json()["type"].endswith("/method-not-allowed")
