"""Keeping secrets out of what we show, store and log: one masking function for settings and one
scrubber for free text (error messages, log lines).

Two kinds of secret are recognised:

- **known values**: the secrets this process holds (the admin key, the internal token, the LLM key,
  the Fernet keys, passwords in the configured DSNs, the provider keys decrypted from the provider
  settings). They are registered with :func:`remember` / :func:`remember_settings` and replaced
  wherever they appear, whatever the text around them.
- **shapes**: ``Authorization: Bearer ...``, provider key formats (``sk-...``, ``AIza...``, ...),
  ``api_key=...``-style pairs and passwords inside URLs, for the secrets this process never held
  (a key in a provider's error text, another service's password in a driver message).

The known values live in a process-wide registry on purpose: log records and error texts come from
every layer (LiteLLM, drivers, tools) and the one place that sees them all is the process. Only the
scrubbed text is kept; the registry itself is never shown.

>>> scrub("HTTP 401: Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx")
'HTTP 401: Incorrect API key provided: ***'
>>> mask_url("redis://:hunter2@127.0.0.1:6379/0")
'redis://:***@127.0.0.1:6379/0'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from agentcluster.config import Settings

__all__ = [
    "MASK",
    "MIN_SECRET_CHARS",
    "ScrubFilter",
    "mask_settings",
    "mask_url",
    "remember",
    "remember_settings",
    "scrub",
    "scrub_handler",
]

MASK = "***"
MIN_SECRET_CHARS = 8
"""Shorter values are not registered: replacing ``none`` or ``test`` everywhere would mangle
ordinary text, and a secret that short protects nothing anyway."""
MAX_KNOWN = 1_000
"""Bound on the registry (key rotations add values); past it the oldest are forgotten."""

_SECRET_NAME = re.compile(
    r"(^|_)(key|keys|token|password|passwd|secret|credentials?|sasl_plain_password)$", re.I
)
"""Setting names whose value is a secret as a whole (``admin_key``, ``internal_token``,
``fernet_key``; ``key_file`` is a path and is shown)."""

_URL_QUERY_SECRET = re.compile(
    r"([?&;](?:password|passwd|pwd|sslpassword|secret|token|access_token|api[_-]?key|key)=)"
    r"[^&#\s]*",
    re.I,
)

_SECRET_NAMES = (
    r"api[_-]?key|apikey|admin[_-]?key|fernet[_-]?key|secret[_-]?key|private[_-]?key"
    r"|access[_-]?key|secret[_-]?access[_-]?key|token|secret|password|passwd"
)
"""Names (or name endings: ``OPENAI_API_KEY``, ``x-api-key``, ``refresh_token``) of secret values
in ``name=value``, ``name: value`` and ``"name": "value"`` pairs."""


def _masked_authorization(match: re.Match[str]) -> str:
    scheme = f"{match.group(2)} " if match.group(2) else ""
    return f"{match.group(1)}{scheme}{MASK}"


_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # Authorization: Bearer x / 'authorization': 'Bearer x' / Bearer x alone.
    (
        re.compile(
            r"""(\bauthorization["']?\s*[:=]\s*["']?)(?:(bearer|basic|token)\s+)?"""
            r"(?!(?:bearer|basic|token)\b)[A-Za-z0-9._~+/=*-]{6,}",
            re.I,
        ),
        _masked_authorization,
    ),
    (re.compile(r"\b(bearer|basic)\s+[A-Za-z0-9._~+/=*-]{6,}", re.I), r"\1 " + MASK),
    # api_key=v, "api_key": "v", x-api-key: v. Unquoted after a colon only when the value looks
    # like a credential (a digit in 8+ token characters): "SA01_LLM_API_KEY: expected ..." is
    # our own error text, not a secret.
    (
        re.compile(rf"""(\b[\w-]*?(?:{_SECRET_NAMES})["']?\s*=\s*["']?)[^\s"',;&}}]+""", re.I),
        r"\1" + MASK,
    ),
    (
        re.compile(rf"""(\b[\w-]*?(?:{_SECRET_NAMES})["']?\s*:\s*["'])[^"'\s]+""", re.I),
        r"\1" + MASK,
    ),
    (
        re.compile(
            rf"(\b[\w-]*?(?:{_SECRET_NAMES})\s*:\s*)(?=[A-Za-z0-9._~+/=-]*\d)"
            r"[A-Za-z0-9._~+/=-]{8,}",
            re.I,
        ),
        r"\1" + MASK,
    ),
    # user:password@ inside any URL (redis://:pw@h, postgresql+asyncpg://u:pw@h/db).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]+@", re.I), r"\1:" + MASK + "@"),
    (_URL_QUERY_SECRET, r"\1" + MASK),
    # Provider key formats (OpenAI/Anthropic/OpenRouter/DeepSeek sk-, Google, Groq, xAI, HF...).
    (re.compile(r"\bsk-[A-Za-z0-9_*-]{16,}"), MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), MASK),
    (
        re.compile(
            r"\b(?:gsk|xai|hf|pplx|nvapi|ghp|gho|ghs|github_pat|glpat|xox[abpr])[_-]"
            r"[A-Za-z0-9_-]{16,}"
        ),
        MASK,
    ),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), MASK),
)


