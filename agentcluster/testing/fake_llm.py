"""A scripted, OpenAI-compatible LLM server for tests, benchmarks and offline demos.

The server speaks the real wire protocol over loopback HTTP so that LiteLLM's (and the openai SDK's)
real network path runs: ``POST /v1/chat/completions`` (alias ``/chat/completions``) answers with a
``chat.completion`` JSON object, or with server-sent ``chat.completion.chunk`` events ending in
``data: [DONE]`` when the request has ``"stream": true``; ``GET /v1/models`` lists models.

What it answers is decided by a :class:`Script`, per request, in this order:

1. **rules**, in order: the first :class:`Rule` whose conditions all hold (model, text in the
   last user message, tools offered, structured output requested, a custom predicate) answers; a
   rule with ``times=N`` stops matching after N uses;
2. the **queue**: the next scripted action, consumed one per request;
3. the **default**: a callable or a fixed action; out of the box :func:`demo_reply`.

An action is a :class:`Reply` (text and/or :class:`ToolCall` s), a :class:`Failure` (an HTTP error
in OpenAI's error shape, e.g. 429 with ``Retry-After``) or a :class:`Timeout` (say nothing for a
while, then answer 504).

Wire details worth knowing:

* Streamed text is split into one chunk per word; a tool call's first chunk carries its id, type and
  name, later chunks only fragments of the arguments JSON (8 characters each) under the same index.
* ``finish_reason`` is ``tool_calls`` when the reply calls tools, ``length`` when the request's
  ``max_tokens`` cut the text, else ``stop``; a :class:`Reply` may force it.
* ``usage`` is in every non-streaming response and, when the request asks for it with
  ``stream_options: {"include_usage": true}``, in a last chunk with empty ``choices``. Token counts
  are rough on purpose: ``ceil(characters / 4)`` per text, plus 3 per message; they do not match
  tiktoken.
* A dict or list reply content is sent as its JSON text, which is how structured output
  (``response_format`` of type ``json_schema``) is answered.

Timing (:class:`Timing`, overridable per reply): ``ttft_s`` before the first streamed chunk,
``inter_chunk_s`` between chunks; a non-streaming response is sent after ``latency_s`` or, when that
is unset, after the time the same stream would have taken.

The default :func:`demo_reply`, used when nothing is scripted:

* structured output requested: a minimal JSON instance of the requested schema;
* the last message is a tool result: ``[demo] The tool returned: ...``;
* tools are offered and the last user message names one (``get_time`` or ``get time``), or asks
  for the time while a tool with ``time`` in its name is offered: a call to that tool with ``{}``;
* otherwise ``[demo] You said: <last user message>``.

Every request is recorded (:attr:`FakeLLM.requests`) for assertions.

Run it in-process (``async with FakeLLM(script) as llm``, or ``llm.start_in_thread()`` for
synchronous code and other event loops), or standalone as a demo LLM::

    python -m agentcluster.testing.fake_llm --port 8089 [--script script.yaml] \\
        [--latency-ms N] [--ttft-ms N] [--inter-chunk-ms N]

Script files are YAML or JSON: either a list of replies, or a mapping::

    replies:                       # the queue, consumed one per request
      - Hello!                     # a plain string is a text reply
      - content: {"answer": 42}    # structured output
      - tool_calls: [{name: get_weather, arguments: {city: Paris}}]
      - {type: failure, status: 429, retry_after: 1}
      - {type: timeout, seconds: 30}
    rules:                         # checked before the queue; the first match answers
      - {model: gpt-x, reply: {type: failure, status: 500}}
      - {when_last_user_contains: weather, reply: It is sunny., times: 2}
    default: "I have nothing scripted."   # optional; demo_reply when absent

A reply mapping without ``type`` is a reply; ``status`` implies a failure and ``seconds`` alone a
timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentcluster.testing._script import (
    Action,
    ActionLike,
    Failure,
    FinishReason,
    RecordedRequest,
    Reply,
    Responder,
    Rule,
    Script,
    Timeout,
    Timing,
    ToolCall,
    action_from_data,
    demo_reply,
    example_from_schema,
)
from agentcluster.testing._wire import (
    Completion,
    build_completion,
    completion_json,
    error_response,
    non_stream_delay,
    stream_chunks,
)

__all__ = [
    "Action",
    "ActionLike",
    "Failure",
    "FakeLLM",
    "FinishReason",
    "RecordedRequest",
    "Reply",
    "Responder",
    "Rule",
    "Script",
    "Timeout",
    "Timing",
    "ToolCall",
    "action_from_data",
    "demo_reply",
    "example_from_schema",
    "main",
]


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handlers (we are a guest in someone's loop or thread)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class _Stopped:
    """An awaitable that is already done: :meth:`FakeLLM.stop` returns it after a blocking stop."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


