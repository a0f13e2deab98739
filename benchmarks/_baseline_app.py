"""The baseline of ``benchmarks.turn_overhead``: the same one-step turn in one process, no Ray.

A FastAPI app with the gateway's two endpoints that a turn needs (create a session; post a message
with ``?wait=true``), run by uvicorn with one worker. It does the work a one-step turn of the
cluster must do, and nothing of the distribution around it:

* the real store (:func:`agentcluster.bootstrap.open_state_store`, PostgreSQL, its own database);
* ``submit_message`` (user message, queued turn, ``message.received``), then two fenced writer
  transactions exactly as :class:`agentcluster.runtime._journal.StoreJournal` writes a one-step
  turn: ``start_turn`` + ``turn.started``; then ``turn_answered``, the assistant message +
  ``llm.completed`` + ``finish_turn`` + ``turn.completed`` in one transaction;
* the LLM call through :class:`~agentcluster.llm.LiteLLMClient` (whole, as the cluster's when
  nobody watches the session; same settings), with
  the agent profile's system prompt, the session's history kept in memory and trimmed to the
  profile's context window, as the agent loop does.

Auth is one constant bearer token; there is no live feed, no host, no Serve proxy.

Run: ``python -m benchmarks._baseline_app --port P --dsn DSN --llm-base URL --agents-dir DIR
--agent NAME --token T`` (the benchmark starts it; it is not a public entry point).
"""

from __future__ import annotations

import argparse
import hmac
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from agentcluster import api
from agentcluster import events as ev
from agentcluster.agent import AgentProfile, load_profiles
from agentcluster.bootstrap import open_state_store
from agentcluster.config import Settings, load_settings
from agentcluster.llm import LLM, ChatMessage, LlmRequest, LlmResult, trim_history
from agentcluster.store import SqlStateStore

__all__ = ["BaselineState", "create_baseline_app", "main"]


@dataclass
class BaselineState:
    """What the app holds: the store, the LLM client, the profile and each session's history."""

    store: SqlStateStore
    llm: LLM
    profile: AgentProfile
    tenant_id: str
    histories: dict[str, list[ChatMessage]] = field(default_factory=dict)


async def run_turn(state: BaselineState, session_id: str, content: str) -> api.TurnOut:
    """One one-step turn: commit the message, call the LLM, record it as the journal does (two
    commits after the message: started, answered)."""
    submission = await state.store.submit_message(state.tenant_id, session_id, content)
    turn_id = submission.turn_id
    await _turn_started(state, session_id, turn_id)
    history = state.histories.setdefault(session_id, [])
    history.append(ChatMessage(role="user", content=content))
    result = await _complete(state, history)
    history.append(ChatMessage(role="assistant", content=result.content))
    await _turn_answered(state, session_id, turn_id, result)
    return api.TurnOut(
        session_id=session_id,
        message_id=submission.message_id,
        turn_id=turn_id,
        status="completed",
        content=result.content or "",
        usage=result.usage,
    )


def _ids(state: BaselineState, session_id: str) -> dict[str, str]:
    return {"tenant_id": state.tenant_id, "session_id": session_id}


async def _turn_started(state: BaselineState, session_id: str, turn_id: str) -> None:
    async with state.store.writer(session_id, tenant_id=state.tenant_id) as writer:
        attempt = await writer.start_turn(turn_id)
        await writer.emit(
            ev.TurnStarted(**_ids(state, session_id), turn_id=turn_id, attempt=attempt)
        )


