"""The tools seam: the Tool protocol, a registry and executor, builtin tools and simple policies.

See :mod:`agentcluster.tools._base` for the ports the agent loop talks to.
"""

from agentcluster.tools._base import (
    PolicyDecision,
    PolicyEngine,
    Tool,
    ToolExecutor,
    ToolInvocation,
    ToolOutcome,
)
from agentcluster.tools._builtins import (
    CalculatorTool,
    CurrentTimeTool,
    builtin_registry,
    evaluate_arithmetic,
)
from agentcluster.tools._policy import AllowAllPolicy, StaticPolicy
from agentcluster.tools._registry import InProcessToolExecutor, ToolRegistry, validate_arguments

__all__ = [
    "AllowAllPolicy",
    "CalculatorTool",
    "CurrentTimeTool",
    "InProcessToolExecutor",
    "PolicyDecision",
    "PolicyEngine",
    "StaticPolicy",
    "Tool",
    "ToolExecutor",
    "ToolInvocation",
    "ToolOutcome",
    "ToolRegistry",
    "builtin_registry",
    "evaluate_arithmetic",
    "validate_arguments",
]
