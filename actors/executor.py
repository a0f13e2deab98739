"""The session hosts' ToolExecutor: every tool call runs on a pooled actor, never in the host.

Browser tools go to the browser pool with a sticky lease per session (a session keeps its browser
across the steps of a turn; the lease is given back when the turn ends or idles out). Every other
tool (builtins, http_fetch, python_exec, workspace files, MCP tools) runs on a tool actor leased
for the call. Pools are started on first use; their names carry the host prefix, so deployments
sharing a Ray namespace keep their own pools.

A screenshot a browser tool returns is stored as an attachment (``GET
/v1/sessions/{id}/attachments/{attachment_id}``); the model and the events see its id, not its
bytes.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ray.exceptions import RayActorError

from actors import names
from actors.browser import PooledBrowserTools, browser_pool_spec
from actors.pool import ActorPool, PoolConfig, PoolExhausted, PoolSpec
from actors.tools import ToolActor
from agentcluster import tracing
from agentcluster.agent import AgentProfile
from agentcluster.browser import BROWSER_TOOL_NAMES, BrowserLlm, browser_schemas
from agentcluster.config import Settings
from agentcluster.errors import AgentClusterError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.store import AttachmentStore
from agentcluster.tools import ToolInvocation, ToolOutcome, builtin_registry, select_schemas

__all__ = ["ActorToolExecutor", "BrowserUrlPolicy", "tool_pool_spec"]

TOOL_ACTOR_DIED = "the tool actor died during the call; retry"


class BrowserUrlPolicy:
    """The browser actors' navigation check: the same SSRF guard and policy as http_fetch,
    decided for the tenant and agent whose call navigates. Built lazily in the browser actor
    (it is pickled there)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._guard: Any = None

    async def __call__(self, url: str, invocation: ToolInvocation | None) -> str | None:
        from agentcluster.policy import build_policy_engine
        from agentcluster.tools import SsrfGuard

        if self._guard is None:
            self._guard = SsrfGuard(build_policy_engine(self._settings))
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return f"{url!r} has an invalid port"
        try:
            await self._guard.check(
                scheme=scheme,
                host=parts.hostname or "",
                port=port,
                tenant_id=invocation.tenant_id if invocation else "(unknown)",
                agent=invocation.agent if invocation else "(unknown)",
                tool=invocation.tool if invocation else "browser_navigate",
            )
        except ToolError as exc:
            return exc.message
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"_settings": self._settings, "_guard": None}


def tool_pool_spec(settings: Settings) -> PoolSpec:
    """The pool of tool actors the settings describe (``SA01_TOOLS_POOL_*``)."""
    tools = settings.tools
    config = PoolConfig(
        name=names.pool(settings.runtime, "tools"),
        min_size=tools.pool_min,
        max_size=tools.pool_max,
        idle_release_s=tools.call_timeout_s + 30.0,
        start_timeout_s=120.0,
    )
    return PoolSpec(
        config=config,
        actor_class=ToolActor,
        kwargs={"settings": settings},
        namespace=settings.runtime.namespace,
    )


