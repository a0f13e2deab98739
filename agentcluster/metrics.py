"""The cluster's Prometheus metrics, each defined once, and a small facade to record them.

Plain Python records through the functions below (``record_turn``, ``record_llm_call``, ...);
they never raise and cost a few microseconds. Where they go is a :class:`MetricSink`:

* in a process connected to Ray (session hosts, gateway replicas, pool and relay actors) the
  :class:`RaySink` records ``ray.util.metrics`` instruments; Ray's metrics agent on each node
  exports them with a ``ray_`` prefix (``agentcluster_turns`` becomes
  ``ray_agentcluster_turns_total``), labelled with the node and worker;
* without Ray (unit tests, tools) nothing is recorded, unless a sink is installed with
  :func:`install_sink` (tests pass a :class:`MemorySink`).

The gateway's ``/metrics`` shows the node's Ray metrics too: :func:`scrape_node_metrics` reads the
local metrics agent's endpoint on loopback (see :func:`node_metrics_port`). Labels are bounded
sets (model, agent, tool, host, route, status, outcome, decision), never session or tenant ids; a
label that grows past :data:`MAX_LABEL_VALUES` values records the rest as ``other``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from agentcluster.errors import DependencyUnavailable

if TYPE_CHECKING:
    from ray.util.metrics import Metric

__all__ = [
    "BREAKER_STATES",
    "MAX_LABEL_VALUES",
    "METRICS",
    "MemorySink",
    "MetricKind",
    "MetricSink",
    "MetricSpec",
    "RaySink",
    "bind_agent",
    "current_agent",
    "install_sink",
    "node_metrics_port",
    "record_breaker_state",
    "record_http_request",
    "record_llm_call",
    "record_outbox",
    "record_session_activated",
    "record_session_passivated",
    "record_sessions_active",
    "record_tool_call",
    "record_turn",
    "scrape_node_metrics",
]

log = logging.getLogger(__name__)

MetricKind = Literal["counter", "gauge", "histogram"]

MAX_LABEL_VALUES = 200
"""Distinct values one label keeps per metric; later new values are recorded as ``other``."""

BREAKER_STATES: dict[str, float] = {"closed": 0.0, "half-open": 1.0, "open": 2.0}
"""The breaker state gauge's values (higher is worse)."""

_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
_TURN_SECONDS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name without the ``ray_`` prefix or ``_total`` suffix, and its labels."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("agentcluster_http_requests", "counter", "HTTP requests.", ("route", "status")),
        MetricSpec(
            "agentcluster_http_request_seconds",
            "histogram",
            "HTTP request latency.",
            ("route",),
            tuple(_SECONDS),
        ),
        MetricSpec("agentcluster_turns", "counter", "Turns ended.", ("agent", "outcome")),
        MetricSpec(
            "agentcluster_turn_seconds",
            "histogram",
            "Turn latency, from start to outcome.",
            ("agent", "outcome"),
            tuple(_TURN_SECONDS),
        ),
        MetricSpec("agentcluster_llm_calls", "counter", "LLM completions.", ("model", "outcome")),
        MetricSpec(
            "agentcluster_llm_call_seconds",
            "histogram",
            "LLM completion latency (retries and fallbacks included).",
            ("model",),
            tuple(_SECONDS),
        ),
        MetricSpec("agentcluster_llm_tokens", "counter", "LLM tokens.", ("model", "kind")),
        MetricSpec("agentcluster_llm_cost_usd", "counter", "LLM cost in USD.", ("model",)),
        MetricSpec(
            "agentcluster_llm_breaker_state",
            "gauge",
            "Circuit breaker state per model: 0 closed, 1 half-open, 2 open.",
            ("model",),
        ),
        MetricSpec(
            "agentcluster_tool_calls",
            "counter",
            "Tool calls by policy decision (allowed, denied, none) and outcome (ok, error).",
            ("tool", "decision", "outcome"),
        ),
        MetricSpec(
            "agentcluster_tool_call_seconds",
            "histogram",
            "Latency of tool calls that ran.",
            ("tool",),
            tuple(_SECONDS),
        ),
        MetricSpec(
            "agentcluster_sessions_active", "gauge", "Sessions activated on a host.", ("host",)
        ),
        MetricSpec(
            "agentcluster_session_activations", "counter", "Session activations.", ("host",)
        ),
        MetricSpec(
            "agentcluster_session_passivations", "counter", "Session passivations.", ("host",)
        ),
        MetricSpec(
            "agentcluster_outbox_unpublished",
            "gauge",
            "Committed events the relay has not yet published.",
        ),
        MetricSpec("agentcluster_outbox_published", "counter", "Events the relay published."),
    )
}