async def _turn_answered(
    state: BaselineState, session_id: str, turn_id: str, result: LlmResult
) -> None:
    """The step's answer ends the turn: answer, ``llm.completed``, the turn's end and
    ``turn.completed`` in one transaction, as ``StoreJournal.turn_answered``."""
    async with state.store.writer(session_id, tenant_id=state.tenant_id) as writer:
        answer_id = await writer.add_message("assistant", result.content or "", turn_id=turn_id)
        await writer.emit(
            ev.LlmCompleted(
                **_ids(state, session_id),
                turn_id=turn_id,
                step=1,
                model=result.model,
                content=result.content,
                usage=result.usage,
                latency_ms=result.latency_ms,
            )
        )
        await writer.finish_turn(
            turn_id, "completed", usage=result.usage.model_dump(), answer_message_id=answer_id
        )
        await writer.emit(
            ev.TurnCompleted(
                **_ids(state, session_id),
                turn_id=turn_id,
                message_id=answer_id,
                content=result.content or "",
                usage=result.usage,
            )
        )


async def _complete(state: BaselineState, history: list[ChatMessage]) -> LlmResult:
    profile = state.profile
    messages = list(history)
    if profile.system_prompt:
        messages.insert(0, ChatMessage(role="system", content=profile.system_prompt))
    kept, _dropped, _tokens = trim_history(
        messages, profile.context_window, profile.max_output_tokens, []
    )
    request = LlmRequest(
        model=profile.model,
        fallback_models=list(profile.fallback_models),
        messages=kept,
        max_output_tokens=profile.max_output_tokens,
        temperature=profile.temperature,
    )
    # Nobody watches a ``?wait=true`` turn's live feed: the cluster asks for the answer whole.
    return await state.llm.complete(request)


async def _authorized(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    expected: bytes = request.app.state.expected_authorization
    if not authorization or not hmac.compare_digest(authorization.encode(), expected):
        raise HTTPException(401, "invalid API key")


def _baseline(request: Request) -> BaselineState:
    state: BaselineState = request.app.state.baseline
    return state


Auth = Annotated[None, Depends(_authorized)]
State = Annotated[BaselineState, Depends(_baseline)]


def create_baseline_app(settings: Settings, agent: str, token: str) -> FastAPI:
    """The baseline app for ``settings`` (db dsn, llm, agents dir); ``token`` is the bearer."""
    profile = load_profiles(settings.runtime.agents_dir)[agent]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from agentcluster.llm import BreakerRegistry, LiteLLMClient

        store = await open_state_store(settings)
        tenant = await store.create_tenant("baseline")
        llm = LiteLLMClient(settings.llm, BreakerRegistry.from_settings(settings.llm))
        app.state.baseline = BaselineState(store, llm, profile, tenant.tenant_id)
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(title="turn-overhead baseline", lifespan=lifespan)
    app.state.expected_authorization = f"Bearer {token}".encode()

    @app.get("/v1/health", response_model=api.Health)
    async def health() -> api.Health:
        return api.Health()

    @app.post("/v1/sessions", status_code=201, response_model=api.SessionOut)
    async def create_session(
        body: api.SessionCreateIn, _auth: Auth, state: State
    ) -> api.SessionOut:
        if body.agent != profile.name:
            raise HTTPException(422, f"unknown agent {body.agent!r}")
        session = await state.store.create_session(state.tenant_id, body.agent, body.metadata)
        return api.SessionOut.of(session)

    @app.post("/v1/sessions/{session_id}/messages")
    async def send_message(
        session_id: str, body: api.MessageIn, _auth: Auth, state: State, wait: bool = False
    ) -> JSONResponse:
        if not wait:
            raise HTTPException(400, "the baseline only answers ?wait=true")
        out = await run_turn(state, session_id, body.content)
        return JSONResponse(out.model_dump(mode="json"))

    return app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._baseline_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True, help="its own PostgreSQL database")
    parser.add_argument("--llm-base", required=True, help="the fake LLM's OpenAI base URL")
    parser.add_argument("--agents-dir", type=Path, required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--token", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the baseline on 127.0.0.1 with one uvicorn worker until interrupted."""
    args = _parse_args(argv)
    settings = load_settings(
        {
            "db": {"dsn": args.dsn},
            "llm": {"api_base": args.llm_base, "api_key": "bench", "max_retries": 1},
            "runtime": {"agents_dir": args.agents_dir},
        }
    )
    app = create_baseline_app(settings, args.agent, args.token)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