class ActorToolExecutor:
    """The ToolExecutor port over the tool and browser pools.

    Build it with :meth:`create` (it learns the schemas of the tools the profiles use).
    """

    def __init__(
        self,
        settings: Settings,
        schemas: Mapping[str, ToolSchema],
        browser_llms: Mapping[str, BrowserLlm],
        store: AttachmentStore | None = None,
    ) -> None:
        self._settings = settings
        self._schemas = dict(schemas)
        self._browser_llms = dict(browser_llms)
        self._store = store
        self._tools: ActorPool | None = None
        self._browsers: PooledBrowserTools | None = None

    @classmethod
    async def create(
        cls,
        settings: Settings,
        profiles: Iterable[AgentProfile],
        store: AttachmentStore | None = None,
    ) -> ActorToolExecutor:
        """An executor knowing the schemas of every tool the profiles name.

        Builtin and browser schemas are known here; others (http_fetch, python_exec, files,
        MCP tools) are asked from a tool actor, which starts the tool pool.

        Raises:
            ConfigError: a profile names a tool no actor offers.
        """
        profiles = list(profiles)
        needed = {tool for profile in profiles for tool in profile.tools}
        registry = builtin_registry()
        schemas = {s.name: s for s in registry.schemas(registry.names())}
        schemas |= {s.name: s for s in browser_schemas(list(BROWSER_TOOL_NAMES))}
        executor = cls(settings, schemas, _browser_llms(settings, profiles), store)
        if needed - set(BROWSER_TOOL_NAMES):
            executor._tool_pool()  # start it now (not blocking): the first tool call finds it warm
        if needed - schemas.keys():
            schemas |= await executor._actor_schemas()
        select_schemas(schemas, sorted(needed))  # every named tool is offered somewhere
        executor._schemas = schemas
        return executor

    async def _actor_schemas(self) -> dict[str, ToolSchema]:
        async with self._tool_pool().leased() as lease:
            listed: list[ToolSchema] = await lease.member.schemas.remote()
        return {schema.name: schema for schema in listed}

    def _tool_pool(self) -> ActorPool:
        if self._tools is None:
            self._tools = ActorPool.start(
                tool_pool_spec(self._settings), lease_timeout_s=self._settings.tools.lease_timeout_s
            )
        return self._tools

    def _browser_pool(self) -> PooledBrowserTools:
        if self._browsers is None:
            spec = browser_pool_spec(
                self._settings,
                check_url=BrowserUrlPolicy(self._settings),
                name=names.pool(self._settings.runtime, "browser"),
            )
            pool = ActorPool.start(spec, lease_timeout_s=self._settings.browser.lease_timeout_s)
            self._browsers = PooledBrowserTools(pool)
        return self._browsers

    def schemas(self, names: list[str]) -> list[ToolSchema]:
        """The schemas of the named tools, in order.

        Raises:
            ConfigError: a name is unknown.
        """
        return select_schemas(self._schemas, names)

    async def execute(self, invocation: ToolInvocation) -> ToolOutcome:
        """Run one call on a pooled actor; failures come back as ``ok=False`` outcomes."""
        started = time.perf_counter()
        try:
            if invocation.tool in BROWSER_TOOL_NAMES:
                outcome = await self._browser_call(invocation)
            else:
                outcome = await self._tool_call(invocation)
        except AgentClusterError as exc:  # a pool manager that is down, say
            outcome = ToolOutcome(ok=False, error=exc.message)
        latency_ms = (time.perf_counter() - started) * 1000.0
        return outcome.model_copy(update={"latency_ms": latency_ms})

    async def _tool_call(self, invocation: ToolInvocation) -> ToolOutcome:
        pool = self._tool_pool()
        attributes = tracing.rpc_attributes(
            "ToolActor",
            "execute",
            tracing.tool_attributes(invocation.tool, invocation.tool_call_id),
        )
        with tracing.outgoing("ToolActor/execute", attributes=attributes) as (span, trace):
            try:
                lease = await pool.lease()
            except PoolExhausted as exc:
                tracing.mark_error(span, exc)
                error = f"no tool actor is free right now; {exc.message}"
                return ToolOutcome(ok=False, error=error)
            try:
                outcome: ToolOutcome = await lease.member.execute.remote(invocation, trace)
            except RayActorError as exc:
                tracing.mark_error(span, exc)
                await pool.report_failure(lease, "the tool actor died during a call")
                return ToolOutcome(ok=False, error=TOOL_ACTOR_DIED)
        await pool.release(lease)
        return outcome

    async def _browser_call(self, invocation: ToolInvocation) -> ToolOutcome:
        llm = self._browser_llms.get(invocation.agent)
        outcome = await self._browser_pool().execute(invocation, llm)
        if outcome.ok and isinstance(outcome.result, dict) and "attachment" in outcome.result:
            result = await self._store_attachment(invocation, outcome.result)
            outcome = outcome.model_copy(update={"result": result})
        return outcome

    async def _store_attachment(
        self, invocation: ToolInvocation, result: dict[str, Any]
    ) -> dict[str, Any]:
        result = dict(result)
        attachment = result.pop("attachment")
        if self._store is None:
            return result | {"attachment": None}
        try:
            data = base64.b64decode(attachment["data_b64"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            return result | {"attachment": None}
        media_type = str(attachment.get("media_type", "application/octet-stream"))
        attachment_id = await self._store.add_attachment(
            invocation.tenant_id, invocation.session_id, invocation.turn_id, media_type, data
        )
        return result | {
            "attachment": {
                "attachment_id": attachment_id,
                "media_type": media_type,
                "size": len(data),
                "url": f"/v1/sessions/{invocation.session_id}/attachments/{attachment_id}",
            }
        }

    async def end_turn(self, session_id: str) -> None:
        """Give the session's browser back (its lease is sticky for the turn)."""
        if self._browsers is not None:
            await self._browsers.end_session(session_id)


def _browser_llms(settings: Settings, profiles: Iterable[AgentProfile]) -> dict[str, BrowserLlm]:
    """Per agent: the model route browser_task drives browser-use with (its own model and
    fallbacks, same endpoint), sent to the browser actor with each call."""
    llms: dict[str, BrowserLlm] = {}
    if settings.llm.api_base is None:
        return llms  # browser-use needs an OpenAI-compatible endpoint; browser_task says so
    for profile in profiles:
        llms[profile.name] = BrowserLlm(
            model=_bare(profile.model),
            api_base=settings.llm.api_base,
            api_key=settings.llm.api_key,
            fallback_models=tuple(_bare(model) for model in profile.fallback_models),
        )
    return llms


def _bare(model: str) -> str:
    """The model's name at the endpoint (its LiteLLM provider prefix dropped)."""
    return model.split("/", 1)[1] if "/" in model else model