class FakeLLM:
    """The scripted OpenAI-compatible server, run in-process on a loopback port.

    Use ``async with FakeLLM(script) as llm`` (or ``await llm.start()`` / ``await llm.stop()``) in
    async code; ``llm.start_in_thread()`` / ``llm.stop()`` or ``with FakeLLM(script) as llm`` from
    synchronous code or another event loop. Point clients at :attr:`base_url`.

    Args:
        script: what to answer; an empty :class:`Script` (so :func:`demo_reply`) when omitted.
        timing: server-wide delays.
        host: the address to bind; loopback by default.
        port: the port; 0 picks a free one.
        models: model ids listed by ``GET /v1/models`` (besides those seen in rules and requests).
        start_timeout_s: how long :meth:`start` and :meth:`start_in_thread` wait for the server.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        timing: Timing | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = ("fake-llm",),
        start_timeout_s: float = 10.0,
    ) -> None:
        self.script = script if script is not None else Script()
        self.timing = timing if timing is not None else Timing()
        self.host = host
        self._requested_port = port
        self._models = list(models)
        self._start_timeout_s = start_timeout_s
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._port: int | None = None
        self._server: _EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # ----- addresses and records ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: the server has not been started.
        """
        if self._port is None:
            raise RuntimeError("FakeLLM is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``: pass it as ``api_base``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the chat-completion requests received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._requests_lock:
            self._requests.clear()

    # ----- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeLLM:
        """Bind and serve on the running event loop; returns self once it accepts connections.

        Raises:
            RuntimeError: already started, or the server did not come up in time.
            OSError: the address could not be bound.
        """
        self._check_not_started()
        await self._serve(self._bind())
        return self

    def start_in_thread(self) -> FakeLLM:
        """Serve from a daemon thread with its own event loop; returns self once it is up.

        For synchronous code, Ray actors and other event loops. Stop it with :meth:`stop`.

        Raises:
            RuntimeError: already started, or the server did not come up in time.
            OSError: the address could not be bound.
        """
        self._check_not_started()
        sock = self._bind()
        ready = threading.Event()
        failures: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main, args=(sock, ready, failures), name="fake-llm", daemon=True
        )
        self._thread.start()
        if not ready.wait(self._start_timeout_s):
            raise RuntimeError(f"FakeLLM did not start within {self._start_timeout_s}s")
        if failures:
            raise RuntimeError("FakeLLM failed to start") from failures[0]
        return self

    def stop(self) -> Awaitable[None]:
        """Stop serving: in-flight delays end at once, streams are cut, sockets close.

        In thread mode this blocks until the thread ends (awaiting the result is harmless). In
        async mode it starts the shutdown and returns an awaitable that completes with it:
        ``await llm.stop()``.
        """
        task = self._serve_task
        if self._server is None or task is None:
            return _Stopped()
        self._request_exit()
        if self._thread is not None:
            self._thread.join(self._start_timeout_s)
            return _Stopped()
        return task

    async def __aenter__(self) -> FakeLLM:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> FakeLLM:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_not_started(self) -> None:
        if self._server is not None:
            raise RuntimeError("FakeLLM is already started (it serves once; create a new one)")

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            # In-flight handlers end on the closing event; this bounds anything else on stop().
            timeout_graceful_shutdown=1,
        )
        server = _EmbeddedServer(config)
        self._server, self._loop, self._closing = (
            server,
            asyncio.get_running_loop(),
            asyncio.Event(),
        )
        self._serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="fake-llm")
        ready = asyncio.create_task(server.ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._serve_task},
            timeout=self._start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        ready.cancel()
        if ready not in done:
            self._request_exit()
            task = self._serve_task
            cause = task.exception() if task.done() and not task.cancelled() else None
            raise RuntimeError(f"FakeLLM did not start within {self._start_timeout_s}s") from cause

    def _thread_main(
        self, sock: socket.socket, ready: threading.Event, failures: list[BaseException]
    ) -> None:
        async def serve_until_stopped() -> None:
            await self._serve(sock)
            ready.set()
            if self._serve_task is not None:
                await self._serve_task

        try:
            asyncio.run(serve_until_stopped())
        except Exception as exc:  # handed to start_in_thread's caller, who can act on it
            failures.append(exc)
        finally:
            ready.set()

    def _request_exit(self) -> None:
        server, loop, closing = self._server, self._loop, self._closing
        if server is None or loop is None or closing is None or loop.is_closed():
            return
        server.should_exit = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            closing.set()
        else:
            loop.call_soon_threadsafe(closing.set)

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the server is stopping (the caller should wrap up)."""
        closing = self._closing
        if closing is None:  # standalone: uvicorn owns shutdown, nothing to wake us early
            await asyncio.sleep(seconds)
            return False
        if seconds <= 0:
            return closing.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), timeout=seconds)
        return closing.is_set()

    # ----- HTTP -----------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._list_models, methods=["GET"]),
            Route("/models", self._list_models, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.json()
            parsed = _ChatBody.model_validate(body)
        except ValidationError as exc:
            return error_response(400, f"invalid chat completion request: {exc.errors()[0]}")
        except ValueError as exc:
            return error_response(400, f"the body is not JSON: {exc}")
        recorded = _record(request, parsed, body)
        with self._requests_lock:
            self._requests.append(recorded)
        return await self._answer(recorded, self.script.next_action(recorded))

    async def _answer(self, request: RecordedRequest, action: Action) -> Response:
        if isinstance(action, Failure):
            await self._pause(action.latency_s)
            return error_response(action.status, action.message, action.retry_after)
        if isinstance(action, Timeout):
            await self._pause(action.seconds)
            return error_response(504)
        completion = build_completion(request, action, self.timing)
        if request.stream:
            return StreamingResponse(
                self._stream(completion),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        await self._pause(non_stream_delay(completion))
        return JSONResponse(completion_json(completion))

    async def _stream(self, completion: Completion) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(stream_chunks(completion)):
            delay = completion.ttft_s if index == 0 else completion.inter_chunk_s
            if await self._pause(delay):
                return  # stopping: cut the stream like a dropped connection would
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def _list_models(self, request: Request) -> Response:
        seen = [rule.model for rule in self.script.rules if rule.model]
        seen += [recorded.model for recorded in self.requests]
        model_ids = list(dict.fromkeys([*self._models, *seen]))
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake-llm"} for m in model_ids
        ]
        return JSONResponse({"object": "list", "data": data})


class _ChatBody(BaseModel):
    """The fields of a chat-completion body the server acts on; the rest is kept in ``body``."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def _record(request: Request, parsed: _ChatBody, body: dict[str, Any]) -> RecordedRequest:
    return RecordedRequest(
        path=request.url.path,
        model=parsed.model,
        messages=parsed.messages,
        tools=parsed.tools or [],
        stream=bool(parsed.stream),
        include_usage=bool((parsed.stream_options or {}).get("include_usage")),
        response_format=parsed.response_format,
        max_tokens=parsed.max_completion_tokens or parsed.max_tokens,
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
        received_at=time.time(),
    )


