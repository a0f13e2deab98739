"""Traces with the in-memory exporter (no Ray, no services): settings, carriers across a call,
the gateway's request spans, the agent loop's tool spans, LiteLLM's chat spans (against the fake
LLM on loopback) and a session host turn continuing the trace of the call that queued it (an
in-process host on the embedded SQLite store)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI, HTTPException
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from actors.compose import build_runtime_deps
from agentcluster import tracing
from agentcluster.config import LlmSettings, TracingSettings, load_settings
from agentcluster.errors import ConfigError
from agentcluster.gateway._app import TraceRequests
from agentcluster.llm import ChatMessage, LiteLLMClient, LlmRequest
from agentcluster.logs import configure_logging
from agentcluster.runtime import SessionHostCore
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule
from agentcluster.tools import StaticPolicy
from tests.conftest import eventually
from tests.unit.test_agent_loop import CONTEXT, MemoryJournal, ScriptedLLM, _answer, _call, _loop

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_tracing_around() -> Iterator[None]:
    """Each test starts with this process's tracing off and leaves it off."""
    tracing.shutdown_tracing()
    yield
    tracing.shutdown_tracing()


@pytest.fixture
def memory_tracing() -> None:
    """Tracing on with the memory exporter for the test."""
    assert tracing.configure_tracing(TracingSettings(exporter="memory"), "unit")


def _spans() -> list[ReadableSpan]:
    return tracing.finished_spans()


def _named(name: str) -> ReadableSpan:
    found = [span for span in _spans() if span.name == name]
    assert len(found) == 1, [span.name for span in _spans()]
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# -- settings ---------------------------------------------------------------------------------


def test_tracing_is_off_by_default() -> None:
    settings = load_settings().tracing
    assert settings.exporter == "none" and settings.sample_ratio == 1.0
    assert settings.service_name == "agentcluster" and settings.traces_url is None


def test_tracing_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_TRACING_EXPORTER", "OTLP")
    monkeypatch.setenv("SA01_TRACING_ENDPOINT", "http://127.0.0.1:4318/")
    monkeypatch.setenv("SA01_TRACING_SERVICE_NAME", "ac-prod")
    monkeypatch.setenv("SA01_TRACING_SAMPLE_RATIO", "0.25")
    monkeypatch.setenv("SA01_TRACING_EXPORT_DELAY_S", "0.5")
    settings = load_settings().tracing
    assert settings.exporter == "otlp" and settings.service_name == "ac-prod"
    assert settings.sample_ratio == 0.25 and settings.export_delay_s == 0.5
    assert settings.traces_url == "http://127.0.0.1:4318/v1/traces"
    monkeypatch.setenv("SA01_TRACING_ENDPOINT", "http://collector:4318/custom/traces")
    assert load_settings().tracing.traces_url == "http://collector:4318/custom/traces"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"SA01_TRACING_EXPORTER": "zipkin"}, "SA01_TRACING_EXPORTER: Input should be"),
        ({"SA01_TRACING_EXPORTER": "otlp"}, "SA01_TRACING_ENDPOINT: required when"),
        (
            {"SA01_TRACING_EXPORTER": "otlp", "SA01_TRACING_ENDPOINT": "grpc://x:4317"},
            "SA01_TRACING_ENDPOINT: expected an http(s)://host[:port] URL",
        ),
        ({"SA01_TRACING_SAMPLE_RATIO": "1.5"}, "SA01_TRACING_SAMPLE_RATIO: Input should be"),
        ({"SA01_TRACING_SERVICE_NAME": ""}, "SA01_TRACING_SERVICE_NAME: String should have"),
    ],
)
def test_a_bad_tracing_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value).startswith(message), str(raised.value)


# -- the tracing module -----------------------------------------------------------------------


def test_off_records_nothing_but_lets_a_callers_trace_pass() -> None:
    assert not tracing.configure_tracing(TracingSettings(), "unit")
    assert not tracing.tracing_enabled()
    with tracing.span("nothing") as span:
        assert not span.is_recording()
        assert tracing.carrier() == {}
    # A process that records nothing still hands its caller's trace on to the next one.
    caller = TracerProvider().get_tracer("caller").start_span("remote caller")
    received = tracing.carrier(caller)
    with tracing.span("pass-through", parent=received):
        assert tracing.carrier() == received
    caller.end()


