"""The browser pool's Ray shell: browser actors, their pool, and the sticky client over it.

The browser logic is plain Python in the core (:mod:`agentcluster.browser`:
:class:`~agentcluster.browser.BrowserWorker` drives one headless Chromium). Here, at the edge:

* :class:`BrowserActor`, the pool member: the worker under the name Ray and the traces know
  (``ray.remote`` is applied by the pool, :mod:`actors.pool`);
* :func:`browser_pool_spec` / :func:`start_browser_pool`: the pool's sizes, timings and actor
  options from ``SA01_BROWSER_*``;
* :class:`PooledBrowserTools` runs calls on a pool of these actors with one sticky lease per
  session, so a session keeps its browser (and page) across the steps of a turn until
  :meth:`PooledBrowserTools.end_session` or the pool's idle release; a member that dies during a
  call is reported to the pool and the call answers :data:`CRASHED`.
"""

from __future__ import annotations

import functools

from ray.exceptions import RayActorError

from actors.pool import ActorPool, PoolConfig, PoolExhausted, PoolSpec
from agentcluster import tracing as _tracing
from agentcluster.browser import (
    BROWSER_TOOL_NAMES,
    CRASHED,
    BrowserLlm,
    BrowserPolicy,
    BrowserPolicyFactory,
    BrowserWorker,
    SettingsBudget,
    UrlCheck,
    browser_call_attributes,
    browser_schemas,
)
from agentcluster.config import Settings
from agentcluster.llm import ToolSchema
from agentcluster.tools import NetworkPolicy, ToolInvocation, ToolOutcome

__all__ = [
    "CRASHED",
    "BrowserActor",
    "BrowserPolicy",
    "PooledBrowserTools",
    "UrlCheck",
    "browser_pool_spec",
    "start_browser_pool",
]


class BrowserActor(BrowserWorker):
    """A browser pool member: a :class:`~agentcluster.browser.BrowserWorker` (its arguments, its
    methods), named for Ray and the traces (``BrowserActor/execute``)."""


def browser_pool_spec(
    settings: Settings,
    *,
    llm: BrowserLlm | None = None,
    check_url: UrlCheck | None = None,
    name: str = "browser",
    policy_factory: BrowserPolicyFactory | None = None,
) -> PoolSpec:
    """The pool of browser actors the settings describe (``SA01_BROWSER_*``).

    Their policy (every request of their browsers, ``browser_evaluate``) is the Rego engine the
    settings choose (the OPA server at ``SA01_POLICY_URL``, else in-process) unless
    ``policy_factory`` says otherwise. browser_task's LLM calls use ``SA01_LLM_*`` and are
    charged to the tenants' budgets of the settings.
    """
    browser = settings.browser
    config = PoolConfig(
        name=name,
        min_size=browser.pool_min,
        max_size=browser.pool_max,
        idle_release_s=browser.idle_release_s,
        health_timeout_s=10.0,
        start_timeout_s=max(60.0, browser.action_timeout_s),
        reset_timeout_s=browser.action_timeout_s + 10.0,
    )
    return PoolSpec(
        config=config,
        actor_class=BrowserActor,
        kwargs={
            "settings": browser,
            "llm": llm,
            "check_url": check_url,
            "tracing": settings.tracing,
            "policy_factory": policy_factory or functools.partial(_policy_engine, settings),
            "llm_settings": settings.llm,
            "budget": SettingsBudget(settings),
        },
        namespace=settings.runtime.namespace,
        num_cpus=browser.num_cpus,
        resources={browser.resource: 1.0} if browser.resource else {},
    )


def _policy_engine(settings: Settings) -> NetworkPolicy:
    # Imported in the actor: the in-process engine loads a Wasm runtime.
    from agentcluster.policy import build_policy_engine

    return build_policy_engine(settings)


def start_browser_pool(
    settings: Settings, *, llm: BrowserLlm | None = None, check_url: UrlCheck | None = None
) -> ActorPool:
    """The cluster's browser pool, started if needed."""
    spec = browser_pool_spec(settings, llm=llm, check_url=check_url)
    return ActorPool.start(spec, lease_timeout_s=settings.browser.lease_timeout_s)


class PooledBrowserTools:
    """Runs browser tool calls on pooled browser actors, one sticky lease per session.

    Args:
        pool: a pool of :class:`BrowserActor`.
        lease_timeout_s: how long a call waits for a free browser (the pool's default if None).
    """

    def __init__(self, pool: ActorPool, *, lease_timeout_s: float | None = None) -> None:
        self._pool = pool
        self._lease_timeout_s = lease_timeout_s

    def schemas(self, names: list[str]) -> list[ToolSchema]:
        """The schemas of the named browser tools."""
        return browser_schemas(names)

    @staticmethod
    def handles(tool: str) -> bool:
        """Whether ``tool`` is a browser tool."""
        return tool in BROWSER_TOOL_NAMES

    async def execute(
        self, invocation: ToolInvocation, llm: BrowserLlm | None = None
    ) -> ToolOutcome:
        """Run one call on the session's browser; failures come back as ``ok=False``."""
        try:
            lease = await self._pool.lease(invocation.session_id, self._lease_timeout_s)
        except PoolExhausted as exc:
            return ToolOutcome(ok=False, error=f"no browser is free right now; {exc.message}")
        attributes = browser_call_attributes(invocation)
        with _tracing.outgoing("BrowserActor/execute", attributes=attributes) as (span, trace):
            try:
                outcome: ToolOutcome = await lease.member.execute.remote(invocation, llm, trace)
            except RayActorError as exc:
                _tracing.mark_error(span, exc)
                await self._pool.report_failure(lease, "the browser actor died during a call")
                return ToolOutcome(ok=False, error=CRASHED)
        return outcome

    async def end_session(self, session_id: str) -> bool:
        """Give the session's browser back (at the end of its turn); False if it held none."""
        return await self._pool.release_key(session_id)
