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
    ClickArgs,
    ExtractArgs,
    NavigateArgs,
    ScreenshotArgs,
    ScrollArgs,
    SelectArgs,
    StateArgs,
    TaskArgs,
    TypeArgs,
    browser_schemas,
    navigation_problem,
    navigation_target,
    parse_browser_arguments,
)
from agentcluster.tools._browser_llm import LlmBudget, PortChatModel, SettingsBudget
from agentcluster.tools._builtins import (
    CalculatorTool,
    CurrentTimeTool,
    builtin_registry,
    evaluate_arithmetic,
)
from agentcluster.tools._egress_proxy import EgressLease, EgressProxy
from agentcluster.tools._files import SessionWorkspaces, file_tools
from agentcluster.tools._http import HttpFetchTool
from agentcluster.tools._mcp import McpConfig, McpToolset, load_mcp_config
from agentcluster.tools._policy import AllowAllPolicy, StaticPolicy
from agentcluster.tools._registry import (
    InProcessToolExecutor,
    ToolRegistry,
    select_schemas,
    validate_arguments,
)
from agentcluster.tools._sandbox import PythonExecTool, PythonSandbox, SandboxLimits, SandboxRuntime
from agentcluster.tools._ssrf import (
    AddressCategory,
    DefaultNetworkPolicy,
    IPAddress,
    NetworkPolicy,
    Resolver,
    SsrfGuard,
    SystemResolver,
    classify_address,
)

__all__ = [
    "BROWSER_TOOL_NAMES",
    "AddressCategory",
    "AllowAllPolicy",
    "BrowserLlm",
    "CalculatorTool",
    "ClickArgs",
    "CurrentTimeTool",
    "DefaultNetworkPolicy",
    "EgressLease",
    "EgressProxy",
    "ExtractArgs",
    "HttpFetchTool",
    "IPAddress",
    "InProcessToolExecutor",
    "LlmBudget",
    "McpConfig",
    "McpToolset",
    "NavigateArgs",
    "NetworkPolicy",
    "PolicyDecision",
    "PolicyEngine",
    "PortChatModel",
    "PythonExecTool",
    "PythonSandbox",
    "Resolver",
    "SandboxLimits",
    "SandboxRuntime",
    "ScreenshotArgs",
    "ScrollArgs",
    "SelectArgs",
    "SessionWorkspaces",
    "SettingsBudget",
    "SsrfGuard",
    "StateArgs",
    "StaticPolicy",
    "SystemResolver",
    "TaskArgs",
    "Tool",
    "ToolExecutor",
    "ToolInvocation",
    "ToolOutcome",
    "ToolRegistry",
    "TypeArgs",
    "browser_schemas",
    "builtin_registry",
    "classify_address",
    "evaluate_arithmetic",
    "file_tools",
    "load_mcp_config",
    "navigation_problem",
    "navigation_target",
    "parse_browser_arguments",
    "select_schemas",
    "validate_arguments",
]
