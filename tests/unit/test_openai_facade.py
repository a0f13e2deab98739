"""The OpenAI-compatible API's pieces that need no cluster: errors in OpenAI's shape with the
statuses the SDK types, the transcript a new session's message carries, the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError

from agentcluster import events as ev
from agentcluster.config import Settings, load_settings
from agentcluster.errors import DependencyUnavailable, NotFoundError, RateLimited, ValidationFailed
from agentcluster.gateway import ProblemError, create_app
from agentcluster.gateway._openai import (
    CURRENT,
    EARLIER,
    _approval_inputs,
    _chat_input,
    _response_input,
)
from agentcluster.gateway._openai_errors import OpenAIApiError, openai_error
from agentcluster.gateway._openai_models import ChatCompletionIn, ResponseCreateIn
from agentcluster.gateway._openai_responses import _output_items
from agentcluster.runtime import Runtime


def _error(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    response = openai_error(exc)
    body = json.loads(bytes(response.body))
    return response.status_code, body["error"], dict(response.headers)


def test_errors_are_openai_shaped_with_the_statuses_the_sdk_types() -> None:
    status, error, headers = _error(
        ProblemError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
    )
    assert (status, error["type"], error["code"]) == (401, "authentication_error", "unauthorized")
    assert error["message"] == "invalid API key" and headers["www-authenticate"] == "Bearer"
    status, error, _ = _error(NotFoundError("session s not found"))
    assert (status, error["type"], error["code"]) == (404, "invalid_request_error", "not_found")
    status, error, _ = _error(ValidationFailed("unknown agent"))
    assert status == 400  # OpenAI answers a malformed request 400, never 422
    status, error, headers = _error(RateLimited("slow down", retry_after=2.5, limit=5))
    assert (status, error["type"], headers["retry-after"]) == (429, "rate_limit_error", "3")
    status, error, headers = _error(DependencyUnavailable("redis", "down"))
    assert (status, error["type"], headers["retry-after"]) == (503, "server_error", "1")
    status, error, _ = _error(OpenAIApiError(404, "no", code="model_not_found", param="model"))
    assert (status, error["code"], error["param"]) == (404, "model_not_found", "model")
    invalid = RequestValidationError(
        [{"type": "too_short", "loc": ("body", "messages"), "msg": "too short"}]
    )
    status, error, _ = _error(invalid)
    assert (status, error["param"]) == (400, "messages")
    assert set(_error(RuntimeError("boom"))[1]) == {"message", "type", "param", "code"}


def test_a_new_sessions_message_carries_the_requests_earlier_messages_as_a_transcript() -> None:
    body = ChatCompletionIn.model_validate(
        {
            "model": "tester",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and now?"},
            ],
            "temperature": 0.2,  # accepted and ignored: the agent's profile decides
        }
    )
    assert _chat_input(body, continued=False) == "\n".join(
        [EARLIER, "system: be brief", "user: hi", "assistant: hello", "", CURRENT, "and now?"]
    )
    assert _chat_input(body, continued=True) == "and now?"
    plain = ResponseCreateIn.model_validate({"model": "tester", "input": "just this"})
    assert _response_input(plain) == "just this"
    instructed = ResponseCreateIn.model_validate(
        {"model": "tester", "input": "q", "instructions": "answer in French"}
    )
    assert _response_input(instructed).startswith(f"{EARLIER}\ninstructions: answer in French")


async def _no_runtime(settings: Settings) -> Runtime:
    raise AssertionError("the OpenAPI document needs no runtime")


def test_the_openapi_document_describes_the_routes_and_their_openai_errors() -> None:
    document = create_app(load_settings({}), _no_runtime).openapi()
    paths = document["paths"]
    operations = {
        ("/v1/models", "get"): "ModelList",
        ("/v1/models/{model}", "get"): "ModelOut",
        ("/v1/chat/completions", "post"): "ChatCompletion",
        ("/v1/responses", "post"): "ResponseObject",
        ("/v1/responses/{response_id}", "get"): "ResponseObject",
        ("/v1/responses/{response_id}/cancel", "post"): "ResponseObject",
    }
    for (path, method), schema in operations.items():
        responses = paths[path][method]["responses"]
        ok = responses["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.endswith("/" + schema), (path, ok)
        assert "422" not in responses  # validation errors are 400 here
        for status in ("400", "401", "403", "404", "429", "503"):
            error = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert error.endswith("/OpenAIErrorBody"), (path, status)
        assert "application/problem+json" in responses["413"]["content"]
    for path in ("/v1/chat/completions", "/v1/responses"):
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
        assert "requestBody" in paths[path]["post"]
    headers = {p["name"] for p in paths["/v1/chat/completions"]["post"]["parameters"]}
    assert {"X-Session-Id", "Idempotency-Key"} <= headers
    # The rest of the API keeps problem+json.
    assert "422" in paths["/v1/sessions"]["post"]["responses"]


def _approval(approve: bool) -> dict[str, Any]:
    return {"type": "mcp_approval_response", "approval_request_id": "c1", "approve": approve}


def test_approval_responses_come_alone_and_answer_a_previous_response() -> None:
    body = ResponseCreateIn.model_validate(
        {"model": "tester", "previous_response_id": "resp_t", "input": [_approval(False)]}
    )
    [item] = _approval_inputs(body)
    assert (item.approval_request_id, item.approve) == ("c1", False)
    message = {"role": "user", "content": "and this"}
    for fields in (
        {"input": [_approval(True)]},  # which response?
        {"previous_response_id": "resp_t", "input": [_approval(True), message]},
    ):
        mixed = ResponseCreateIn.model_validate({"model": "tester", **fields})
        try:
            _approval_inputs(mixed)
        except OpenAIApiError as exc:
            assert exc.status == 400
        else:
            raise AssertionError(f"accepted {fields}")
    plain = ResponseCreateIn.model_validate({"model": "tester", "input": [message]})
    assert _approval_inputs(plain) == [] and _response_input(plain) == "and this"


def test_a_paused_turns_output_asks_for_what_still_waits() -> None:
    ids = {"tenant_id": "t", "session_id": "s", "turn_id": "u"}
    call = {"tool": "calculator", "arguments": {"expression": "6*7"}}
    events: list[ev.Event] = [
        ev.ToolRequested(**ids, seq=1, tool_call_id="c1", **call),
        ev.ToolApprovalRequested(**ids, seq=2, tool_call_id="c1", **call),
        ev.TurnAwaitingApproval(**ids, seq=3, tool_call_ids=["c1"]),
    ]
    function_call, request = _output_items(events)
    assert function_call.type == "function_call"
    assert request.model_dump() == {
        "type": "mcp_approval_request",
        "id": "c1",
        "name": "calculator",
        "arguments": '{"expression": "6*7"}',
        "server_label": "agentcluster",
    }
    decided = ev.ToolApprovalDecided(
        **ids, seq=4, tool_call_id="c1", tool="calculator", decision="approve", decided_by="k"
    )
    assert [item.type for item in _output_items([*events, decided])] == ["function_call"]
    assert [item.type for item in _output_items(events, paused=False)] == ["function_call"]