class _Known:
    """The registry of secret values this process holds, with one regex matching them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, None] = {}  # insertion-ordered: the oldest go first past MAX_KNOWN
        self._pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str | None]) -> None:
        fresh = [v for v in values if v and len(v) >= MIN_SECRET_CHARS and v not in self._values]
        if not fresh:
            return
        with self._lock:
            for value in fresh:
                self._values[value] = None
            while len(self._values) > MAX_KNOWN:
                del self._values[next(iter(self._values))]
            longest_first = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in longest_first))

    def replace(self, text: str) -> str:
        pattern = self._pattern  # one read: a concurrent add swaps in a whole new pattern
        return text if pattern is None else pattern.sub(MASK, text)


_KNOWN = _Known()


def remember(*values: str | None) -> None:
    """Register secret values this process holds, so :func:`scrub` removes them from any text
    (values shorter than MIN_SECRET_CHARS and None are ignored)."""
    _KNOWN.add(values)


def _url_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    # A password equal to the user name protects nothing (the local dev services use one);
    # remembering it would mask every mention of that name (logger names, paths) in logs.
    return parts.password if parts.password != parts.username else None


def remember_settings(settings: Settings) -> None:
    """Register every secret in the settings tree: the auth and crypto keys, the LLM key and the
    passwords of the configured database and Redis URLs."""
    remember(
        settings.auth.admin_key,
        settings.auth.internal_token,
        settings.llm.api_key,
        settings.crypto.new_fernet_key,
        *settings.crypto.fernet_keys,
        _url_password(settings.db.dsn),
        _url_password(settings.redis.url),
    )


def scrub(text: str) -> str:
    """``text`` with every known secret value and every secret-shaped token replaced by ``***``.

    Meant for error texts and log lines: idempotent, and it leaves text without secrets as it is.
    """
    if not text:
        return text
    text = _KNOWN.replace(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_url(url: str) -> str:
    """A URL or DSN with its password (and secret query parameters) masked, the rest as it is:
    ``postgresql+asyncpg://app:***@db:5432/app``. Text that is not a URL is scrubbed instead."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return scrub(url)
    if not parts.scheme or not parts.netloc:
        return scrub(url)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{host}"
    query = _URL_QUERY_SECRET.sub(r"\1" + MASK, "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _mask_value(name: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(name, v) for v in value]
    if _SECRET_NAME.search(name):
        return MASK if value else None
    if isinstance(value, str) and value.count("://") > 1:  # a list of URLs
        return ",".join(mask_url(part) for part in value.split(","))
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def mask_settings(settings: Settings | Mapping[str, Any]) -> dict[str, Any]:
    """The settings as JSON-ready data with every secret masked: whole values of secret-named
    fields (``admin_key``, ``internal_token``, ``fernet_key``, ``api_key``, any ``*_password``)
    become ``***`` (None stays None) and passwords inside URLs and DSNs become ``***``.

    The one function every place that shows settings uses (``agentcluster config``, ``/v1/ready``
    details, ``agentcluster check``).
    """
    data = settings if isinstance(settings, Mapping) else settings.model_dump(mode="json")
    return {str(k): _mask_value(str(k), v) for k, v in data.items()}


class ScrubFilter(logging.Filter):
    """A logging filter (put it on a handler) that scrubs each record's message and traceback
    before any formatter sees them; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed %-format: logging reports it itself later
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def scrub_handler(handler: logging.Handler) -> logging.Handler:
    """Put a :class:`ScrubFilter` on ``handler`` (once, however often it is called)."""
    if not any(isinstance(f, ScrubFilter) for f in handler.filters):
        handler.addFilter(ScrubFilter())
    return handler
