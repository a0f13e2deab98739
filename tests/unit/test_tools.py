"""The tools seam: builtin tools, the registry, the in-process executor and the simple policies."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm._types import ToolSchema
from agentcluster.tools import (
    AllowAllPolicy,
    CalculatorTool,
    CurrentTimeTool,
    InProcessToolExecutor,
    PolicyEngine,
    StaticPolicy,
    Tool,
    ToolExecutor,
    ToolInvocation,
    ToolRegistry,
    builtin_registry,
    validate_arguments,
)


def _invocation(tool: str, **arguments: Any) -> ToolInvocation:
    return ToolInvocation(
        tenant_id="t1",
        session_id="s1",
        turn_id="turn1",
        agent="assistant",
        tool_call_id="call1",
        tool=tool,
        arguments=arguments,
    )


async def _calculate(expression: str) -> Any:
    result = await CalculatorTool().run({"expression": expression}, _invocation("calculator"))
    assert result["expression"] == expression
    return result["value"]


class FakeTool:
    """A tool whose behaviour is a coroutine function given by the test."""

    def __init__(self, name: str, behaviour: Any, parameters: dict[str, Any] | None = None) -> None:
        self._schema = ToolSchema(
            name=name, description=f"test tool {name}", parameters=parameters or {"type": "object"}
        )
        self._behaviour = behaviour

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> Any:
        return await self._behaviour(arguments)


def _executor(*tools: Tool, timeout_s: float = 5.0) -> InProcessToolExecutor:
    return InProcessToolExecutor(ToolRegistry(tools), timeout_s=timeout_s)


# --- calculator ---


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 3 ** 2", 512),
        ("-2 ** 2", -4),
        ("-3 + +5", 2),
        ("--4", 4),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("2 ** -1", 0.5),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("min(3, 1, 2) + max(4, 9)", 10),
        ("2 * pi", 2 * math.pi),
        ("e", math.e),
        ("1.5e3 + 0x10 + 1_000", 2516.0),
        ("  1 + 1  ", 2),
    ],
)
async def test_calculator_evaluates_arithmetic(expression: str, expected: float) -> None:
    value = await _calculate(expression)
    assert value == pytest.approx(expected)
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "function '__import__' is not allowed; allowed functions: abs, max"),
        ("__import__('os').system('true')", "attribute access '.system' is not allowed"),
        ("(1).real", "attribute access '.real' is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("open('/etc/passwd')", "function 'open' is not allowed"),
        ("sqrt.__class__", "attribute access '.__class__' is not allowed"),
        ("[1, 2]", "List expression is not allowed"),
        ("lambda: 1", "Lambda expression is not allowed"),
        ("1 < 2", "Compare expression is not allowed"),
        ("'a' * 3", "only numbers are allowed as literals"),
        ("True + 1", "only numbers are allowed as literals"),
        ("1j * 1j", "only numbers are allowed as literals"),
        ("1 +", "invalid expression"),
        ("9 ** 9 ** 9", "result is too large"),
        ("2 ** 100000", "result is too large"),
        ("2.0 ** 100000", "result is too large"),
        ("1e308 * 10", "result is not a finite number"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "invalid operation: math domain error"),
        ("(-8) ** 0.5", "result is not a real number"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), got 2"),
        ("min()", "min() takes 1 or more argument(s), got 0"),
        ("round(1, x=2)", "round() takes no keyword arguments"),
        ("round(1.5, 0.5)", "round() takes a whole number of digits"),
        ("-" * 300 + "1", "too deeply nested"),
        ("1 + " * 400 + "1", "expression is longer than 1000 characters"),
    ],
)
async def test_calculator_rejects_with_a_clear_message(expression: str, message: str) -> None:
    with pytest.raises(ToolError) as caught:
        await _calculate(expression)
    assert message in caught.value.message


# --- current_time ---

FIXED = datetime(2024, 7, 1, 12, 30, 0, tzinfo=UTC)


async def test_current_time_defaults_to_utc() -> None:
    result = await CurrentTimeTool(clock=lambda: FIXED).run({}, _invocation("current_time"))
    assert result == {
        "iso": "2024-07-01T12:30:00+00:00",
        "timezone": "UTC",
        "unix": int(FIXED.timestamp()),
    }


async def test_current_time_in_a_named_zone() -> None:
    tool = CurrentTimeTool(clock=lambda: FIXED)
    result = await tool.run({"timezone": "Europe/Paris"}, _invocation("current_time"))
    assert result["iso"] == "2024-07-01T14:30:00+02:00"
    assert result["timezone"] == "Europe/Paris"
    assert result["unix"] == int(FIXED.timestamp())


async def test_current_time_real_clock_is_now() -> None:
    before = datetime.now(UTC).timestamp()
    result = await CurrentTimeTool().run({}, _invocation("current_time"))
    assert before - 1 <= result["unix"] <= datetime.now(UTC).timestamp() + 1


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", ""])
async def test_current_time_rejects_unknown_zones(zone: str) -> None:
    with pytest.raises(ToolError, match="timezone"):
        await CurrentTimeTool().run({"timezone": zone}, _invocation("current_time"))


# --- registry ---


async def _echo(arguments: dict[str, Any]) -> Any:
    return arguments


def test_registry_rejects_duplicate_names() -> None:
    registry = ToolRegistry([FakeTool("echo", _echo)])
    with pytest.raises(ConfigError, match="'echo' is already registered"):
        registry.register(FakeTool("echo", _echo))


def test_registry_schemas_in_the_given_order() -> None:
    registry = builtin_registry()
    assert registry.names() == ["calculator", "current_time"]
    schemas = registry.schemas(["current_time", "calculator"])
    assert [schema.name for schema in schemas] == ["current_time", "calculator"]
    assert registry.get("calculator") is not None
    assert registry.get("nope") is None


def test_registry_unknown_schema_names_the_tool_and_the_known_ones() -> None:
    executor = InProcessToolExecutor(builtin_registry())
    with pytest.raises(ConfigError) as caught:
        executor.schemas(["calculator", "web_search"])
    assert "web_search" in caught.value.message
    assert "known tools: calculator, current_time" in caught.value.message


def test_builtin_schemas_are_openai_functions() -> None:
    for schema in builtin_registry().schemas(["calculator", "current_time"]):
        wire = schema.to_openai()
        assert wire["type"] == "function"
        assert wire["function"]["parameters"]["additionalProperties"] is False


def test_executor_and_policies_satisfy_their_ports() -> None:
    executor: ToolExecutor = InProcessToolExecutor(ToolRegistry())
    policies: list[PolicyEngine] = [AllowAllPolicy(), StaticPolicy({})]
    tools: list[Tool] = [CalculatorTool(), CurrentTimeTool()]
    assert executor and policies and tools


def test_executor_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        InProcessToolExecutor(ToolRegistry(), timeout_s=0)


# --- argument validation ---

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "flag": {"type": "boolean"},
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "maybe": {"type": ["string", "null"]},
        "inner": {
            "type": "object",
            "properties": {"x": {"type": "number"}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
    "required": ["name"],
    "additionalProperties": False,
}


def test_validation_accepts_good_arguments() -> None:
    arguments = {
        "name": "a",
        "count": 2,
        "ratio": 1,
        "flag": False,
        "mode": "fast",
        "tags": ["x"],
        "maybe": None,
        "inner": {"x": 1.5},
    }
    assert validate_arguments(arguments, NESTED) == []


def test_validation_reports_every_problem() -> None:
    arguments = {
        "count": True,
        "ratio": "1",
        "mode": "medium",
        "tags": ["x", 3],
        "maybe": 1,
        "inner": {"y": 1},
        "extra": 1,
    }
    assert validate_arguments(arguments, NESTED) == [
        "argument 'name' is required",
        "argument 'count' must be of type integer, got boolean",
        "argument 'ratio' must be of type number, got string",
        'argument \'mode\' must be one of "fast", "slow"',
        "argument 'tags[1]' must be of type string, got integer",
        "argument 'maybe' must be of type string or null, got integer",
        "argument 'inner.x' is required",
        "argument 'inner.y' is not accepted (accepted: x)",
        "argument 'extra' is not accepted (accepted: count, flag, inner, maybe, mode, name, "
        "ratio, tags)",
    ]


def test_validation_allows_unknown_keys_unless_forbidden() -> None:
    assert validate_arguments({"anything": 1}, {"type": "object", "properties": {}}) == []


# --- executor ---


async def test_executor_runs_a_builtin_and_measures_latency() -> None:
    executor = InProcessToolExecutor(builtin_registry())
    outcome = await executor.execute(_invocation("calculator", expression="6 * 7"))
    assert outcome.ok
    assert outcome.result == {"expression": "6 * 7", "value": 42}
    assert outcome.error is None
    assert outcome.latency_ms > 0


async def test_executor_reports_bad_arguments_the_model_can_fix() -> None:
    executor = InProcessToolExecutor(builtin_registry())
    outcome = await executor.execute(_invocation("calculator", expr="1"))
    assert not outcome.ok
    assert outcome.error == (
        "invalid arguments for tool calculator: argument 'expression' is required; "
        "argument 'expr' is not accepted (accepted: expression)"
    )
    wrong_type = await executor.execute(_invocation("calculator", expression=1))
    assert wrong_type.error is not None
    assert "argument 'expression' must be of type string, got integer" in wrong_type.error


async def test_executor_reports_unknown_tools() -> None:
    outcome = await InProcessToolExecutor(builtin_registry()).execute(_invocation("rm_rf"))
    assert not outcome.ok
    assert outcome.error == "unknown tool 'rm_rf'"


async def test_executor_returns_tool_errors_to_the_model() -> None:
    executor = InProcessToolExecutor(builtin_registry())
    outcome = await executor.execute(_invocation("calculator", expression="1/0"))
    assert not outcome.ok
    assert outcome.error == "division by zero"
    zone = await executor.execute(_invocation("current_time", timezone="Nowhere/Land"))
    assert zone.error is not None and "unknown timezone 'Nowhere/Land'" in zone.error


@pytest.mark.timeout(10)
async def test_executor_times_out_a_slow_tool() -> None:
    never = asyncio.Event()

    async def hang(arguments: dict[str, Any]) -> Any:
        await never.wait()

    outcome = await _executor(FakeTool("hang", hang), timeout_s=0.05).execute(_invocation("hang"))
    assert not outcome.ok
    assert outcome.error == "tool hang timed out after 0.05 s"
    assert outcome.latency_ms > 0


async def test_executor_hides_unexpected_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(arguments: dict[str, Any]) -> Any:
        raise KeyError("secret internal detail")

    with caplog.at_level(logging.ERROR, logger="agentcluster.tools._registry"):
        outcome = await _executor(FakeTool("broken", broken)).execute(_invocation("broken"))
    assert not outcome.ok
    assert outcome.error == "internal error in tool broken: KeyError"
    # The model does not see the detail; operators do, in the log with the traceback.
    assert caplog.records and caplog.records[0].exc_info is not None


async def test_executor_treats_a_tools_own_timeout_as_a_bug() -> None:
    async def own_timeout(arguments: dict[str, Any]) -> Any:
        raise TimeoutError

    outcome = await _executor(FakeTool("t", own_timeout)).execute(_invocation("t"))
    assert outcome.error == "internal error in tool t: TimeoutError"


@pytest.mark.parametrize("result", [{1, 2}, object(), float("nan"), {"x": float("inf")}])
async def test_executor_rejects_non_json_results(result: Any) -> None:
    async def returns(arguments: dict[str, Any]) -> Any:
        return result

    outcome = await _executor(FakeTool("odd", returns)).execute(_invocation("odd"))
    assert not outcome.ok
    assert outcome.error == "internal error in tool odd: result is not JSON-serializable"


async def test_executor_passes_a_copy_of_the_arguments() -> None:
    async def mutate(arguments: dict[str, Any]) -> Any:
        arguments["added"] = True
        return arguments

    invocation = _invocation("mutate", a=1)
    outcome = await _executor(FakeTool("mutate", mutate)).execute(invocation)
    assert outcome.result == {"a": 1, "added": True}
    assert invocation.arguments == {"a": 1}


@pytest.mark.timeout(10)
async def test_executor_propagates_cancellation() -> None:
    started = asyncio.Event()
    never = asyncio.Event()
    cancelled_inside = asyncio.Event()

    async def slow(arguments: dict[str, Any]) -> Any:
        started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled_inside.set()
            raise

    executor = _executor(FakeTool("slow", slow), timeout_s=60)
    task = asyncio.create_task(executor.execute(_invocation("slow")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled_inside.is_set()
    assert task.cancelled()


# --- policies ---


async def test_allow_all_policy() -> None:
    decision = await AllowAllPolicy().decide_tool(_invocation("anything"))
    assert decision.allowed
    assert decision.engine == "allow-all"
    assert decision.reason == "no policy configured"


async def test_static_policy_denies_listed_tools_only() -> None:
    deny = {"current_time": "disabled by the operator"}
    policy = StaticPolicy(deny)
    deny["calculator"] = "added after construction"
    denied = await policy.decide_tool(_invocation("current_time"))
    assert (denied.allowed, denied.reason, denied.engine) == (
        False,
        "disabled by the operator",
        "static",
    )
    allowed = await policy.decide_tool(_invocation("calculator"))
    assert allowed.allowed
    assert allowed.engine == "static"