def test_a_carrier_continues_the_trace_across_a_call(memory_tracing: None) -> None:
    with tracing.span("request", kind=SpanKind.SERVER), tracing.outgoing("Actor/call") as out:
        client, sent = out
        assert (
            tracing.current_span().get_span_context().span_id != client.get_span_context().span_id
        )
        assert set(sent) == {"traceparent"}
    # ... in the other process: no active span there, only the carrier.
    with tracing.detached(), tracing.span("Actor/call", kind=SpanKind.SERVER, parent=sent):
        pass
    request = _named("request")
    calls = [span for span in _spans() if span.name == "Actor/call"]
    (client_span,) = [span for span in calls if span.kind is SpanKind.CLIENT]
    (server_span,) = [span for span in calls if span.kind is SpanKind.SERVER]
    assert _parent_id(client_span) == request.context.span_id
    assert _parent_id(server_span) == client_span.context.span_id
    assert server_span.parent is not None and server_span.parent.is_remote
    assert len({span.context.trace_id for span in _spans()}) == 1
    assert request.resource.attributes["agentcluster.component"] == "unit"


def test_an_empty_carrier_starts_a_trace_of_its_own(memory_tracing: None) -> None:
    with tracing.span("outer"), tracing.span("fresh", parent={}):
        pass
    outer, fresh = _named("outer"), _named("fresh")
    assert fresh.parent is None and fresh.context.trace_id != outer.context.trace_id


def test_an_error_marks_the_span(memory_tracing: None) -> None:
    with pytest.raises(ValueError), tracing.span("failing"):
        raise ValueError("boom")
    with pytest.raises(RuntimeError), tracing.outgoing("Actor/fails"):
        raise RuntimeError("down")
    failing, fails = _named("failing"), _named("Actor/fails")
    assert failing.status.status_code is StatusCode.ERROR
    assert fails.status.status_code is StatusCode.ERROR
    assert fails.attributes is not None and fails.attributes["error.type"] == "RuntimeError"


def test_the_first_configuration_of_a_process_holds(memory_tracing: None) -> None:
    assert tracing.configure_tracing(TracingSettings(exporter="memory"), "another")
    with tracing.span("kept"):
        pass
    assert _named("kept").resource.attributes["agentcluster.component"] == "unit"


def test_a_zero_sample_ratio_records_new_traces_never_but_follows_a_sampled_caller() -> None:
    assert tracing.configure_tracing(TracingSettings(exporter="memory", sample_ratio=0), "unit")
    with tracing.span("unsampled") as span:
        assert not span.is_recording()
    caller = TracerProvider().get_tracer("caller").start_span("sampled caller")
    with tracing.span("followed", parent=tracing.carrier(caller)) as span:
        assert span.is_recording()
    assert [span.name for span in tracing.finished_spans()] == ["followed"]


# -- gateway ----------------------------------------------------------------------------------


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    @app.get("/broken")
    async def broken() -> None:
        raise HTTPException(503, "down")

    @app.get("/metrics")
    async def metrics() -> str:
        return "scraped"

    app.add_middleware(TraceRequests)
    return app


async def test_a_request_gets_a_server_span_continuing_the_callers_trace(
    memory_tracing: None,
) -> None:
    caller = TracerProvider().get_tracer("client").start_span("client")
    headers = tracing.carrier(caller)
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.get("/items/42", headers=headers)).status_code == 200
        assert (await client.get("/broken")).status_code == 503
        assert (await client.get("/metrics")).status_code == 200
    request = _named("GET /items/{item_id}")
    assert request.kind is SpanKind.SERVER
    assert request.context.trace_id == caller.get_span_context().trace_id
    assert _parent_id(request) == caller.get_span_context().span_id
    assert request.attributes == {
        "http.request.method": "GET",
        "url.path": "/items/42",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
    }
    broken = _named("GET /broken")
    assert broken.parent is None and broken.status.status_code is StatusCode.ERROR
    assert not [span for span in _spans() if "metrics" in span.name]


# -- agent loop and LLM -----------------------------------------------------------------------


async def test_a_tool_call_span_holds_the_policy_decision(memory_tracing: None) -> None:
    llm = ScriptedLLM(
        _call("calculator", '{"expression": "6*7"}', "c1"),
        _call("current_time", "{}", "c2"),
        _answer("done"),
    )
    history = [ChatMessage(role="user", content="x")]
    policy = StaticPolicy({"current_time": "no clocks"})
    with tracing.span("turn"):
        await _loop(llm, policy).run_turn(CONTEXT, history, MemoryJournal())
    turn = _named("turn")
    allowed = _named("execute_tool calculator")
    denied = _named("execute_tool current_time")
    assert _parent_id(allowed) == _parent_id(denied) == turn.context.span_id
    assert allowed.attributes is not None and denied.attributes is not None
    assert allowed.attributes["gen_ai.tool.name"] == "calculator"
    assert allowed.attributes["gen_ai.tool.call.id"] == "c1"
    assert allowed.attributes["agentcluster.tool.decision"] == "allowed"
    assert allowed.attributes["agentcluster.tool.ok"] is True
    assert denied.attributes["agentcluster.tool.decision"] == "denied"
    assert denied.attributes["agentcluster.tool.decision.reason"] == "no clocks"
    assert denied.status.status_code is StatusCode.ERROR