# --------------------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agentcluster.testing.fake_llm",
        description="A scripted OpenAI-compatible LLM for offline demos and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8089, help="port (default: 8089; 0 = any)")
    parser.add_argument("--script", type=Path, help="a YAML or JSON script file")
    parser.add_argument("--latency-ms", type=float, help="delay of non-streaming responses")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first chunk")
    parser.add_argument("--inter-chunk-ms", type=float, default=0.0, help="delay between chunks")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake LLM in the foreground until interrupted; returns the exit status."""
    args = _parse_args(argv)
    try:
        script = Script.from_file(args.script) if args.script else Script()
        timing = Timing(
            latency_s=None if args.latency_ms is None else args.latency_ms / 1000,
            ttft_s=args.ttft_ms / 1000,
            inter_chunk_s=args.inter_chunk_ms / 1000,
        )
    except (OSError, ValueError) as exc:
        print(f"fake_llm: {exc}", file=sys.stderr)
        return 2
    llm = FakeLLM(script, timing=timing, host=args.host, port=args.port)
    sock = llm._bind()
    print(f"fake LLM serving an OpenAI-compatible API at {llm.base_url}", flush=True)
    config = uvicorn.Config(llm.app, lifespan="off", log_level="warning", access_log=False)
    # A plain uvicorn.Server here: in the foreground it should own Ctrl+C / SIGTERM.
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
