"""A registry of tools by name, and the in-process :class:`ToolExecutor` that runs them.

The executor is where a tool call's failures are turned into ``ok=False`` outcomes the model can
read: bad arguments, unknown tool, timeout, a :class:`ToolError`, or a bug in the tool (reported
by exception type only, so internals never reach the model). Cancellation is not a failure: it
propagates, so a turn can be cancelled while a tool runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools._base import Tool, ToolInvocation, ToolOutcome

__all__ = ["InProcessToolExecutor", "ToolRegistry", "select_schemas", "validate_arguments"]

log = logging.getLogger(__name__)

DEFAULT_TOOL_TIMEOUT_S = 30.0


class ToolRegistry:
    """Tools by their schema name.

    Args:
        tools: tools to register right away (same rules as :meth:`register`).
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add a tool under ``tool.schema.name``.

        Raises:
            ConfigError: a tool with that name is already registered.
        """
        name = tool.schema.name
        if name in self._tools:
            raise ConfigError(f"tool {name!r} is already registered")
        self._tools[name] = tool

    def get(self, name: str) -> Tool | None:
        """The tool registered as ``name``, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """The registered tool names, sorted."""
        return sorted(self._tools)

    def schemas(self, names: list[str]) -> list[ToolSchema]:
        """The schemas of the named tools, in the given order.

        Raises:
            ConfigError: a name is not registered (the message lists the known ones).
        """
        return select_schemas({name: tool.schema for name, tool in self._tools.items()}, names)


def select_schemas(schemas: Mapping[str, ToolSchema], names: Iterable[str]) -> list[ToolSchema]:
    """The schemas of the named tools, in the given order.

    Raises:
        ConfigError: a name is not among ``schemas`` (the message lists the known ones).
    """
    names = list(names)
    unknown = [name for name in names if name not in schemas]
    if unknown:
        known = ", ".join(sorted(schemas)) or "none"
        raise ConfigError(f"unknown tool(s) {', '.join(unknown)}; known tools: {known}")
    return [schemas[name] for name in names]


class InProcessToolExecutor:
    """Runs registered tools in the caller's event loop (the :class:`ToolExecutor` port).

    The timeout bounds tools that await; a tool that blocks the loop with CPU work cannot be
    interrupted here, so such tools must bound their own work (the calculator does).

    Args:
        registry: where tools are looked up.
        timeout_s: per-call limit in seconds.

    Raises:
        ConfigError: ``timeout_s`` is not positive.
    """

    def __init__(self, registry: ToolRegistry, timeout_s: float = DEFAULT_TOOL_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s: must be positive, got {timeout_s}")
        self._registry = registry
        self._timeout_s = timeout_s

    def schemas(self, names: list[str]) -> list[ToolSchema]:
        """The schemas of the named tools (unknown names raise ConfigError)."""
        return self._registry.schemas(names)

    async def execute(self, invocation: ToolInvocation) -> ToolOutcome:
        """Run one call; failures come back as ``ok=False`` outcomes, cancellation propagates."""
        started = time.perf_counter()
        outcome = await self._execute(invocation)
        latency_ms = (time.perf_counter() - started) * 1000.0
        return outcome.model_copy(update={"latency_ms": latency_ms})

    async def end_turn(self, session_id: str) -> None:
        """Nothing is held across a turn in-process."""

    async def _execute(self, invocation: ToolInvocation) -> ToolOutcome:
        tool = self._registry.get(invocation.tool)
        if tool is None:
            return _failure(f"unknown tool {invocation.tool!r}")
        problems = validate_arguments(invocation.arguments, tool.schema.parameters)
        if problems:
            return _failure(f"invalid arguments for tool {invocation.tool}: {'; '.join(problems)}")
        return await self._run(tool, invocation)

    async def _run(self, tool: Tool, invocation: ToolInvocation) -> ToolOutcome:
        name = invocation.tool
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                # A copy, so a tool that edits its arguments cannot alter the recorded invocation.
                result = await tool.run(dict(invocation.arguments), invocation)
        except ToolError as exc:
            return _failure(exc.message)
        except TimeoutError as exc:
            if deadline.expired():
                return _failure(f"tool {name} timed out after {self._timeout_s:g} s")
            return _internal_error(name, exc, invocation)
        except Exception as exc:
            # Why broad: a bug in one tool must end as an outcome the model sees, not kill the
            # turn. CancelledError is a BaseException, so cancellation still propagates.
            return _internal_error(name, exc, invocation)
        return _success(name, result)


def _failure(error: str) -> ToolOutcome:
    return ToolOutcome(ok=False, error=error)


def _internal_error(name: str, exc: Exception, invocation: ToolInvocation) -> ToolOutcome:
    # The traceback is for operators; the model only learns the exception type.
    log.error(
        "tool %s failed (session %s, turn %s, call %s)",
        name,
        invocation.session_id,
        invocation.turn_id,
        invocation.tool_call_id,
        exc_info=exc,
    )
    return _failure(f"internal error in tool {name}: {type(exc).__name__}")


def _success(name: str, result: Any) -> ToolOutcome:
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and providers reject them.
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        log.error("tool %s returned a result that is not JSON: %s", name, type(exc).__name__)
        return _failure(f"internal error in tool {name}: result is not JSON-serializable")
    return ToolOutcome(ok=True, result=result)


# --- argument validation: the small subset of JSON Schema that tool parameters use ---

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    # bool is an int subclass in Python but not a JSON number.
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
}


def validate_arguments(arguments: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """Check arguments against a tool's JSON-schema parameters (a minimal subset).

    Checked: ``type`` (including lists of types), ``enum``, ``required``, ``properties``,
    ``additionalProperties: false`` and ``items``, recursively. Other keywords are ignored.

    Returns:
        Problems phrased for the model; empty when the arguments are acceptable.
    """
    problems: list[str] = []
    _check(arguments, parameters, "", problems)
    return problems


def _check(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if not _check_type(value, schema, path, problems):
        return
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(json.dumps(choice) for choice in schema["enum"])
        problems.append(f"{_label(path)} must be one of {choices}")
    if isinstance(value, dict):
        _check_object(value, schema, path, problems)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{index}]", problems)


def _check_type(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> bool:
    expected = schema.get("type")
    if expected is None:
        return True
    names = [expected] if isinstance(expected, str) else list(expected)
    # An unknown type name in our own schema is not the model's fault: don't reject on it.
    if any(_JSON_TYPES.get(name, lambda _: True)(value) for name in names):
        return True
    problems.append(f"{_label(path)} must be of type {' or '.join(names)}, got {_json_type(value)}")
    return False


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], path: str, problems: list[str]
) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            problems.append(f"{_label(_join(path, key))} is required")
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], _join(path, key), problems)
        elif schema.get("additionalProperties") is False:
            accepted = ", ".join(sorted(properties)) or "none"
            problems.append(f"{_label(_join(path, key))} is not accepted (accepted: {accepted})")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _label(path: str) -> str:
    return f"argument {path!r}" if path else "arguments"


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _JSON_TYPES[name](value):
            return name
    return type(value).__name__
