"""The browser worker: browser-use 0.11.13 on headless Chromium, one browser per worker.

:class:`BrowserWorker` is plain Python (the browser pool's Ray shell, ``actors/browser.py``, makes
it a pool member by applying ``ray.remote``) that runs the browser tools of
:mod:`agentcluster.browser._tools` on its own Chromium: ``execute`` takes a
:class:`~agentcluster.tools.ToolInvocation` (and, for browser_task, the session's
:class:`~agentcluster.browser.BrowserLlm` route) and returns a
:class:`~agentcluster.tools.ToolOutcome` (pydantic models across the actor boundary), and never
raises for a tool failure.

browser_task's model calls go through the LLM port (:class:`~agentcluster.browser.PortChatModel`
over a LiteLLMClient built here from ``SA01_LLM_*``, its breakers shared by the worker's calls)
and are charged to the calling tenant's daily budget in the same counters the agent loop uses
(:class:`~agentcluster.browser.SettingsBudget`); a call the budget refuses is not made and
browser_task answers with the budget's error.

Egress: every request its Chromium makes goes through this worker's own
:class:`~agentcluster.tools.EgressProxy`, which resolves each host once, asks the network policy
of the tenant whose session holds the browser about the address and port, and connects to
exactly that address; requests it refuses are reported in the tool's result
(``blocked_requests``). browser_navigate also checks its URL first (parsed as the browser parses
it) for an early, clear answer.

Isolation (:mod:`agentcluster.browser._chromium`): Chromium runs headless with its own sandbox
on, as an unprivileged user when the worker is root (``SA01_BROWSER_RUN_AS_UID``), with an empty
environment, telemetry, cloud sync and version checks off, through ``setpriv --pdeathsig KILL``
so it dies with the worker even when the worker is killed outright. Each lease gets a new
Chromium on a new, empty profile (``reset``): cookies, storage of every origin, cache, service
workers and permissions of one session are gone before the next. If Chromium dies, the next look
at it (every call, and ``health``) notices, starts a fresh one, and the call answers "the browser
crashed and was restarted; retry".
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from agentcluster import tracing as _tracing
from agentcluster.browser._browser import (
    OWNER_FILE,
    Browser,
    cleanup_at_exit,
    log_start,
    process_uid,
    sweep_orphans,
)
from agentcluster.browser._chromium import (
    WORKDIR_PREFIX,
    ChromiumLaunch,
    is_reserved,
    launch_plan,
    register_ports,
    sandbox_problem,
    workdir_root,
)
from agentcluster.browser._handlers import Handlers, one_line
from agentcluster.browser._llm import LlmBudget, PortChatModel
from agentcluster.browser._tools import (
    BrowserLlm,
    TaskArgs,
    browser_schemas,
    navigation_target,
    parse_browser_arguments,
)
from agentcluster.config import (
    BrowserSettings,
    LlmSettings,
    TracingSettings,
    prepare_offline_environment,
)
from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools import (
    DefaultNetworkPolicy,
    EgressLease,
    EgressProxy,
    NetworkPolicy,
    PolicyDecision,
    Resolver,
    SsrfGuard,
    ToolInvocation,
    ToolOutcome,
)
from agentcluster.tracing import Carrier

__all__ = [
    "CRASHED",
    "EVALUATE_TOOL",
    "BrowserPolicy",
    "BrowserPolicyFactory",
    "BrowserWorker",
    "UrlCheck",
    "browser_call_attributes",
]

log = logging.getLogger(__name__)

UrlCheck = Callable[[str, ToolInvocation | None], Awaitable[str | None]]
"""An async hook: the reason a URL must not be opened by the call (tenant, agent, tool) that
asks, or None to allow it."""

CRASHED = "the browser crashed and was restarted (the page state is lost); retry"

EVALUATE_TOOL = "browser_evaluate"
"""The tool name the policy is asked about before browser_task may offer ``evaluate``."""
_MAX_REPORTED_BLOCKS = 20
# Chromium's own service traffic (sign-in, component updates, the default search engine): denied
# like any request unless the tenant's policy allows it, but not reported to the model, whose
# pages did not ask for it.
_CHROMIUM_SERVICE_HOSTS = frozenset(
    {
        "accounts.google.com",
        "clients2.google.com",
        "update.googleapis.com",
        "start.duckduckgo.com",
        "safebrowsingohttpgateway.googleapis.com",
        "optimizationguide-pa.googleapis.com",
    }
)


class BrowserPolicy(NetworkPolicy, Protocol):
    """The policy a browser actor asks: network targets (every request) and tool decisions
    (``browser_evaluate``). The Rego engines are both; a plain NetworkPolicy also works (then
    ``evaluate`` is never offered)."""

    async def decide_tool(self, invocation: ToolInvocation) -> PolicyDecision: ...


BrowserPolicyFactory = Callable[[], NetworkPolicy]
"""Builds the actor's policy in the actor (must pickle, e.g. a ``functools.partial``)."""


