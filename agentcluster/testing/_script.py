"""The script vocabulary of the fake LLM: actions, rules, scripts, recorded requests, the demo.

Public names are re-exported by :mod:`agentcluster.testing.fake_llm`; import them from there.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, TypeAdapter

__all__ = [
    "Action",
    "ActionLike",
    "BrokenStream",
    "Failure",
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
    "text_of",
]

FinishReason: TypeAlias = Literal["stop", "tool_calls", "length"]

_SCHEMA_DEPTH_LIMIT = 8


# --------------------------------------------------------------------------------------------------
# Script vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A tool call the fake model makes.

    Args:
        name: the function name.
        arguments: the arguments; a dict is sent as JSON, a string verbatim (use that to send
            malformed JSON on purpose).
        id: the call id; a fresh ``call_...`` id when omitted.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        """The arguments as they go on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class Reply:
    """A successful answer: text, tool calls, or both.

    Args:
        content: the text; a dict or list is sent as its JSON text (structured output).
        tool_calls: the tool calls to make.
        finish_reason: forces the finish reason; by default it follows from the reply.
        latency_s: overrides :attr:`Timing.latency_s` for this reply.
        ttft_s: overrides :attr:`Timing.ttft_s` for this reply.
        inter_chunk_s: overrides :attr:`Timing.inter_chunk_s` for this reply.
    """

    content: str | dict[str, Any] | list[Any] | None = None
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: FinishReason | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    inter_chunk_s: float | None = None

    def __post_init__(self) -> None:
        # A tuple keeps the frozen reply immutable even when a caller passed a list.
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        for name in ("latency_s", "ttft_s", "inter_chunk_s"):
            _check_non_negative(name, getattr(self, name))

    @property
    def text(self) -> str | None:
        """The content as it goes on the wire."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        return json.dumps(self.content, separators=(",", ":"))


@dataclass(frozen=True)
class Failure:
    """An HTTP error in OpenAI's error shape.

    Args:
        status: the HTTP status, 400..599 (429 rate limit, 500/503 server errors, ...).
        retry_after: seconds for the ``Retry-After`` header, when set.
        message: the error message; a generic one per status when omitted.
        latency_s: how long to wait before answering.
    """

    status: int = 500
    retry_after: float | None = None
    message: str | None = None
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(
                f"Failure.status must be an HTTP error status 400..599, got {self.status}"
            )
        _check_non_negative("retry_after", self.retry_after)
        _check_non_negative("latency_s", self.latency_s)


@dataclass(frozen=True)
class Timeout:
    """Say nothing for ``seconds`` (or until the server stops), then answer 504.

    Give the client a shorter timeout than ``seconds`` to exercise its timeout path.
    """

    seconds: float = 3600.0

    def __post_init__(self) -> None:
        _check_non_negative("seconds", self.seconds)


BrokenChunk: TypeAlias = Literal["bad_json", "not_sse", "wrong_shape"]


@dataclass(frozen=True)
class BrokenStream:
    """A stream that goes wrong: ``content`` streamed as usual (one chunk per word), then one
    malformed server-sent event, then the stream ends (``then="close"``, no ``[DONE]``) or goes
    on to ``[DONE]`` as if nothing happened (``then="done"``).

    ``chunk`` picks the damage: ``bad_json`` (a ``data:`` line whose JSON is cut off),
    ``not_sse`` (bytes that are no SSE field at all), ``wrong_shape`` (valid JSON that is not a
    ``chat.completion.chunk``: ``choices`` is a string). Non-streaming requests get a 200 whose
    body is the broken chunk's text. Not available in script files.
    """

    content: str = ""
    chunk: BrokenChunk = "bad_json"
    then: Literal["close", "done"] = "close"

    @property
    def garbage(self) -> bytes:
        """The malformed event as it goes on the wire."""
        if self.chunk == "not_sse":
            return b"\x00\xff{{{ this is not a server-sent event\n\n"
        if self.chunk == "wrong_shape":
            return b'data: {"id":"x","object":"chat.completion.chunk","choices":"oops"}\n\n'
        return b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"delta":{"con\n\n'


Action: TypeAlias = Reply | Failure | Timeout | BrokenStream
ActionLike: TypeAlias = Action | str


@dataclass(frozen=True)
class Timing:
    """Server-wide delays, each overridable per :class:`Reply`.

    Args:
        latency_s: time before a non-streaming response; ``None`` means the time the same
            response would take as a stream (``ttft_s`` + ``inter_chunk_s`` per further chunk).
        ttft_s: time before the first streamed chunk.
        inter_chunk_s: time between streamed chunks.
    """

    latency_s: float | None = None
    ttft_s: float = 0.0
    inter_chunk_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_s", "ttft_s", "inter_chunk_s"):
            _check_non_negative(name, getattr(self, name))


def _check_non_negative(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


# --------------------------------------------------------------------------------------------------
# Requests as the server saw them
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One chat-completion request the server received.

    Attributes:
        path: the URL path it was posted to.
        model: the ``model`` field (without LiteLLM's ``openai/`` prefix, which never reaches us).
        messages: the messages as sent.
        tools: the tool definitions offered, ``[]`` when none.
        stream: whether a stream was asked for.
        include_usage: whether ``stream_options.include_usage`` was set.
        response_format: the ``response_format`` field, if any.
        max_tokens: ``max_completion_tokens`` or ``max_tokens``, if any.
        headers: the HTTP headers, names lower-cased.
        body: the whole JSON body.
        received_at: ``time.time()`` on arrival.
    """

    path: str
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    response_format: dict[str, Any] | None
    max_tokens: int | None
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float

    @property
    def last_user_text(self) -> str:
        """The text of the last ``user`` message, ``""`` when there is none."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return text_of(message.get("content"))
        return ""

    @property
    def last_role(self) -> str | None:
        """The role of the last message (``tool`` right after a tool result)."""
        return str(self.messages[-1].get("role")) if self.messages else None

    @property
    def tool_names(self) -> list[str]:
        """The names of the offered tools, in order."""
        return [str(tool.get("function", {}).get("name", "")) for tool in self.tools]

    @property
    def structured(self) -> bool:
        """Whether JSON output was requested (``json_schema`` or ``json_object``)."""
        kind = (self.response_format or {}).get("type")
        return kind in {"json_schema", "json_object"}

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The requested JSON schema, for ``response_format`` of type ``json_schema``."""
        if (self.response_format or {}).get("type") != "json_schema":
            return None
        schema = (self.response_format or {}).get("json_schema", {}).get("schema")
        return schema if isinstance(schema, dict) else None


