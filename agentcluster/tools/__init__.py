"""The tools seam: the Tool protocol, a registry and executor, the tools themselves and two fixed
policies for tests.

See :mod:`agentcluster.tools._base` for the ports the agent loop talks to. The tools that need
isolation (http_fetch, python_exec, workspace files, MCP tools) run on pooled actors:
:class:`ToolWorker` hosts them in plain Python and ``actors/tools.py`` is its Ray shell (browsers
likewise: :mod:`agentcluster.browser` and ``actors/browser.py``).
"""

from agentcluster.tools._base import (
    BatchPolicyEngine,
    PolicyDecision,
    PolicyEngine,
    Tool,
    ToolExecutor,
    ToolInvocation,
    ToolOutcome,
    decide_tools,
)
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
from agentcluster.tools._urls import WebUrl, parse_web_url, web_url_problem
from agentcluster.tools._worker import NetworkPolicyFactory, ToolWorker

__all__ = [
    "AddressCategory",
    "AllowAllPolicy",
    "BatchPolicyEngine",
    "CalculatorTool",
    "CurrentTimeTool",
    "DefaultNetworkPolicy",
    "EgressLease",
    "EgressProxy",
    "HttpFetchTool",
    "IPAddress",
    "InProcessToolExecutor",
    "McpConfig",
    "McpToolset",
    "NetworkPolicy",
    "NetworkPolicyFactory",
    "PolicyDecision",
    "PolicyEngine",
    "PythonExecTool",
    "PythonSandbox",
    "Resolver",
    "SandboxLimits",
    "SandboxRuntime",
    "SessionWorkspaces",
    "SsrfGuard",
    "StaticPolicy",
    "SystemResolver",
    "Tool",
    "ToolExecutor",
    "ToolInvocation",
    "ToolOutcome",
    "ToolRegistry",
    "ToolWorker",
    "WebUrl",
    "builtin_registry",
    "classify_address",
    "decide_tools",
    "evaluate_arithmetic",
    "file_tools",
    "load_mcp_config",
    "parse_web_url",
    "select_schemas",
    "validate_arguments",
    "web_url_problem",
]
