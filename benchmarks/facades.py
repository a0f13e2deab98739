"""Facade overhead: a one-step turn through the OpenAI-compatible and LangGraph-compatible APIs
vs the native ``POST /v1/sessions/{id}/messages?wait=true``, in one run against one gateway.

Run: ``.venv/bin/python -m benchmarks.facades`` (``--requests N`` per path and round,
``--rounds R``, ``--out -`` to only print).

One local Ray (2 CPUs) with the Serve gateway (one replica) on a loopback port, a fresh
PostgreSQL database (on the server of ``SA01_DB_DSN`` or ``.data/services.env``, dropped at the
end), the fake LLM in a thread of this process, an agent without tools. Each path runs in its own
session, warmed first (activation is not measured): native ``?wait=true``;
``/v1/chat/completions`` continuing its session by ``X-Session-Id``; ``/v1/responses`` chained by
``previous_response_id``; LangGraph's ``/langgraph/threads/{id}/runs/wait`` in its thread. All
through the same ``httpx.AsyncClient``, one request at a time, the paths taking turns
``--rounds`` times. Latency is the client's wall time per request; the ratio
is each path's median over the native median (target: within 1.1x).
The A2A path sends ``SendMessage`` to ``/a2a/bench`` with its session as ``contextId``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentcluster.config import Settings, load_settings
from agentcluster.testing.fake_llm import FakeLLM, Script
from benchmarks._common import (
    DOC_TITLE,
    create_database,
    create_tenant_key,
    drop_database,
    free_port,
    machine_description,
    markdown_table,
    percentile,
    publish,
    server_dsn,
)

SECTION = "## Protocol facades"
ADMIN_KEY = "bench-admin-" + uuid.uuid4().hex
PROFILE = {
    "name": "bench",
    "model": "fake-a",
    "system_prompt": "You are a benchmark agent.",
    "tools": [],
    "max_steps": 2,
    "max_output_tokens": 64,
    "context_window": 4096,
}
Turn = Callable[[], Awaitable[None]]
NOTE = (
    "Beyond the native path, a chat completion with `X-Session-Id` reads the session once "
    "(tenant and agent check); a response with `previous_response_id` reads the new turn's "
    "events (its tool calls become output items): one store read per turn (the session of a "
    "response the replica created is remembered; another's costs two more reads). A LangGraph "
    "`runs/wait` reads the thread's session (tenant and agent check) and, after the turn, the "
    "thread's messages (its answer is the thread's values): two."
    " An A2A `SendMessage` with `contextId` reads the turn's events after the turn (the "
    "task's history and answer): one (the context's agent is checked once per replica)."
)


def _settings(dsn: str, llm: FakeLLM, agents: Path) -> Settings:
    (agents / "bench.yaml").write_text(yaml.safe_dump(PROFILE))
    return load_settings(
        {
            "db": {"dsn": dsn},
            "llm": {"api_base": llm.base_url, "api_key": "bench", "max_retries": 1},
            "auth": {"admin_key": ADMIN_KEY},
            "runtime": {
                "agents_dir": agents,
                "host_prefix": f"b{uuid.uuid4().hex[:6]}",
                "namespace": f"bench-{uuid.uuid4().hex[:8]}",
            },
        }
    )


def _start_gateway(settings: Settings) -> str:
    import ray
    from ray import serve

    from deployments.gateway import build_gateway

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    one = {"min_replicas": 1, "max_replicas": 1}
    serve.run(build_gateway(settings, autoscaling_config=one), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def _stop_gateway() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    body: dict[str, Any] = response.json()
    return body


async def _paths(client: httpx.AsyncClient) -> dict[str, Turn]:
    """One turn function per path, each in a session of its own."""
    sessions = [
        (await client.post("/v1/sessions", json={"agent": "bench"})).json()["session_id"]
        for _ in range(3)
    ]
    created = await client.post("/langgraph/threads", json={"metadata": {"graph_id": "bench"}})
    thread_id = _check(created)["thread_id"]
    previous: list[str] = []

    async def native() -> None:
        url = f"/v1/sessions/{sessions[0]}/messages?wait=true"
        _check(await client.post(url, json={"content": "hi"}))

    async def chat() -> None:
        body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"X-Session-Id": sessions[1]}
        _check(await client.post("/v1/chat/completions", json=body, headers=headers))

    async def responses() -> None:
        body: dict[str, Any] = {"model": "bench", "input": "hi"}
        if previous:
            body["previous_response_id"] = previous[-1]
        previous.append(_check(await client.post("/v1/responses", json=body))["id"])

    async def langgraph() -> None:
        body = {"assistant_id": "bench", "input": {"messages": [{"role": "user", "content": "hi"}]}}
        _check(await client.post(f"/langgraph/threads/{thread_id}/runs/wait", json=body))

    async def a2a() -> None:
        message = {
            "messageId": uuid.uuid4().hex,
            "role": "ROLE_USER",
            "parts": [{"text": "hi"}],
            "contextId": sessions[2],
        }
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}
        answer = _check(await client.post("/a2a/bench", json=rpc, headers={"A2A-Version": "1.0"}))
        if "result" not in answer:
            raise RuntimeError(f"A2A SendMessage: {answer}")

    return {
        "native `?wait=true`": native,
        "`/v1/chat/completions` (X-Session-Id)": chat,
        "`/v1/responses` (previous_response_id)": responses,
        "A2A `SendMessage` (contextId)": a2a,
        "LangGraph `/langgraph/threads/{id}/runs/wait`": langgraph,
    }


async def _measure(url: str, key: str, requests: int, rounds: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        paths = await _paths(client)
        for turn in paths.values():
            for _ in range(3):
                await turn()
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, turn in paths.items():
                for _ in range(requests):
                    started = time.perf_counter()
                    await turn()
                    samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def _report(samples: dict[str, list[float]], args: argparse.Namespace) -> str:
    base = statistics.median(next(iter(samples.values())))
    rows = [
        [
            name,
            str(len(values)),
            f"{statistics.median(values):.1f}",
            f"{percentile(values, 90):.1f}",
            f"{statistics.median(values) / base:.2f}x",
        ]
        for name, values in samples.items()
    ]
    table = markdown_table(["path", "turns", "p50 ms", "p90 ms", "p50 / native"], rows)
    command = f"python -m benchmarks.facades --requests {args.requests} --rounds {args.rounds}"
    return (
        f"`{command}` on {machine_description()}. One-step turns of an agent without tools, "
        "one at a time, through one gateway replica; each path in its own warmed session, the "
        f"paths taking turns {args.rounds} times. Target: each facade within 1.1x of native."
        f"\n\n{table}\n\n{NOTE}"
    )


async def _run(args: argparse.Namespace) -> str:
    server = server_dsn()
    dsn = await create_database(server)
    llm = FakeLLM(Script()).start_in_thread()
    try:
        with tempfile.TemporaryDirectory() as agents:
            url = _start_gateway(_settings(dsn, llm, Path(agents)))
            try:
                key = await create_tenant_key(url, ADMIN_KEY, f"bench-{uuid.uuid4().hex[:6]}")
                samples = await _measure(url, key, args.requests, args.rounds)
            finally:
                _stop_gateway()
    finally:
        llm.stop()
        await drop_database(server, dsn)
    return _report(samples, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="turns per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="docs/benchmarks.md", help="'-' to only print")
    args = parser.parse_args()
    publish(asyncio.run(_run(args)), args.out, SECTION, DOC_TITLE)


if __name__ == "__main__":
    main()
