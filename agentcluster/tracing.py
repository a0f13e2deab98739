"""OpenTelemetry traces across the cluster: gateway request -> session host turn -> LLM call ->
tool actor call, one trace however many processes the work crosses.

Each server process configures tracing once from the settings (:func:`configure_tracing`, next to
``configure_logging``): ``SA01_TRACING_EXPORTER=otlp`` batches spans to an OTLP/HTTP collector,
``memory`` keeps them in the process for tests, ``none`` (the default) records nothing and costs a
no-op tracer call per span.

Within a process the active span is a context variable, so it follows awaits and tasks. Across
Ray calls it travels explicitly, as data: the caller opens a CLIENT span with :func:`outgoing`,
which yields a W3C carrier (``traceparent``/``tracestate``) passed as an argument of the actor
call; the actor opens its SERVER span with ``span(..., parent=carrier)``. Ray's own tracing hook
is not used: it is experimental and would patch every remote call.

The provider is held here rather than installed as OpenTelemetry's global one, which can be set
once per process: tests, and a process that is configured again, need to replace it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from agentcluster.config import TracingSettings

__all__ = [
    "Carrier",
    "Span",
    "SpanKind",
    "carrier",
    "configure_tracing",
    "current_span",
    "detached",
    "finished_spans",
    "flush_tracing",
    "mark_error",
    "outgoing",
    "rpc_attributes",
    "shutdown_tracing",
    "span",
    "start_span",
    "tool_attributes",
    "tracing_enabled",
    "use",
]

log = logging.getLogger(__name__)

Carrier = dict[str, str]
"""A W3C trace-context carrier: what crosses a Ray call (or a header set) to continue a trace."""

_SCOPE = "agentcluster"
_NOOP_TRACER = trace.NoOpTracer()
FLUSH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Setup:
    provider: TracerProvider
    tracer: Tracer
    memory: InMemorySpanExporter | None


_SETUP: list[_Setup] = []
"""This process's tracing (empty: not configured, spans are no-ops)."""


def configure_tracing(settings: TracingSettings, component: str) -> bool:
    """Configure this process's tracing from the settings; True when spans are recorded.

    Once per process: later calls keep the first configuration (a gateway replica's runtime and
    its app both ask); :func:`shutdown_tracing` ends it. ``component`` (``gateway``,
    ``session-host``, ``tool-actor``...) goes into the resource with the host and pid, so a
    trace shows which process did what.
    """
    if _SETUP:
        return True
    if settings.exporter == "none":
        return False
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            "agentcluster.component": component,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
    )
    sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(sampler=sampler, resource=resource)
    memory: InMemorySpanExporter | None = None
    if settings.exporter == "memory":
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
    else:
        provider.add_span_processor(
            BatchSpanProcessor(
                _otlp_exporter(settings),
                schedule_delay_millis=settings.export_delay_s * 1000,
                export_timeout_millis=settings.export_timeout_s * 1000,
            )
        )
    _SETUP[:] = [_Setup(provider, provider.get_tracer(_SCOPE), memory)]
    where = settings.traces_url if settings.exporter == "otlp" else "memory"
    log.info(
        "tracing: %s spans go to %s (sample ratio %g)", component, where, settings.sample_ratio
    )
    return True


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    # Imported only when used: the OTLP exporter pulls in requests and the protobuf modules.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.traces_url, timeout=settings.export_timeout_s)


def tracing_enabled() -> bool:
    """Whether this process records spans."""
    return bool(_SETUP)


