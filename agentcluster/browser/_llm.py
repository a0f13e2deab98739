"""browser_task's model: browser-use's chat model protocol over the LLM port, under the tenant's
budget.

browser-use's Agent takes any object with its ``BaseChatModel`` shape (``model``, ``provider``,
``name``, ``ainvoke(messages, output_format)``). :class:`PortChatModel` is one, built on our
:class:`~agentcluster.llm.LLM` port, so browser_task's calls go the way the agent loop's go: the
LiteLLM client's breakers, retries, fallbacks, metrics and trace spans, and the tenant's daily
token and cost budget (reserved before each call, settled with its usage after it, in the same
counters the agent loop charges). Structured output (the Agent's ``agent_output`` JSON schema)
travels as :class:`~agentcluster.llm.ResponseSchema`.

A call the budget refuses is not made; the model remembers the refusal (:attr:`refusal`) and
calls ``on_refused`` (the browser actor stops the Agent there), so browser_task answers with the
budget's error instead of browser-use's retries.

:class:`SettingsBudget` is the tenant budget of the settings tree, opened lazily in the process
that uses it (a browser actor: it pickles as its settings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from agentcluster.browser._tools import BrowserLlm
from agentcluster.config import Settings
from agentcluster.errors import AgentClusterError, BudgetExceeded, TerminalFailure
from agentcluster.events import Usage
from agentcluster.llm import LLM, ChatMessage, LlmRequest, LlmResult, ResponseSchema

if TYPE_CHECKING:
    from agentcluster.limits import BudgetGuard, LimitsDatabase

__all__ = ["LlmBudget", "PortChatModel", "SettingsBudget"]

log = logging.getLogger(__name__)

_SCHEMA_NAME = "agent_output"
_BUDGET_STATUS = 402  # "payment required": browser-use's closest status for a spent budget
_TERMINAL_STATUS = 400
_UNAVAILABLE_STATUS = 503


class LlmBudget(Protocol):
    """Port: the tenant's LLM budget, the agent loop's ``Budget`` (BudgetGuard in production)."""

    async def reserve(self, tenant_id: str, request: LlmRequest) -> Any:
        """Set aside what the call needs, or raise BudgetExceeded / InfrastructureError."""
        ...

    async def settle(self, hold: Any, usage: Usage) -> None:
        """Count the call's real usage in place of what ``hold`` reserved."""
        ...


