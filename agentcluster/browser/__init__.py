"""Browsers for the agents, in plain Python: the browser tools, browser_task's model and the
worker that drives one Chromium.

* The tools as the model sees them: schemas, typed arguments and navigation checks
  (:func:`browser_schemas`, :func:`parse_browser_arguments`, :func:`navigation_target`), and
  :class:`BrowserLlm`, the model route a session sends with browser_task.
* browser_task's model: :class:`PortChatModel` (browser-use's chat model protocol over the LLM
  port) under a tenant's budget (:class:`LlmBudget`, :class:`SettingsBudget`).
* :class:`BrowserWorker`: one headless Chromium (unprivileged, sandboxed, behind its own egress
  proxy) driven by browser-use, running browser tool calls; Ray-free. The edge's
  ``actors/browser.py`` is its Ray shell: the pooled ``BrowserActor``, the pool spec and
  ``PooledBrowserTools`` (sticky leases per session).
"""

from agentcluster.browser._llm import LlmBudget, PortChatModel, SettingsBudget
from agentcluster.browser._tools import (
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
from agentcluster.browser._worker import (
    CRASHED,
    EVALUATE_TOOL,
    BrowserPolicy,
    BrowserPolicyFactory,
    BrowserWorker,
    UrlCheck,
    browser_call_attributes,
)

__all__ = [
    "BROWSER_TOOL_NAMES",
    "CRASHED",
    "EVALUATE_TOOL",
    "BrowserLlm",
    "BrowserPolicy",
    "BrowserPolicyFactory",
    "BrowserWorker",
    "ClickArgs",
    "ExtractArgs",
    "LlmBudget",
    "NavigateArgs",
    "PortChatModel",
    "ScreenshotArgs",
    "ScrollArgs",
    "SelectArgs",
    "SettingsBudget",
    "StateArgs",
    "TaskArgs",
    "TypeArgs",
    "UrlCheck",
    "browser_call_attributes",
    "browser_schemas",
    "navigation_problem",
    "navigation_target",
    "parse_browser_arguments",
]