def text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of parts (images are skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return "".join(str(part) for part in parts)
    return ""


# --------------------------------------------------------------------------------------------------
# Rules and scripts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Answer requests that match every given condition with ``reply``.

    Args:
        reply: what to answer; a string is a text :class:`Reply`; a function of the request
            answers each matching request itself (not available in script files).
        model: the request's model equals this.
        when_last_user_contains: the last user message contains this (case-insensitive).
        when_tools_offered: tools are (True) or are not (False) offered.
        when_structured: JSON output is (True) or is not (False) requested.
        when: a custom predicate (not available in script files).
        times: stop matching after this many uses; ``None`` for ever.
    """

    reply: ActionLike | Responder
    model: str | None = None
    when_last_user_contains: str | None = None
    when_tools_offered: bool | None = None
    when_structured: bool | None = None
    when: Callable[[RecordedRequest], bool] | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.reply):
            object.__setattr__(self, "reply", _as_action(self.reply))
        if self.times is not None and self.times < 1:
            raise ValueError(f"Rule.times must be >= 1 or None, got {self.times}")

    def matches(self, request: RecordedRequest) -> bool:
        """Whether every condition of the rule holds for ``request``."""
        needle = (self.when_last_user_contains or "").lower()
        checks = (
            self.model is None or request.model == self.model,
            needle in request.last_user_text.lower(),
            self.when_tools_offered is None or self.when_tools_offered == bool(request.tools),
            self.when_structured is None or self.when_structured == request.structured,
        )
        return all(checks) and (self.when is None or self.when(request))


Responder: TypeAlias = Callable[[RecordedRequest], Action]


class Script:
    """What the fake model answers: rules, then a queue, then a default.

    Safe to change from any thread while the server runs (tests push replies from their own thread).

    Args:
        replies: the initial queue; a string is a text :class:`Reply`.
        rules: rules checked before the queue, in order.
        default: the answer when no rule matches and the queue is empty: a fixed action or a
            function of the request; :func:`demo_reply` when omitted.
    """

    def __init__(
        self,
        replies: Iterable[ActionLike] = (),
        *,
        rules: Iterable[Rule] = (),
        default: ActionLike | Responder | None = None,
    ) -> None:
        # Re-entrant: a rule's `when` predicate may look at the script (e.g. `remaining`).
        self._lock = threading.RLock()
        self._queue: list[Action] = [_as_action(item) for item in replies]
        self._rules: list[Rule] = list(rules)
        self._uses: dict[int, int] = {}
        self._default: Responder = _as_responder(default)

    def push(self, *replies: ActionLike) -> Script:
        """Append replies to the queue; returns the script for chaining."""
        with self._lock:
            self._queue.extend(_as_action(item) for item in replies)
        return self

    def add_rule(self, rule: Rule) -> Script:
        """Append a rule (checked after the existing ones); returns the script for chaining."""
        with self._lock:
            self._rules.append(rule)
        return self

    @property
    def remaining(self) -> int:
        """How many queued replies have not been used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def rules(self) -> list[Rule]:
        """A copy of the rules, in order."""
        with self._lock:
            return list(self._rules)

    def next_action(self, request: RecordedRequest) -> Action:
        """Choose the answer to ``request``, consuming a queued reply or a rule use."""
        with self._lock:
            rule_reply = self._use_matching_rule(request)
            if rule_reply is None and self._queue:
                return self._queue.pop(0)
        # Outside the lock: a user-supplied function may be slow or touch the script itself.
        if rule_reply is None:
            return self._default(request)
        return rule_reply(request) if callable(rule_reply) else _as_action(rule_reply)

    def _use_matching_rule(self, request: RecordedRequest) -> ActionLike | Responder | None:
        for index, rule in enumerate(self._rules):
            used = self._uses.get(index, 0)
            if rule.times is not None and used >= rule.times:
                continue
            if rule.matches(request):
                self._uses[index] = used + 1
                return rule.reply
        return None

    @classmethod
    def from_data(cls, data: Any) -> Script:
        """Build a script from parsed YAML/JSON (see the module docstring for the format).

        Raises:
            ValueError: the data does not describe a script.
        """
        if isinstance(data, list):
            data = {"replies": data}
        if not isinstance(data, dict):
            raise ValueError(
                "a script is a list of replies or a mapping with replies/rules/default"
            )
        unknown = set(data) - {"replies", "rules", "default"}
        if unknown:
            raise ValueError(f"unknown script keys: {sorted(unknown)}")
        replies = [action_from_data(item) for item in data.get("replies") or []]
        rules = [_rule_from_data(item) for item in data.get("rules") or []]
        default = data.get("default")
        return cls(
            replies, rules=rules, default=None if default is None else action_from_data(default)
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Script:
        """Load a YAML (``.yaml``/``.yml``) or JSON script file.

        Raises:
            ValueError: the file does not describe a script (the message names the file).
        """
        path = Path(path)
        try:
            return cls.from_data(_load_data_file(path))
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"{path}: {exc}") from exc


def _load_data_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in {".yaml", ".yml"}:
        return json.loads(text)
    import yaml  # imported here: only YAML script files need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from exc


def _as_action(item: ActionLike) -> Action:
    return Reply(content=item) if isinstance(item, str) else item


def _as_responder(default: ActionLike | Responder | None) -> Responder:
    if default is None:
        return demo_reply
    if isinstance(default, str | Reply | Failure | Timeout | BrokenStream):
        action = _as_action(default)
        return lambda _request: action
    return default


_ACTION_TYPES: dict[str, type[Reply] | type[Failure] | type[Timeout]] = {
    "reply": Reply,
    "failure": Failure,
    "timeout": Timeout,
}


def action_from_data(data: Any) -> Action:
    """Parse one action from script-file data: a string, or a mapping with an optional ``type``.

    Raises:
        ValueError: unknown type or invalid fields.
    """
    if isinstance(data, str):
        return Reply(content=data)
    if not isinstance(data, dict):
        raise ValueError(f"a reply is a string or a mapping, got {data!r}")
    fields = dict(data)
    kind = fields.pop("type", None) or _implied_type(fields)
    if kind not in _ACTION_TYPES:
        raise ValueError(f"unknown reply type {kind!r}; use one of {sorted(_ACTION_TYPES)}")
    action: Action = TypeAdapter(_ACTION_TYPES[kind]).validate_python(fields)
    return action


def _implied_type(fields: Mapping[str, Any]) -> str:
    if "status" in fields:
        return "failure"
    if set(fields) == {"seconds"}:
        return "timeout"
    return "reply"


def _rule_from_data(data: Any) -> Rule:
    if not isinstance(data, dict) or "reply" not in data:
        raise ValueError(f"a rule is a mapping with a 'reply', got {data!r}")
    fields = dict(data)
    reply = action_from_data(fields.pop("reply"))
    if "when" in fields:
        raise ValueError("'when' (a Python predicate) is not available in script files")
    conditions = _RuleConditions.model_validate(fields)
    return Rule(reply=reply, **conditions.model_dump())


class _RuleConditions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    when_last_user_contains: str | None = None
    when_tools_offered: bool | None = None
    when_structured: bool | None = None
    times: int | None = None


# --------------------------------------------------------------------------------------------------
# The default demo behaviour
# --------------------------------------------------------------------------------------------------


def demo_reply(request: RecordedRequest) -> Action:
    """The answer when nothing is scripted (documented in the module docstring)."""
    if request.structured:
        schema = request.json_schema
        if schema is None:
            return Reply(content={"answer": f"[demo] You said: {request.last_user_text}"})
        return Reply(content=example_from_schema(schema))
    if request.last_role == "tool":
        return Reply(
            content=f"[demo] The tool returned: {text_of(request.messages[-1].get('content'))}"
        )
    tool = _tool_the_user_asks_for(request)
    if tool is not None:
        return Reply(tool_calls=[ToolCall(name=tool)])
    return Reply(content=f"[demo] You said: {request.last_user_text}")


def _tool_the_user_asks_for(request: RecordedRequest) -> str | None:
    text = request.last_user_text.lower()
    for name in request.tool_names:
        if name and (name.lower() in text or name.lower().replace("_", " ") in text):
            return name
    if re.search(r"\btime\b", text):
        return next((name for name in request.tool_names if "time" in name.lower()), None)
    return None


def example_from_schema(schema: Mapping[str, Any], defs: Mapping[str, Any] | None = None) -> Any:
    """A minimal JSON value that fits a JSON schema (first choice of unions, all object properties).

    Handles ``$ref`` into ``$defs``/``definitions``, ``const``/``default``/``enum``, ``anyOf``/
    ``oneOf``/``allOf`` and the basic types; enough for the schemas agents ask models to fill.
    """
    if defs is None:
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _example(schema, defs, 0)


def _example(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> Any:
    if depth > _SCHEMA_DEPTH_LIMIT:
        return None
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return _example(target, defs, depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], defs, depth + 1)
    return _example_of_type(schema, defs, depth)


def _example_of_type(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> Any:
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _example(prop, defs, depth + 1) for name, prop in properties.items()}
    if kind == "array":
        count = int(schema.get("minItems", 0))
        return [_example(schema.get("items", {}), defs, depth + 1) for _ in range(count)]
    simple: dict[str, Any] = {"string": "demo", "integer": 0, "number": 0, "boolean": False}
    return simple.get(kind)