class MetricSink(Protocol):
    """Port: where recorded values go. ``name`` is a key of :data:`METRICS`."""

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...


def _ray_instrument(spec: MetricSpec) -> Metric:
    # Ray stays at the edge: imported only in a process that runs Ray.
    from ray.util.metrics import Counter, Gauge, Histogram

    if spec.kind == "counter":
        return Counter(spec.name, spec.description, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.description, tag_keys=spec.labels)
    return Histogram(
        spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.labels
    )


class RaySink:
    """Records into ``ray.util.metrics`` instruments (created here, once per process)."""

    def __init__(self) -> None:
        self._record: dict[str, Any] = {}
        for name, spec in METRICS.items():
            instrument: Any = _ray_instrument(spec)
            verb = {"counter": "inc", "gauge": "set", "histogram": "observe"}[spec.kind]
            self._record[name] = getattr(instrument, verb)

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._record[name](value, dict(tags))


def _ray_initialized() -> bool:
    # A process that never imported Ray is not connected to it: no import just to ask.
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


class MemorySink:
    """Keeps what was recorded, for tests: counters add up, gauges keep the last value,
    histograms keep every observation."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(
            list
        )

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        key = (name, tuple(sorted(tags.items())))
        kind = METRICS[name].kind
        if kind == "counter":
            self.values[key] += value
        elif kind == "gauge":
            self.values[key] = value
        else:
            self.observations[key].append(value)

    def value(self, name: str, **tags: str) -> float:
        """A counter's total or a gauge's last value (0 when never recorded)."""
        return self.values.get((name, tuple(sorted(tags.items()))), 0.0)

    def observed(self, name: str, **tags: str) -> list[float]:
        """A histogram's observations."""
        return list(self.observations.get((name, tuple(sorted(tags.items()))), []))


