"""Structured logs: one JSON object per line, carrying the tenant, session, turn and trace ids of
the work that logged it.

The ids live in context variables, so they follow a turn through every await and into the tasks
it starts; :func:`bound` sets them for a block. :func:`configure_logging` installs the JSON
handler on the ``agentcluster`` logger of a server process (session hosts, gateway replicas,
tool and browser actors), leaving Ray's and other libraries' handlers alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from opentelemetry import trace

from agentcluster import redact
from agentcluster.config import Settings

__all__ = ["JsonFormatter", "bind_for_task", "bound", "configure_logging", "current_ids"]

_IDS = ("tenant_id", "session_id", "turn_id")
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"agentcluster_{name}", default=None) for name in _IDS
}
_HANDLER_NAME = "agentcluster-json"
_PACKAGES = ("agentcluster", "actors", "deployments")


def current_ids() -> dict[str, str]:
    """The ids bound in this context (tenant, session, turn, and the active trace and span)."""
    ids = {name: value for name, var in _VARS.items() if (value := var.get()) is not None}
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        ids["trace_id"] = format(span.trace_id, "032x")
        ids["span_id"] = format(span.span_id, "016x")
    return ids


@contextlib.contextmanager
def bound(
    *, tenant_id: str | None = None, session_id: str | None = None, turn_id: str | None = None
) -> Iterator[None]:
    """Bind ids for the block (and every task started in it); None leaves an id as it is."""
    given = {"tenant_id": tenant_id, "session_id": session_id, "turn_id": turn_id}
    tokens = [(var, var.set(given[name])) for name, var in _VARS.items() if given[name]]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line: time, level, logger, message, the bound ids, the error."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **current_ids(),
        }
        if record.exc_info:
            # The text ScrubFilter left (secrets removed), else the traceback as it is.
            entry["error"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def bind_for_task(*, tenant_id: str | None = None, session_id: str | None = None) -> None:
    """Bind ids for the rest of the current task (a request handler: each request runs in a task
    of its own, so nothing leaks into the next one)."""
    for name, value in (("tenant_id", tenant_id), ("session_id", session_id)):
        if value:
            _VARS[name].set(value)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Log our packages (``agentcluster``, ``actors``, ``deployments``) at the configured level as
    JSON (or text, ``SA01_LOG_FORMAT=text``) to ``stream`` (stderr: Ray keeps it per worker).

    Every line is scrubbed of secrets (:class:`~agentcluster.redact.ScrubFilter`), the settings'
    own secrets included. Idempotent per process: a second call replaces the handler it installed
    before.
    """
    redact.remember_settings(settings)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    redact.scrub_handler(handler)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(settings.log_level)
        logger.propagate = False  # one line per record, not a second copy through Ray's root
    return handler