class _BrowserDied(Exception):
    """Chromium was found dead and has been replaced."""


# --- the worker -------------------------------------------------------------------------------


class BrowserWorker:
    """Runs browser tool calls on its own headless Chromium (a pool member once the Ray shell
    applies ``ray.remote``; every method the pool and the shell call is async).

    Args:
        settings: the browser settings (``SA01_BROWSER_*``); loaded from the environment if
            omitted.
        llm: the default model for browser_task; a call can pass its own.
        check_url: an extra navigation check (the reason to deny, or None), asked after the
            URL syntax and the network policy.
        tracing: where this actor's spans go (``SA01_TRACING_*``); from the environment if
            omitted.
        policy_factory: builds the policy every request of the browser is decided by (network
            targets) and that may allow ``browser_evaluate``; by default public addresses only
            and no ``evaluate``.
        resolver: DNS for the egress proxy; the system resolver by default.
        llm_settings: timeouts, retries and breakers of browser_task's LLM calls
            (``SA01_LLM_*``); from the environment if omitted.
        budget: the tenants' LLM budgets browser_task's calls are charged to (a
            :class:`~agentcluster.browser.SettingsBudget` in pools); None: not checked or counted.

    Raises:
        ConfigError: Chromium is not where the settings say, or the actor is root and cannot
            start it as another user.
    """

    def __init__(
        self,
        settings: BrowserSettings | None = None,
        llm: BrowserLlm | None = None,
        check_url: UrlCheck | None = None,
        tracing: TracingSettings | None = None,
        policy_factory: BrowserPolicyFactory | None = None,
        resolver: Resolver | None = None,
        *,
        llm_settings: LlmSettings | None = None,
        budget: LlmBudget | None = None,
    ) -> None:
        prepare_offline_environment()
        _tracing.configure_tracing(tracing or TracingSettings(), "browser-actor")
        self._settings = settings or BrowserSettings()
        self._llm = llm
        self._llm_settings = llm_settings or LlmSettings()
        self._budget = budget
        self._breakers: Any = None  # the LLM port's breakers, made on the first browser_task
        self._check_url = check_url
        self._policy = policy_factory() if policy_factory is not None else DefaultNetworkPolicy()
        self._guard = SsrfGuard(self._policy, resolver)
        self._invocation: ToolInvocation | None = None
        root = workdir_root()
        sweep_orphans(root)
        self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=root))
        (self._workdir / OWNER_FILE).write_text(str(os.getpid()))
        launch_plan(self._settings, None)  # fail fast on a bad path or a missing setpriv
        self._proxy: EgressProxy | None = None
        self._launch: ChromiumLaunch | None = None
        self._browser: Browser | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._calls = 0
        self._restarts = 0
        self._fresh_start_ms: float | None = None
        self._tools: Any = None
        atexit.register(cleanup_at_exit, self._workdir, self._pids)

    def _pids(self) -> list[int]:
        pid = self._browser.pid if self._browser is not None else None
        return [pid] if pid is not None else []

    # -- lifecycle -----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Starts the browser on first use (so pool members come up warm) and reports on it:
        its sandbox, its user, its egress proxy and what that proxy decided."""
        if self._browser is None and not self._lock.locked():
            async with self._lock:
                if self._browser is None:
                    await self._start_browser()
        browser = self._browser
        launch = self._launch
        proxy = self._proxy
        return {
            "actor_pid": os.getpid(),
            "browser_pid": browser.pid if browser else None,
            "browser_alive": bool(browser and browser.alive()),
            "browser_uid": process_uid(browser.pid if browser else None),
            "sandbox": browser.sandbox if browser else None,
            "egress_proxy": proxy.url if proxy else None,
            "egress": vars(proxy.stats) if proxy else None,
            "run_as": list(launch.run_as) if launch and launch.run_as else None,
            "calls": self._calls,
            "restarts": self._restarts,
            "fresh_start_ms": self._fresh_start_ms,
        }

    async def browser_pid(self) -> int | None:
        """The PID of this actor's Chromium (its main process), if running."""
        return self._browser.pid if self._browser is not None else None

    async def schemas(self) -> list[ToolSchema]:
        """The browser tools' schemas."""
        return browser_schemas()

    async def reset(self) -> None:
        """A new Chromium on a new, empty profile for the next lease.

        Nothing the last session's pages stored (cookies, storage of every origin including
        iframes, cache, service workers, permissions, downloads) survives: the profile dir is
        deleted with its browser. The egress proxy denies everything until the next call names
        its session, and cuts the connections still open.
        """
        async with self._lock:
            if self._proxy is not None:
                self._proxy.end_lease()
            if self._browser is None:
                return
            started = time.perf_counter()
            await self._replace_browser(crashed=False)
            self._fresh_start_ms = round((time.perf_counter() - started) * 1000.0, 1)

    async def stop(self) -> None:
        """Close Chromium and the proxy, and remove the actor's temp dir (profile, downloads)."""
        async with self._lock:
            if self._browser is not None:
                await self._browser.close()
                self._browser = None
            if self._proxy is not None:
                await self._proxy.close()
                self._proxy = None
            shutil.rmtree(self._workdir, ignore_errors=True)
        aclose = getattr(self._budget, "aclose", None)
        if aclose is not None:
            await aclose()
        await _tracing.flush_tracing()

    async def _ready_launch(self) -> ChromiumLaunch:
        """The proxy (started once per actor) and how Chromium starts; the sandbox probed."""
        if self._launch is not None:
            return self._launch
        proxy_url = None
        if not self._settings.unsafe_no_egress_proxy:
            self._proxy = EgressProxy(self._guard, reserved=is_reserved)
            await self._proxy.start()
            proxy_url = self._proxy.url
        else:
            log.warning("SA01_BROWSER_UNSAFE_NO_EGRESS_PROXY: browser requests are not checked")
        launch = launch_plan(self._settings, proxy_url)
        problem = await asyncio.to_thread(sandbox_problem, launch) if launch.sandbox else None
        if problem is not None:
            raise ConfigError(
                f"Chromium's sandbox cannot start on this node: {problem}; no browser runs here "
                "(SA01_BROWSER_UNSAFE_NO_SANDBOX=true runs it without, unsafe for multiple tenants)"
            )
        self._launch = launch
        return launch

    async def _start_browser(self) -> Browser:
        launch = await self._ready_launch()
        self._generation += 1
        browser = Browser(self._settings, launch, self._workdir, self._generation)
        self._browser = browser
        try:
            async with asyncio.timeout(max(self._settings.action_timeout_s, 30.0)):
                await browser.start()
        except BaseException:
            await browser.close()
            self._browser = None
            raise
        ports = [self._proxy.port] if self._proxy else []
        devtools = browser.devtools_port()
        register_ports(self._workdir, [*ports, *([devtools] if devtools else [])])
        log_start(browser, launch)
        return browser

    async def _replace_browser(self, *, crashed: bool = True) -> Browser:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if crashed:
            self._restarts += 1
        return await self._start_browser()

    async def _ready_browser(self) -> Browser:
        browser = self._browser
        if browser is None:
            return await self._start_browser()
        if not browser.alive():
            await self._replace_browser()
            raise _BrowserDied
        browser.route_lifecycle_events()
        return browser

    # -- calls ---------------------------------------------------------------------------------

    async def execute(
        self,
        call: ToolInvocation,
        llm: BrowserLlm | None = None,
        trace: Carrier | None = None,
    ) -> ToolOutcome:
        """Run one browser tool call; failures come back as ``ok=False`` outcomes.

        Args:
            call: the call.
            llm: the session's model route, for browser_task (else the constructor's).
            trace: the caller's trace carrier; this call's span continues it.
        """
        started = time.perf_counter()
        with _tracing.span(
            "BrowserActor/execute",
            kind=_tracing.SpanKind.SERVER,
            attributes=browser_call_attributes(call),
            parent=trace or {},
        ) as span:
            outcome = await self._execute(call, llm)
            span.set_attribute("agentcluster.tool.ok", outcome.ok)
            if not outcome.ok:
                _tracing.mark_error(span, outcome.error or "tool failed")
        latency_ms = (time.perf_counter() - started) * 1000.0
        return outcome.model_copy(update={"latency_ms": latency_ms})

    async def _execute(self, call: ToolInvocation, llm: BrowserLlm | None) -> ToolOutcome:
        try:
            arguments = parse_browser_arguments(call.tool, call.arguments)
            model = llm if llm is not None else self._llm
        except ToolError as exc:
            return ToolOutcome(ok=False, error=exc.message)
        async with self._lock:
            self._calls += 1
            self._invocation = call  # whose navigations the URL check decides
            try:
                outcome = await self._run(call, arguments, model)
            finally:
                self._invocation = None
            return self._with_blocked(outcome)

    def _with_blocked(self, outcome: ToolOutcome) -> ToolOutcome:
        """The outcome, plus the requests the egress proxy refused since the last call."""
        taken = self._proxy.take_blocked() if self._proxy is not None else []
        blocked = [item for item in taken if item.host not in _CHROMIUM_SERVICE_HOSTS]
        if not blocked:
            return outcome
        lines = [item.describe() for item in blocked[:_MAX_REPORTED_BLOCKS]]
        if not outcome.ok:
            error = f"{outcome.error}; requests blocked by the egress policy: {'; '.join(lines)}"
            return outcome.model_copy(update={"error": error})
        if isinstance(outcome.result, dict):
            return outcome.model_copy(update={"result": {**outcome.result, "blocked": lines}})
        return outcome

    async def _run(
        self, call: ToolInvocation, arguments: Any, llm: BrowserLlm | None
    ) -> ToolOutcome:
        try:
            browser = await self._ready_browser()
        except _BrowserDied:
            return ToolOutcome(ok=False, error=CRASHED)
        except Exception as exc:
            log.error("browser start failed", exc_info=exc)
            return ToolOutcome(ok=False, error=f"the browser could not start: {one_line(exc)}")
        if self._proxy is not None:
            self._proxy.begin_lease(EgressLease(call.tenant_id, call.agent, call.session_id))
        limit = self._limit(arguments)
        try:
            async with asyncio.timeout(limit):
                result = await Handlers(self, browser, llm).run(call.tool, arguments)
        except ToolError as exc:
            return await self._failure(browser, exc.message)
        except TimeoutError:
            return await self._failure(browser, f"{call.tool} timed out after {limit:g} s")
        except Exception as exc:
            # Why broad: a browser-use bug must end as an outcome, not kill the actor's call.
            log.error("browser tool %s failed", call.tool, exc_info=exc)
            error = f"internal error in tool {call.tool}: {type(exc).__name__}"
            return await self._failure(browser, error)
        return ToolOutcome(ok=True, result=result)

    async def _failure(self, browser: Browser, error: str) -> ToolOutcome:
        if not browser.alive():
            await self._replace_browser()
            return ToolOutcome(ok=False, error=CRASHED)
        return ToolOutcome(ok=False, error=error)

    def _limit(self, arguments: Any) -> float:
        if isinstance(arguments, TaskArgs):
            return self._settings.action_timeout_s * self.task_steps(arguments)
        return self._settings.action_timeout_s

    def task_steps(self, arguments: TaskArgs) -> int:
        """The steps browser_task's Agent may take: the call's own limit, at most the settings'."""
        cap = self._settings.task_max_steps
        return min(arguments.max_steps or cap, cap)

    async def denial(self, url: str) -> str | None:
        """Why ``url`` must not be opened, or None: its syntax (parsed as the browser parses
        it), then the network policy for the resolved host and port, then ``check_url``.

        An early answer for the model; the egress proxy decides every request regardless.
        """
        call = self._invocation
        try:
            target = navigation_target(url)
            await self._guard.check(
                scheme=target.scheme,
                host=target.host,
                port=target.port,
                tenant_id=call.tenant_id if call else "(none)",
                agent=call.agent if call else "(none)",
                tool=call.tool if call else "browser_navigate",
            )
        except ToolError as exc:
            return exc.message
        if self._check_url is not None:
            return await self._check_url(url, call)
        return None

    async def evaluate_allowed(self) -> bool:
        """Whether browser_task may offer ``evaluate`` (arbitrary JavaScript) in this call:
        only under ``SA01_BROWSER_EVALUATE=policy`` and a policy allowing ``browser_evaluate``."""
        call = self._invocation
        decide = getattr(self._policy, "decide_tool", None)
        if self._settings.evaluate != "policy" or call is None or decide is None:
            return False
        asked = call.model_copy(update={"tool": EVALUATE_TOOL, "arguments": {}})
        decision: PolicyDecision = await decide(asked)
        # A call a person must approve first cannot wait inside a browser task: not offered.
        return decision.allowed and not decision.ask

    def chat_model(self, route: BrowserLlm) -> PortChatModel:
        """browser_task's model for the current call: the LLM port along ``route`` (breakers
        shared by this actor's calls), charged to the calling tenant's budget."""
        from agentcluster.llm import BreakerRegistry, LiteLLMClient, StaticRoutes

        if self._breakers is None:
            self._breakers = BreakerRegistry.from_settings(self._llm_settings)
        routes = StaticRoutes(*route.routes())
        client = LiteLLMClient(self._llm_settings, self._breakers, routes=routes)
        tenant_id = self._invocation.tenant_id if self._invocation else "(none)"
        return PortChatModel(client, route, tenant_id=tenant_id, budget=self._budget)

    def tools(self) -> Any:
        """browser-use's action registry (built once, on first use)."""
        if self._tools is None:
            from browser_use import Tools

            self._tools = Tools()
        return self._tools

    def task_workdir(self) -> Path:
        return self._workdir / f"agent-{self._calls}"


def browser_call_attributes(call: ToolInvocation) -> dict[str, Any]:
    """The span attributes of a ``BrowserActor/execute`` call (both sides of the actor call)."""
    tool = _tracing.tool_attributes(call.tool, call.tool_call_id)
    return _tracing.rpc_attributes("BrowserActor", "execute", tool)