class _Recorder:
    """Chooses the sink, bounds label values and swallows errors (each metric logs once)."""

    def __init__(self) -> None:
        self.installed: MetricSink | None = None
        self._ray: RaySink | None = None
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._warned: set[str] = set()

    def sink(self) -> MetricSink | None:
        if self.installed is not None:
            return self.installed
        if self._ray is None:
            if not _ray_initialized():
                return None
            with self._lock:
                if self._ray is None:
                    self._ray = RaySink()
        return self._ray

    def bounded(self, name: str, tags: Mapping[str, str]) -> dict[str, str]:
        bounded: dict[str, str] = {}
        for label, value in tags.items():
            seen = self._seen[(name, label)]
            if value not in seen and len(seen) >= MAX_LABEL_VALUES:
                value = "other"
            else:
                seen.add(value)
            bounded[label] = value
        return bounded

    def record(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        # Why broad: a metric must never fail the turn, request or loop that records it.
        try:
            sink = self.sink()
            if sink is not None:
                sink.record(name, value, self.bounded(name, tags))
        except Exception:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("recording metric %s failed (logged once)", name, exc_info=True)


_RECORDER = _Recorder()


@contextmanager
def install_sink(sink: MetricSink | None) -> Iterator[MetricSink | None]:
    """Record into ``sink`` (instead of Ray) inside the block; yields the sink."""
    previous = _RECORDER.installed
    _RECORDER.installed = sink
    try:
        yield sink
    finally:
        _RECORDER.installed = previous


# --- agent label ---------------------------------------------------------------------------

_AGENT: contextvars.ContextVar[str] = contextvars.ContextVar("agentcluster_agent", default="")


def bind_agent(agent: str) -> None:
    """Label metrics recorded from now on in this context (and tasks it starts) with ``agent``.
    The session host binds a session's agent before it starts the session's turns."""
    _AGENT.set(agent)


def current_agent() -> str:
    """The agent bound by :func:`bind_agent`, or ``unknown``."""
    return _AGENT.get() or "unknown"


# --- what the code records -----------------------------------------------------------------


def record_http_request(route: str, status: int, seconds: float) -> None:
    """One HTTP request answered by the gateway (``route`` is the route template)."""
    _RECORDER.record("agentcluster_http_requests", 1, {"route": route, "status": str(status)})
    _RECORDER.record("agentcluster_http_request_seconds", seconds, {"route": route})


def record_turn(agent: str, outcome: str, seconds: float | None) -> None:
    """A turn ended (``completed``, ``failed``, ``cancelled``); ``seconds`` since it started,
    None when it never started here (cancelled while queued, failed after a restart)."""
    tags = {"agent": agent, "outcome": outcome}
    _RECORDER.record("agentcluster_turns", 1, tags)
    if seconds is not None:
        _RECORDER.record("agentcluster_turn_seconds", seconds, tags)


def record_llm_call(
    model: str,
    outcome: Literal["ok", "error"],
    seconds: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost_usd: float = 0.0,
) -> None:
    """One LLM completion (all its retries and fallbacks); ``model`` is the one that answered."""
    _RECORDER.record("agentcluster_llm_calls", 1, {"model": model, "outcome": outcome})
    _RECORDER.record("agentcluster_llm_call_seconds", seconds, {"model": model})
    if prompt_tokens:
        _RECORDER.record(
            "agentcluster_llm_tokens", prompt_tokens, {"model": model, "kind": "prompt"}
        )
    if completion_tokens:
        tags = {"model": model, "kind": "completion"}
        _RECORDER.record("agentcluster_llm_tokens", completion_tokens, tags)
    if cost_usd > 0:
        _RECORDER.record("agentcluster_llm_cost_usd", cost_usd, {"model": model})


def record_breaker_state(model: str, state: str) -> None:
    """A model's circuit breaker is now ``closed``, ``half-open`` or ``open``."""
    value = BREAKER_STATES.get(state)
    if value is None:
        log.warning("unknown breaker state %r for model %s", state, model)
        return
    _RECORDER.record("agentcluster_llm_breaker_state", value, {"model": model})


def record_tool_call(
    tool: str,
    decision: Literal["allowed", "denied", "none"],
    ok: bool,
    seconds: float | None,
) -> None:
    """A tool call ended; ``decision`` is ``none`` when no policy decided (bad arguments, a call
    cut by a crash); ``seconds`` is the tool's run time when it ran."""
    outcome = "ok" if ok else "error"
    _RECORDER.record(
        "agentcluster_tool_calls", 1, {"tool": tool, "decision": decision, "outcome": outcome}
    )
    if seconds is not None:
        _RECORDER.record("agentcluster_tool_call_seconds", seconds, {"tool": tool})


def record_sessions_active(host: str, count: int) -> None:
    """How many sessions ``host`` holds now."""
    _RECORDER.record("agentcluster_sessions_active", count, {"host": host})


def record_session_activated(host: str) -> None:
    """``host`` activated a session."""
    _RECORDER.record("agentcluster_session_activations", 1, {"host": host})


def record_session_passivated(host: str) -> None:
    """``host`` passivated a session."""
    _RECORDER.record("agentcluster_session_passivations", 1, {"host": host})


def record_outbox(unpublished: int | None, published: int) -> None:
    """A relay round: events still waiting (None when unknown) and events just published."""
    if unpublished is not None:
        _RECORDER.record("agentcluster_outbox_unpublished", unpublished, {})
    if published:
        _RECORDER.record("agentcluster_outbox_published", published, {})


# --- the node's Ray metrics ----------------------------------------------------------------

_NODE_PORT: list[int] = []


def _lookup_node_port() -> int:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return int(node["MetricsExportPort"])
    raise DependencyUnavailable("ray", f"node {node_id} is not in the cluster's node table")


async def node_metrics_port() -> int:
    """The metrics export port of this node's Ray metrics agent (looked up once per process).

    Raises:
        DependencyUnavailable: Ray is not initialized here, or the node is unknown.
    """
    if not _NODE_PORT:
        if not _ray_initialized():
            raise DependencyUnavailable("ray", "Ray is not initialized in this process")
        # ray.nodes() asks the GCS and blocks: keep it off the event loop.
        _NODE_PORT.append(await asyncio.to_thread(_lookup_node_port))
    return _NODE_PORT[0]


async def scrape_node_metrics(client: httpx.AsyncClient, port: int) -> str:
    """The text exposition of the node's Ray metrics agent on loopback (it listens on every
    address of the node).

    Raises:
        DependencyUnavailable: the agent did not answer with metrics.
    """
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        response = await client.get(url)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DependencyUnavailable("ray", f"metrics agent at {url}: {exc}") from exc
    return response.text
