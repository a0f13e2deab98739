"""The tools seam: the Tool protocol, a registry and executor, the tools themselves and two fixed
policies for tests.

See :mod:`agentcluster.tools._base` for the ports the agent loop talks to. The tools that need
isolation (http_fetch, python_exec, workspace files, MCP tools, the browser) run on pooled actors
(``actors/tools.py``, ``actors/browser.py``); the modules here are their plain-Python halves.
"""

from agentcluster.tools._base import (
    PolicyDecision,
    PolicyEngine,
    Tool,
    ToolExecutor,
    ToolInvocation,
    ToolOutcome,
)
from agentcluster.tools._browser import (
    BROWSER_TOOL_NAMES,
    BrowserLlm,
    browser_schemas,
    navigation_problem,
    parse_browser_arguments,
)
from agentcluster.tools._browser_llm import LlmBudget, PortChatModel, SettingsBudget
from agentcluster.tools._builtins import (
    CalculatorTool,
    CurrentTimeTool,
    builtin_registry,
    evaluate_arithmetic,
)
from agentcluster.tools._policy import AllowAllPolicy, StaticPolicy
from agentcluster.tools._registry import InProcessToolExecutor, ToolRegistry, validate_arguments
from agentcluster.tools._ssrf import (
    DefaultNetworkPolicy,
    NetworkPolicy,
    Resolver,
    SsrfGuard,
    SystemResolver,
    classify_address,
)

__all__ = [
    "BROWSER_TOOL_NAMES",
    "AllowAllPolicy",
    "BrowserLlm",
    "CalculatorTool",
    "CurrentTimeTool",
    "DefaultNetworkPolicy",
    "InProcessToolExecutor",
    "LlmBudget",
    "NetworkPolicy",
    "PolicyDecision",
    "PolicyEngine",
    "PortChatModel",
    "Resolver",
    "SettingsBudget",
    "SsrfGuard",
    "StaticPolicy",
    "SystemResolver",
    "Tool",
    "ToolExecutor",
    "ToolInvocation",
    "ToolOutcome",
    "ToolRegistry",
    "browser_schemas",
    "builtin_registry",
    "classify_address",
    "evaluate_arithmetic",
    "navigation_problem",
    "parse_browser_arguments",
    "validate_arguments",
]
