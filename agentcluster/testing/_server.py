"""The fake LLM's HTTP server: :class:`FakeLLM`, run in-process on a loopback port.

Documented in :mod:`agentcluster.testing.fake_llm`, which re-exports the public names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
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
    BrokenStream,
    Failure,
    RecordedRequest,
    Reply,
    Script,
    Timeout,
    Timing,
)
from agentcluster.testing._wire import (
    Completion,
    build_completion,
    completion_json,
    completion_pieces,
    error_response,
    non_stream_delay,
    stream_chunks,
)

__all__ = ["FakeLLM"]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn as a guest in someone else's loop or thread: no signal handlers, prompt exit.

    ``closing`` is set by :meth:`FakeLLM.stop`; in-flight delays wait on it too and end at once.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; waking on the event makes stop() that much faster.
        # One tick first: it sets the default response headers.
        await self.on_tick(0)
        await self.closing.wait()


@dataclass(frozen=True, eq=False)
class _RequestWaiter:
    count: int
    loop: asyncio.AbstractEventLoop
    arrived: asyncio.Future[None]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have timed out meanwhile
        future.set_result(None)


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
        self._waiters: list[_RequestWaiter] = []
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

    async def wait_for_requests(
        self, count: int = 1, timeout_s: float = 10.0
    ) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests have arrived; returns all recorded so far.

        Works from any event loop or thread (the server may run in another one).

        Raises:
            TimeoutError: fewer than ``count`` requests arrived within ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        waiter = _RequestWaiter(count, loop, loop.create_future())
        with self._requests_lock:
            if len(self._requests) >= count:
                return list(self._requests)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.arrived, timeout=timeout_s)
        except TimeoutError:
            got = len(self.requests)
            raise TimeoutError(f"FakeLLM got {got} of {count} requests in {timeout_s}s") from None
        finally:
            with self._requests_lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.requests

    def _record_request(self, recorded: RecordedRequest) -> None:
        with self._requests_lock:
            self._requests.append(recorded)
            due = [w for w in self._waiters if len(self._requests) >= w.count]
            self._waiters = [w for w in self._waiters if w not in due]
        for waiter in due:
            # A waiter's loop may have closed since it gave up; there is nobody left to tell.
            with contextlib.suppress(RuntimeError):
                waiter.loop.call_soon_threadsafe(_resolve, waiter.arrived)

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

    def serve_forever(self, on_listening: Callable[[FakeLLM], None] | None = None) -> None:
        """Serve in the foreground until Ctrl+C or SIGTERM (the standalone mode).

        Args:
            on_listening: called once the port is bound, e.g. to print :attr:`base_url`.
        """
        self._check_not_started()
        sock = self._bind()
        if on_listening is not None:
            on_listening(self)
        # A plain uvicorn.Server: in the foreground it should own the signals.
        uvicorn.Server(self._uvicorn_config()).run(sockets=[sock])

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
        # Listening now (uvicorn listens again, harmlessly) so that a client told the URL before
        # uvicorn is up waits in the backlog instead of being refused.
        sock.listen()
        self._port = int(sock.getsockname()[1])
        return sock

    def _uvicorn_config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            # Bounds how long a stop waits for in-flight requests (a Timeout reply may hang).
            timeout_graceful_shutdown=1,
        )

    async def _serve(self, sock: socket.socket) -> None:
        server = _EmbeddedServer(self._uvicorn_config())
        self._server, self._loop, self._closing = server, asyncio.get_running_loop(), server.closing
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
        self._record_request(recorded)
        return await self._answer(recorded, self.script.next_action(recorded))

    async def _answer(self, request: RecordedRequest, action: Action) -> Response:
        if isinstance(action, Failure):
            await self._pause(action.latency_s)
            return error_response(action.status, action.message, action.retry_after)
        if isinstance(action, Timeout):
            await self._pause(action.seconds)
            return error_response(504)
        if isinstance(action, BrokenStream):
            return self._broken(request, action)
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

    def _broken(self, request: RecordedRequest, action: BrokenStream) -> Response:
        if not request.stream:
            return Response(action.garbage, media_type="application/json")
        completion = build_completion(request, Reply(content=action.content or None), self.timing)
        return StreamingResponse(
            self._broken_stream(completion, action),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def _broken_stream(
        self, completion: Completion, action: BrokenStream
    ) -> AsyncIterator[bytes]:
        # The role chunk and the content chunks, without the finish and usage chunks.
        for chunk in stream_chunks(completion)[: 1 + len(completion_pieces(completion))]:
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
        yield action.garbage
        if action.then == "done":
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
