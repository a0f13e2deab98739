"""The bare baseline of ``benchmarks.turn_overhead``: the service a user writes in an afternoon.

No agentcluster code at all (nothing of it is imported): FastAPI under uvicorn (one worker), an
asyncpg pool on its own PostgreSQL database, and LiteLLM's ``acompletion`` to an OpenAI-compatible
base URL, as its README shows. Offline, as agentcluster's README asks of LiteLLM:
``LITELLM_LOCAL_MODEL_COST_MAP=True`` and ``TIKTOKEN_CACHE_DIR`` on LiteLLM's bundled tokenizers,
set before ``litellm`` is imported (an operator's values win).

Its own tiny schema (``sessions``, ``messages``, ``events``) is created at startup. Endpoints, with
the shapes the benchmark's load driver uses (a constant bearer token on all but health):

* ``POST /v1/sessions`` ``{agent, metadata?}`` -> 201 ``{session_id, agent, created_at}``;
* ``POST /v1/sessions/{id}/messages?wait=true`` ``{content}`` -> 200 ``{session_id, turn_id,
  message_id, status, content}``;
* ``GET /v1/health`` -> 200 ``{status}``.

A turn: the session's history read from the database (one query), one **non-streaming**
``acompletion`` with the system prompt and that history (a service that answers ``?wait=true``
has no use for a stream), then ONE transaction writing the user message, the answer and two events
(``llm.completed``, ``turn.completed``). Nothing is committed before the answer: unlike
agentcluster, a message is not durable before its turn ends (that is what an afternoon buys).

Run: ``python -m benchmarks._bare_app --port P --dsn postgresql://... --llm-base URL --model M
--system-prompt TEXT --max-tokens N --token T`` (the benchmark starts it).
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

__all__ = ["BareConfig", "create_bare_app", "main"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id uuid PRIMARY KEY,
    agent text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS messages (
    message_id uuid PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions,
    turn_id uuid NOT NULL,
    seq bigserial,
    role text NOT NULL,
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, seq);
CREATE TABLE IF NOT EXISTS events (
    seq bigserial PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions,
    turn_id uuid NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
"""
HISTORY = "SELECT role, content FROM messages WHERE session_id = $1 ORDER BY seq"
INSERT_MESSAGE = (
    "INSERT INTO messages (message_id, session_id, turn_id, role, content) "
    "VALUES ($1, $2, $3, $4, $5)"
)
INSERT_EVENT = "INSERT INTO events (session_id, turn_id, type, payload) VALUES ($1, $2, $3, $4)"


def prepare_offline_litellm() -> None:
    """LiteLLM reads its cost map at import (from the network unless told otherwise) and tiktoken
    downloads encodings unless pointed at the copies LiteLLM ships: set both before the import."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin is not None:
        tokenizers = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        if tokenizers.is_dir():
            os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tokenizers))


@dataclass(frozen=True)
class BareConfig:
    """What the service is told at start."""

    dsn: str
    llm_base: str
    model: str
    system_prompt: str
    max_tokens: int
    token: str


class SessionIn(BaseModel):
    agent: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class MessageIn(BaseModel):
    content: str = Field(min_length=1)


async def _authorized(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    expected: bytes = request.app.state.expected_authorization
    if not authorization or not hmac.compare_digest(authorization.encode(), expected):
        raise HTTPException(401, "invalid token")


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Auth = Annotated[None, Depends(_authorized)]
Pool = Annotated[asyncpg.Pool, Depends(_pool)]


async def _answer(config: BareConfig, messages: list[dict[str, str]]) -> tuple[str, Any, float]:
    """One non-streaming completion: its text, its usage and its latency in ms."""
    import litellm

    started = time.perf_counter()
    response = await litellm.acompletion(
        model=config.model,
        messages=messages,
        api_base=config.llm_base,
        api_key="bare",
        max_tokens=config.max_tokens,
    )
    latency_ms = (time.perf_counter() - started) * 1000
    return response.choices[0].message.content or "", response.usage, latency_ms


async def run_turn(
    config: BareConfig, pool: asyncpg.Pool, session_id: uuid.UUID, content: str
) -> dict[str, Any]:
    """History, the LLM call, then one transaction: user message, answer, two events."""
    history = await pool.fetch(HISTORY, session_id)
    messages = [{"role": "system", "content": config.system_prompt}]
    messages += [{"role": row["role"], "content": row["content"]} for row in history]
    messages.append({"role": "user", "content": content})
    answer, usage, latency_ms = await _answer(config, messages)
    turn_id, message_id, answer_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    usage_json = usage.model_dump() if usage is not None else {}
    llm_event = {"model": config.model, "usage": usage_json, "latency_ms": latency_ms}
    done_event = {"message_id": str(answer_id), "content": answer, "usage": usage_json}
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(INSERT_MESSAGE, message_id, session_id, turn_id, "user", content)
        await connection.execute(
            INSERT_MESSAGE, answer_id, session_id, turn_id, "assistant", answer
        )
        await connection.execute(
            INSERT_EVENT, session_id, turn_id, "llm.completed", json.dumps(llm_event)
        )
        await connection.execute(
            INSERT_EVENT, session_id, turn_id, "turn.completed", json.dumps(done_event)
        )
    return {
        "session_id": str(session_id),
        "turn_id": str(turn_id),
        "message_id": str(message_id),
        "status": "completed",
        "content": answer,
    }


def create_bare_app(config: BareConfig) -> FastAPI:
    """The service: schema at startup, a pool for its lifetime, three endpoints."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(config.dsn)
        async with pool.acquire() as connection:
            await connection.execute(SCHEMA)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="bare turn service", lifespan=lifespan)
    app.state.expected_authorization = f"Bearer {config.token}".encode()

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: SessionIn, _auth: Auth, pool: Pool) -> dict[str, Any]:
        session_id = uuid.uuid4()
        created_at = await pool.fetchval(
            "INSERT INTO sessions (session_id, agent, metadata) VALUES ($1, $2, $3) "
            "RETURNING created_at",
            session_id,
            body.agent,
            json.dumps(body.metadata),
        )
        return {"session_id": str(session_id), "agent": body.agent, "created_at": created_at}

    @app.post("/v1/sessions/{session_id}/messages")
    async def send_message(
        session_id: uuid.UUID, body: MessageIn, _auth: Auth, pool: Pool, wait: bool = False
    ) -> dict[str, Any]:
        if not wait:
            raise HTTPException(400, "this service only answers ?wait=true")
        try:
            return await run_turn(config, pool, session_id, body.content)
        except asyncpg.ForeignKeyViolationError:
            raise HTTPException(404, "no such session") from None

    return app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._bare_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True, help="postgresql://... of its own database")
    parser.add_argument("--llm-base", required=True, help="an OpenAI-compatible base URL")
    parser.add_argument("--model", required=True, help="as LiteLLM takes it: openai/<name>")
    parser.add_argument("--system-prompt", required=True)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--token", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve on 127.0.0.1 with one uvicorn worker until interrupted."""
    args = _parse_args(argv)
    prepare_offline_litellm()
    config = BareConfig(
        dsn=args.dsn,
        llm_base=args.llm_base,
        model=args.model,
        system_prompt=args.system_prompt,
        max_tokens=args.max_tokens,
        token=args.token,
    )
    import litellm  # imported once here, after the offline variables, not on the first turn

    litellm.suppress_debug_info = True
    uvicorn.run(
        create_bare_app(config),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