async def test_an_llm_call_is_a_client_span_with_genai_attributes(
    memory_tracing: None, fake_llm: FakeLLM
) -> None:
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="hi there")))
    client = LiteLLMClient(LlmSettings(api_base=fake_llm.base_url, api_key="test"))
    request = LlmRequest(
        model="fake-a", messages=[ChatMessage(role="user", content=token)], max_output_tokens=32
    )
    result = await client.complete(request)
    chat = _named("chat fake-a")
    assert chat.kind is SpanKind.CLIENT and chat.attributes is not None
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "fake-a"
    assert chat.attributes["gen_ai.response.model"] == result.model
    assert chat.attributes["gen_ai.request.max_tokens"] == 32
    assert chat.attributes["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] == result.usage.completion_tokens > 0


# -- a session host turn ----------------------------------------------------------------------


async def test_a_turn_continues_the_trace_of_the_call_that_queued_it(
    memory_tracing: None,
    fake_llm: FakeLLM,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_loggers: None,
) -> None:
    """The message is accepted under one span (the host's notify); the turn runs later in the
    session's worker, under a turn span whose parent is that one; its LLM call, its log lines
    and its events share the trace."""
    monkeypatch.setenv("SA01_DATA_DIR", str(tmp_path))
    profile = {"name": "traced", "model": "fake-a", "tools": [], "max_output_tokens": 64}
    (tmp_path / "traced.yaml").write_text(yaml.safe_dump(profile))
    settings = load_settings(
        {
            "db": {"dsn": None},  # the embedded SQLite store, in tmp_path
            "llm": {"api_base": fake_llm.base_url, "api_key": "test", "max_retries": 0},
            "policy": {"url": None},
            "runtime": {"agents_dir": tmp_path, "host_prefix": f"u{uuid.uuid4().hex[:6]}"},
        }
    )
    log_stream = io.StringIO()
    configure_logging(settings, log_stream)
    token = uuid.uuid4().hex
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(content="traced")))
    deps = await build_runtime_deps(settings)
    host = SessionHostCore("trace-host", lambda: asyncio.sleep(0, deps))
    try:
        tenant = await deps.store.create_tenant("traces")
        session = await deps.store.create_session(tenant.tenant_id, "traced")
        with tracing.span("SessionHost/notify", kind=SpanKind.SERVER, parent={}) as notify:
            submission = await deps.store.submit_message(
                tenant.tenant_id, session.session_id, token
            )
            await host.notify(session.session_id, submission.turn_id)
        trace_id = notify.get_span_context().trace_id

        async def turn_span() -> list[ReadableSpan]:
            return [span for span in _spans() if span.name == "invoke_agent traced"]

        (turn,) = await eventually(turn_span, timeout=30, message="the turn's span")
        events = await deps.store.list_events(tenant.tenant_id, session.session_id)
    finally:
        await host.stop()
        await deps.store.close()
    assert _parent_id(turn) == notify.get_span_context().span_id
    assert turn.context.trace_id == trace_id and turn.attributes is not None
    assert turn.attributes["agentcluster.turn_id"] == submission.turn_id
    assert turn.attributes["agentcluster.session_id"] == session.session_id
    assert turn.attributes["agentcluster.tenant_id"] == tenant.tenant_id
    assert turn.attributes["agentcluster.turn.status"] == "completed"
    chat = _named("chat fake-a")
    assert _parent_id(chat) == turn.context.span_id
    trace_hex = format(trace_id, "032x")
    turn_events = [e for e in events if getattr(e, "turn_id", None) == submission.turn_id]
    assert {e.type for e in turn_events} >= {"message.received", "turn.started", "turn.completed"}
    assert all(trace_hex in e.trace["traceparent"] for e in turn_events)
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    ended = [line for line in lines if submission.turn_id in str(line["message"])]
    assert ended and all(line["trace_id"] == trace_hex for line in ended)


async def test_off_never_writes_to_a_span_of_someone_elses_provider() -> None:
    outer = TracerProvider().get_tracer("app").start_span("an app's span")
    llm = ScriptedLLM(_call("calculator", '{"expression": "1+1"}'), _answer("2"))
    with tracing.use(outer):
        await _loop(llm).run_turn(CONTEXT, [ChatMessage(role="user", content="x")], MemoryJournal())
    outer.end()
    assert not tracing.tracing_enabled()
    assert isinstance(outer, ReadableSpan) and not outer.attributes