class PortChatModel:
    """browser-use's ``BaseChatModel`` over the LLM port, charging one tenant's budget.

    Args:
        llm: the port (a LiteLLMClient routing this call's models).
        route: the model chain.
        tenant_id: whose budget each call is charged to.
        budget: the tenant budget (None: calls are not checked or counted).
        max_output_tokens: the cap of each answer (browser-use's own default).
        temperature: sampling temperature (browser-use's own default).
    """

    _verified_api_keys = True  # nothing for browser-use to verify: the first call tells
    provider = "agentcluster"

    def __init__(
        self,
        llm: LLM,
        route: BrowserLlm,
        *,
        tenant_id: str,
        budget: LlmBudget | None = None,
        max_output_tokens: int | None = 4096,
        temperature: float | None = 0.2,
    ) -> None:
        self.model = route.model
        self._llm = llm
        self._fallbacks = list(route.fallback_models)
        self._tenant_id = tenant_id
        self._budget = budget
        self._max_output_tokens = max_output_tokens
        self._temperature = temperature
        self.refusal: BudgetExceeded | None = None
        self.on_refused: Callable[[], None] | None = None
        self.usage = Usage()

    @property
    def name(self) -> str:
        return self.model

    @property
    def model_name(self) -> str:
        return self.model

    async def ainvoke(
        self, messages: Sequence[Any], output_format: type[BaseModel] | None = None, **_: Any
    ) -> Any:
        """One completion of browser-use's messages: text, or an ``output_format`` instance.

        Raises:
            ModelProviderError: the budget refused the call, the port failed, or the answer is
                not the requested JSON (browser-use counts it as a failed step).
        """
        from browser_use.llm.views import ChatInvokeCompletion

        request = self._request(messages, output_format)
        result = await self._complete(request)
        completion = self._parse(result, output_format)
        return ChatInvokeCompletion(
            completion=completion, usage=_usage(result), stop_reason=result.finish_reason
        )

    def _request(
        self, messages: Sequence[Any], output_format: type[BaseModel] | None
    ) -> LlmRequest:
        schema = None
        if output_format is not None:
            from browser_use.llm.schema import SchemaOptimizer

            optimized = SchemaOptimizer.create_optimized_json_schema(output_format)
            schema = ResponseSchema(name=_SCHEMA_NAME, json_schema=optimized)
        return LlmRequest(
            model=self.model,
            fallback_models=self._fallbacks,
            messages=[ChatMessage(role=message.role, content=message.text) for message in messages],
            max_output_tokens=self._max_output_tokens,
            temperature=self._temperature,
            response_schema=schema,
        )

    async def _complete(self, request: LlmRequest) -> LlmResult:
        from browser_use.llm.exceptions import ModelProviderError

        try:
            hold = await self._budget.reserve(self._tenant_id, request) if self._budget else None
            result = await self._llm.complete(request)
        except BudgetExceeded as exc:
            self._refused(exc)
            raise ModelProviderError(exc.message, _BUDGET_STATUS, self.model) from exc
        except AgentClusterError as exc:
            status = _TERMINAL_STATUS if isinstance(exc, TerminalFailure) else _UNAVAILABLE_STATUS
            raise ModelProviderError(exc.message, status, self.model) from exc
        self.usage = _add(self.usage, result.usage)
        if self._budget is not None:
            await self._settle(hold, result.usage)
        return result

    def _refused(self, refusal: BudgetExceeded) -> None:
        if self.refusal is None:
            self.refusal = refusal
        if self.on_refused is not None:
            self.on_refused()

    async def _settle(self, hold: Any, usage: Usage) -> None:
        assert self._budget is not None
        try:
            await self._budget.settle(hold, usage)
        except AgentClusterError as exc:
            # As in the agent loop: the answer is good, failing the step would not take the
            # usage back; the next reserve fails closed if the counters stay unreachable.
            log.warning(
                "tenant %s: the usage of a browser_task LLM call was not counted (%d tokens): %s",
                self._tenant_id,
                usage.total_tokens,
                exc,
            )

    def _parse(self, result: LlmResult, output_format: type[BaseModel] | None) -> Any:
        if output_format is None:
            return result.content or ""
        from browser_use.llm.exceptions import ModelProviderError

        try:
            return output_format.model_validate_json(result.content or "")
        except ValidationError as exc:
            message = f"Failed to parse structured output from model response: {exc}"
            raise ModelProviderError(message, 500, self.model) from exc


def _usage(result: LlmResult) -> Any:
    from browser_use.llm.views import ChatInvokeUsage

    usage = result.usage
    return ChatInvokeUsage(
        prompt_tokens=usage.prompt_tokens,
        prompt_cached_tokens=None,
        prompt_cache_creation_tokens=None,
        prompt_image_tokens=None,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _add(total: Usage, more: Usage) -> Usage:
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
        cost_usd=total.cost_usd + more.cost_usd,
    )


class SettingsBudget:
    """The tenants' LLM budgets of ``settings``: the same limits service and usage counters the
    session hosts' agent loops charge (Redis, or the state store when embedded), opened on first
    use in the process that uses it. It pickles as its settings (built in a browser actor).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._guard: BudgetGuard | None = None
        self._store: LimitsDatabase | None = None
        self._lock: asyncio.Lock | None = None

    async def reserve(self, tenant_id: str, request: LlmRequest) -> Any:
        return await (await self._opened()).reserve(tenant_id, request)

    async def settle(self, hold: Any, usage: Usage) -> None:
        await (await self._opened()).settle(hold, usage)

    async def aclose(self) -> None:
        """Close the counters and the state store, if opened."""
        if self._guard is not None:
            await self._guard.aclose()
        if self._store is not None:
            await self._store.close()
        self._guard = self._store = None

    async def _opened(self) -> BudgetGuard:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._guard is None:
                from agentcluster.bootstrap import open_state_store
                from agentcluster.limits import open_budget_guard

                self._store = await open_state_store(self._settings)
                self._guard = open_budget_guard(self._settings, self._store)
            return self._guard

    def __getstate__(self) -> dict[str, Any]:
        return {"_settings": self._settings, "_guard": None, "_store": None, "_lock": None}
