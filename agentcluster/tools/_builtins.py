"""Builtin tools that need nothing outside the process: ``current_time`` and ``calculator``."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentcluster.errors import ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools._base import ToolInvocation
from agentcluster.tools._registry import ToolRegistry

__all__ = ["CalculatorTool", "CurrentTimeTool", "builtin_registry", "evaluate_arithmetic"]

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CurrentTimeTool:
    """``current_time``: the current time in an IANA time zone (UTC by default).

    Args:
        clock: returns the current aware datetime; tests pass a fixed one.
    """

    _schema = ToolSchema(
        name="current_time",
        description="The current date and time in a time zone.",
        parameters={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone name such as 'Europe/Paris'; default 'UTC'.",
                }
            },
            "additionalProperties": False,
        },
    )

    def __init__(self, clock: Clock = _utc_now) -> None:
        self._clock = clock

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> dict[str, Any]:
        """Return ``{"iso", "timezone", "unix"}``; an unknown time zone raises ToolError."""
        name = arguments.get("timezone", "UTC")
        now = self._clock().astimezone(_zone(name))
        return {"iso": now.isoformat(), "timezone": name, "unix": int(now.timestamp())}


def _zone(name: Any) -> tzinfo:
    if not isinstance(name, str) or not name:
        raise ToolError("timezone must be a non-empty IANA name such as 'Europe/Paris'")
    if name == "UTC":
        return UTC  # works even where no tz database is installed
    try:
        # ZoneInfo caches zones, so the small file read happens once per name.
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'America/New_York'"
        ) from None


class CalculatorTool:
    """``calculator``: evaluates arithmetic safely (see :func:`evaluate_arithmetic`)."""

    _schema = ToolSchema(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression. Supports numbers, + - * / // % **, parentheses, "
            "sqrt, abs, round, min, max and the constants pi and e."
        ),
        parameters={
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "For example '2 * (3 + sqrt(16))'."}
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
    )

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> dict[str, Any]:
        """Return ``{"expression", "value"}``; an invalid expression raises ToolError."""
        expression = arguments.get("expression")
        if not isinstance(expression, str):
            raise ToolError("expression must be a string such as '2 + 2'")
        return {"expression": expression, "value": evaluate_arithmetic(expression)}


def builtin_registry() -> ToolRegistry:
    """A registry holding the builtin tools."""
    return ToolRegistry([CurrentTimeTool(), CalculatorTool()])


# --- safe arithmetic: walk the AST, allow only a whitelist ---

Number = int | float

MAX_EXPRESSION_CHARS = 1_000
MAX_DEPTH = 200
# Bounds the work and the size of exact integer results (4096 bits is about 1,233 digits).
MAX_INT_BITS = 4_096

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}

_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: lambda a: +a,
    ast.USub: lambda a: -a,
}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _round(args: list[Number]) -> Number:
    if len(args) == 2 and not isinstance(args[1], int):
        raise ToolError("round() takes a whole number of digits, e.g. round(3.14159, 2)")
    return round(args[0], int(args[1])) if len(args) == 2 else round(args[0])


# name -> (implementation, minimum arguments, maximum arguments or None for any)
_FUNCTIONS: dict[str, tuple[Callable[[list[Number]], Number], int, int | None]] = {
    "sqrt": (lambda args: math.sqrt(args[0]), 1, 1),
    "abs": (lambda args: abs(args[0]), 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, None),
    "max": (max, 1, None),
}


def evaluate_arithmetic(expression: str) -> Number:
    """Evaluate an arithmetic expression without ``eval``.

    Allowed: int and float literals, ``+ - * / // % **``, unary ``+``/``-``, parentheses, the
    functions sqrt, abs, round, min, max and the constants pi and e. Nothing else is evaluated.

    Raises:
        ToolError: the expression is too long, not allowed, divides by zero, or its result is too
            large or not a finite real number; the message says which.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"invalid expression: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ToolError("expression is nested too deeply") from None
    try:
        return _eval(tree.body, 0)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result is too large") from None
    except ValueError as exc:  # e.g. sqrt of a negative number
        raise ToolError(f"invalid operation: {exc}") from None
    except RecursionError:  # MAX_DEPTH should come first; this is the safety net
        raise ToolError("expression is nested too deeply") from None


def _eval(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ToolError(f"expression is too deeply nested (over {MAX_DEPTH} levels of operators)")
    if isinstance(node, ast.Constant):
        return _literal(node.value)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        return _checked(_binary(node.op, left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; allowed constants: pi, e")
    if isinstance(node, ast.Call):
        return _checked(_call(node, depth))
    raise ToolError(f"{_describe(node)} is not allowed; use numbers, operators and functions")


def _literal(value: object) -> Number:
    # bool is an int subclass and 1j is a number too; neither belongs in this arithmetic.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _checked(value)
    raise ToolError(f"only numbers are allowed as literals, got {value!r}")


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Pow):
        return _power(left, right)
    implementation = _BINARY.get(type(op))
    if implementation is None:
        raise ToolError(f"operator {type(op).__name__} is not allowed")
    return implementation(left, right)


def _power(base: Number, exponent: Number) -> Number:
    # Refuse before computing: 9**9**9 would otherwise run for minutes and exhaust memory.
    if _int_power_too_large(base, exponent):
        raise ToolError(f"result is too large (more than {MAX_INT_BITS} bits)")
    result: Any = base**exponent
    if isinstance(result, complex):
        raise ToolError("result is not a real number (fractional power of a negative number)")
    return float(result) if isinstance(result, float) else int(result)


def _int_power_too_large(base: Number, exponent: Number) -> bool:
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) <= 1 or exponent <= 0:
        return False
    # A base of b bits is at least 2**(b-1), so the result has at least (b-1) * exponent bits.
    return (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS


def _call(node: ast.Call, depth: int) -> Number:
    allowed = ", ".join(sorted(_FUNCTIONS))
    if not isinstance(node.func, ast.Name):
        raise ToolError(f"{_describe(node.func)} is not allowed; allowed functions: {allowed}")
    if node.func.id not in _FUNCTIONS:
        raise ToolError(f"function {node.func.id!r} is not allowed; allowed functions: {allowed}")
    name = node.func.id
    implementation, least, most = _FUNCTIONS[name]
    if node.keywords:
        raise ToolError(f"{name}() takes no keyword arguments")
    if len(node.args) < least or (most is not None and len(node.args) > most):
        expected = f"{least} or more" if most is None else f"{least} to {most}"
        expected = f"{least}" if least == most else expected
        raise ToolError(f"{name}() takes {expected} argument(s), got {len(node.args)}")
    args = [_eval(arg, depth + 1) for arg in node.args]
    return implementation(args)


def _checked(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result is too large (more than {MAX_INT_BITS} bits)")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return f"attribute access '.{node.attr}'"
    return f"{type(node).__name__} expression"