async def flush_tracing(timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Send the spans still batched (before a process ends: a killed actor exports nothing)."""
    if _SETUP:
        provider = _SETUP[0].provider
        # force_flush waits on the export thread's HTTP call: off the event loop.
        await asyncio.to_thread(provider.force_flush, int(timeout_s * 1000))


def shutdown_tracing() -> None:
    """Flush and stop this process's tracing; spans are no-ops until configured again."""
    if _SETUP:
        setup = _SETUP.pop()
        setup.provider.shutdown()


def finished_spans() -> list[ReadableSpan]:
    """The spans ended so far, with the ``memory`` exporter (tests); empty otherwise."""
    if not _SETUP or _SETUP[0].memory is None:
        return []
    return list(_SETUP[0].memory.get_finished_spans())


# -- carriers ---------------------------------------------------------------------------------


def carrier(of: Span | None = None) -> Carrier:
    """The W3C carrier of span ``of``, or of the active context (empty when nothing is traced)."""
    found: Carrier = {}
    context = trace.set_span_in_context(of) if of is not None else None
    propagate.inject(found, context=context)
    return found


def _parent(parent: Mapping[str, str] | None) -> Context | None:
    """None keeps the active context; a carrier (even an empty one: a new trace) replaces it."""
    if parent is None:
        return None
    if not parent:
        return Context()
    return propagate.extract(dict(parent), context=Context())


# -- spans ------------------------------------------------------------------------------------


def start_span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
) -> Span:
    """Start a span without making it active (end it yourself; see :func:`use`).

    Args:
        parent: the carrier of the remote parent; None for the active context's span.
    """
    if not _SETUP:  # the no-op path: a parent still passes through, nothing else is built
        return _NOOP_TRACER.start_span(name, context=_parent(parent))
    return _SETUP[0].tracer.start_span(
        name, context=_parent(parent), kind=kind, attributes=_clean(attributes)
    )


def current_span() -> Span:
    """The active span to annotate; a non-recording one when this process records nothing (so
    a span of someone else's provider, active around our code, is never written to)."""
    return trace.get_current_span() if _SETUP else trace.INVALID_SPAN


def use(active: Span) -> contextlib.AbstractContextManager[Span]:
    """Make ``active`` the current span for the block (it is not ended on exit)."""
    return trace.use_span(active, end_on_exit=False)


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
) -> Iterator[Span]:
    """A span active for the block, ended after it; an exception marks it as an error.

    Args:
        parent: the carrier received with a call from another process (its SERVER span's
            parent); None continues the active context.
    """
    if not _SETUP and parent is None:
        # Off, and nothing to hand on: the active context stays as it is (no attach/detach).
        yield trace.INVALID_SPAN
        return
    opened = start_span(name, kind=kind, attributes=attributes, parent=parent)
    try:
        with use(opened):
            yield opened
    finally:
        opened.end()


@contextlib.contextmanager
def outgoing(
    name: str, *, attributes: Mapping[str, Any] | None = None
) -> Iterator[tuple[Span, Carrier]]:
    """A CLIENT span around a call to another process and the carrier to send with it.

    The span is not made active, so this is safe around an async generator's whole life (a
    context attached in one task cannot be detached in another).
    """
    opened = start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    try:
        yield opened, carrier(opened)
    except Exception as exc:
        mark_error(opened, exc)
        raise
    finally:
        opened.end()


def mark_error(failed: Span, error: BaseException | str) -> None:
    """Record an error on a span: its status, ``error.type`` and, for an exception, an event."""
    if not failed.is_recording():
        return
    if isinstance(error, BaseException):
        failed.record_exception(error)
        failed.set_attribute("error.type", type(error).__name__)
        failed.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    else:
        failed.set_status(Status(StatusCode.ERROR, error))


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """No active span in the block: long-lived tasks (a session's turn worker) must not hang
    under the request that happened to start them."""
    token = otel_context.attach(Context())
    try:
        yield
    finally:
        otel_context.detach(token)


def rpc_attributes(
    service: str, method: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """RPC semantic-convention attributes of a Ray actor call (``rpc.system`` is ``ray``)."""
    return {"rpc.system": "ray", "rpc.service": service, "rpc.method": method, **(extra or {})}


def tool_attributes(tool: str, tool_call_id: str | None = None) -> dict[str, Any]:
    """GenAI semantic-convention attributes of a tool call."""
    return {"gen_ai.tool.name": tool, "gen_ai.tool.call.id": tool_call_id}


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # OpenTelemetry rejects None values (with a warning): leave unknown facts out.
    if not attributes:
        return None
    return {key: value for key, value in attributes.items() if value is not None}
