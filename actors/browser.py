"""Browser actors: browser-use 0.11.13 on headless Chromium, one browser per actor, pooled.

:class:`BrowserActor` is a plain class (``ray.remote`` is applied by the pool) that runs the
browser tools of :mod:`agentcluster.tools._browser` on its own Chromium: ``execute`` takes a
:class:`~agentcluster.tools.ToolInvocation` (and, for browser_task, the session's
:class:`~agentcluster.tools.BrowserLlm` route) and returns a
:class:`~agentcluster.tools.ToolOutcome` (pydantic models across the actor boundary), and never
raises for a tool failure.

browser_task's model calls go through the LLM port (:class:`~agentcluster.tools.PortChatModel`
over a LiteLLMClient built here from ``SA01_LLM_*``, its breakers shared by the actor's calls)
and are charged to the calling tenant's daily budget in the same counters the agent loop uses
(:class:`~agentcluster.tools.SettingsBudget`); a call the budget refuses is not made and
browser_task answers with the budget's error.

Egress: every request its Chromium makes goes through this actor's own
:class:`~agentcluster.tools._egress_proxy.EgressProxy`, which resolves each host once, asks the
network policy of the tenant whose session holds the browser about the address and port, and
connects to exactly that address; requests it refuses are reported in the tool's result
(``blocked_requests``). browser_navigate also checks its URL first (parsed as the browser parses
it) for an early, clear answer.

Isolation (``actors/_chromium.py``): Chromium runs headless with its own sandbox on, as an
unprivileged user when the actor is root (``SA01_BROWSER_RUN_AS_UID``), with an empty environment,
telemetry, cloud sync and version checks off, through ``setpriv --pdeathsig KILL`` so it dies with
the actor even when the actor is killed outright. Each lease gets a new Chromium on a new, empty
profile (``reset``): cookies, storage of every origin, cache, service workers and permissions of
one session are gone before the next. If Chromium dies, the next look at it (every call, and
``health``) notices, starts a fresh one, and the call answers "the browser crashed and was
restarted; retry".

:class:`PooledBrowserTools` runs calls on a pool of these actors with one sticky lease per
session, so a session keeps its browser (and page) across the steps of a turn until
:meth:`PooledBrowserTools.end_session` or the pool's idle release.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import functools
import logging
import os
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import psutil
from ray.exceptions import RayActorError

from actors._chromium import (
    WORKDIR_PREFIX,
    ChromiumLaunch,
    is_reserved,
    launch_plan,
    prepare_profile,
    register_ports,
    sandbox_problem,
    sandbox_state,
    workdir_root,
    write_launcher,
)
from actors.pool import ActorPool, PoolConfig, PoolExhausted, PoolSpec
from agentcluster import tracing as _tracing
from agentcluster.config import (
    BrowserSettings,
    LlmSettings,
    Settings,
    TracingSettings,
    prepare_offline_environment,
)
from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools import (
    BROWSER_TOOL_NAMES,
    BrowserLlm,
    ClickArgs,
    DefaultNetworkPolicy,
    EgressLease,
    EgressProxy,
    ExtractArgs,
    LlmBudget,
    NavigateArgs,
    NetworkPolicy,
    PolicyDecision,
    PortChatModel,
    Resolver,
    ScreenshotArgs,
    ScrollArgs,
    SelectArgs,
    SettingsBudget,
    SsrfGuard,
    StateArgs,
    TaskArgs,
    ToolInvocation,
    ToolOutcome,
    TypeArgs,
    browser_schemas,
    navigation_target,
    parse_browser_arguments,
)
from agentcluster.tracing import Carrier

__all__ = [
    "CRASHED",
    "BrowserActor",
    "BrowserPolicy",
    "PooledBrowserTools",
    "UrlCheck",
    "browser_pool_spec",
    "start_browser_pool",
]

log = logging.getLogger(__name__)

UrlCheck = Callable[[str, ToolInvocation | None], Awaitable[str | None]]
"""An async hook: the reason a URL must not be opened by the call (tenant, agent, tool) that
asks, or None to allow it."""

CRASHED = "the browser crashed and was restarted (the page state is lost); retry"

EVALUATE_TOOL = "browser_evaluate"
"""The tool name the policy is asked about before browser_task may offer ``evaluate``."""

_CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-gpu",
]
_KILL_TIMEOUT_S = 5.0
_OWNER_FILE = "owner.pid"
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


# --- one Chromium and its browser-use session ------------------------------------------------


class _Browser:
    """One Chromium process driven by one browser-use BrowserSession, in its own profile dir."""

    def __init__(
        self, settings: BrowserSettings, launch: ChromiumLaunch, workdir: Path, generation: int
    ) -> None:
        self._settings = settings
        self._launch = launch
        self.profile_dir = workdir / f"profile-{generation}"
        self._launcher = workdir / f"launch-{generation}.py"
        self.session: Any = None
        self.pid: int | None = None
        self.sandbox = "none"

    async def start(self) -> None:
        """Start Chromium on a new, empty profile owned by its user, and check its sandbox."""
        prepare_profile(self.profile_dir, self._launch.run_as)
        executable = write_launcher(self._launch, self._launcher, self.profile_dir)
        BrowserProfile, BrowserSession = _browser_use_classes()
        profile = BrowserProfile(
            executable_path=str(executable),
            headless=self._settings.headless,
            chromium_sandbox=self._launch.sandbox,
            # A name browser-use recognises as its own temp profile, so it is not copied.
            user_data_dir=str(self.profile_dir / "browser-use-user-data-dir"),
            downloads_path=str(self.profile_dir / "downloads"),
            enable_default_extensions=False,
            keep_alive=True,
            args=_CHROMIUM_ARGS,
        )
        self.session = BrowserSession(browser_profile=profile)
        await self.session.start()
        watchdog = self.session._local_browser_watchdog
        self.pid = watchdog.browser_pid if watchdog is not None else None
        self.route_lifecycle_events()
        await self.blank()
        self.sandbox = sandbox_state(self.pid) if self.pid is not None else "none"
        if self._launch.sandbox and "namespace" not in self.sandbox:
            raise ConfigError(
                f"Chromium started without its sandbox (found: {self.sandbox}); refusing to use "
                "it (SA01_BROWSER_UNSAFE_NO_SANDBOX allows that, unsafe for multiple tenants)"
            )

    def devtools_port(self) -> int | None:
        """The port of Chromium's DevTools endpoint (browser-use's CDP connection)."""
        url = getattr(self.session, "cdp_url", None)
        with contextlib.suppress(ValueError):
            return urlsplit(str(url)).port if url else None
        return None

    async def blank(self) -> None:
        """Show about:blank, straight through CDP (browser-use's navigation would wait out its
        readiness timeout there)."""
        cdp = await self.session.get_or_create_cdp_session()
        await cdp.cdp_client.send.Page.navigate(
            params={"url": "about:blank"}, session_id=cdp.session_id
        )

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def route_lifecycle_events(self) -> None:
        """Deliver page lifecycle events to every page's CDP session.

        browser-use 0.11.13 registers one ``Page.lifecycleEvent`` handler per page on a client
        that keeps only the last one, so navigations of other pages never see ``load`` and wait
        out a 3-8 s readiness timeout. One handler that routes by session id fixes that; it is
        installed again before every call because new pages re-register theirs.
        """
        session = self.session
        manager = getattr(session, "session_manager", None)
        client = getattr(session, "_cdp_client_root", None)
        if manager is None or client is None:
            return
        sessions = manager._sessions
        loop = asyncio.get_running_loop()

        def on_event(event: dict[str, Any], session_id: str | None = None) -> None:
            events = getattr(sessions.get(session_id), "_lifecycle_events", None)
            if events is not None:
                name, loader = event.get("name"), event.get("loaderId")
                events.append({"name": name, "loaderId": loader, "timestamp": loop.time()})

        client.register.Page.lifecycleEvent(on_event)

    async def close(self) -> None:
        """Stop Chromium (by its own PID only) and remove the profile dir."""
        if self.session is not None:
            # Why broad: a dead or hung browser must not keep its actor from replacing it.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_KILL_TIMEOUT_S):
                    await self.session.kill()
        _kill_pid(self.pid)
        shutil.rmtree(self.profile_dir, ignore_errors=True)
        self._launcher.unlink(missing_ok=True)


def _browser_use_classes() -> tuple[Any, Any]:
    """browser-use's profile and session classes, imported on first use (a second or two).

    Importing its session module builds a default profile, which creates an empty
    ``/tmp/browser-use-downloads-*`` folder in this process; every profile here has its own
    downloads folder, so that one is removed.
    """
    from browser_use import BrowserProfile, BrowserSession
    from browser_use.browser.session import DEFAULT_BROWSER_PROFILE

    default_downloads = DEFAULT_BROWSER_PROFILE.downloads_path
    if default_downloads is not None:
        with contextlib.suppress(OSError):
            os.rmdir(default_downloads)  # only if still empty
    return BrowserProfile, BrowserSession


def _sweep_orphans(parent: Path) -> None:
    """Remove the temp dirs of browser actors whose process is gone (killed outright)."""
    for folder in parent.glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not psutil.pid_exists(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _kill_pid(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _cleanup_at_exit(workdir: Path, pids: Callable[[], list[int]]) -> None:
    for pid in pids():
        _kill_pid(pid)
    shutil.rmtree(workdir, ignore_errors=True)


# --- the actor --------------------------------------------------------------------------------


class BrowserActor:
    """Runs browser tool calls on its own headless Chromium (a pool member).

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
            :class:`~agentcluster.tools.SettingsBudget` in pools); None: not checked or counted.

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
        _sweep_orphans(root)
        self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=root))
        (self._workdir / _OWNER_FILE).write_text(str(os.getpid()))
        launch_plan(self._settings, None)  # fail fast on a bad path or a missing setpriv
        self._proxy: EgressProxy | None = None
        self._launch: ChromiumLaunch | None = None
        self._browser: _Browser | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._calls = 0
        self._restarts = 0
        self._fresh_start_ms: float | None = None
        self._tools: Any = None
        atexit.register(_cleanup_at_exit, self._workdir, self._pids)

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
            "browser_uid": _uid(browser.pid if browser else None),
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

    async def _start_browser(self) -> _Browser:
        launch = await self._ready_launch()
        self._generation += 1
        browser = _Browser(self._settings, launch, self._workdir, self._generation)
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
        _log_start(browser, launch)
        return browser

    async def _replace_browser(self, *, crashed: bool = True) -> _Browser:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if crashed:
            self._restarts += 1
        return await self._start_browser()

    async def _ready_browser(self) -> _Browser:
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
            attributes=_browser_call_attributes(call),
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
            return ToolOutcome(ok=False, error=f"the browser could not start: {_one_line(exc)}")
        if self._proxy is not None:
            self._proxy.begin_lease(EgressLease(call.tenant_id, call.agent, call.session_id))
        limit = self._limit(arguments)
        try:
            async with asyncio.timeout(limit):
                result = await _Handlers(self, browser, llm).run(call.tool, arguments)
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

    async def _failure(self, browser: _Browser, error: str) -> ToolOutcome:
        if not browser.alive():
            await self._replace_browser()
            return ToolOutcome(ok=False, error=CRASHED)
        return ToolOutcome(ok=False, error=error)

    def _limit(self, arguments: Any) -> float:
        if isinstance(arguments, TaskArgs):
            return self._settings.action_timeout_s * self._task_steps(arguments)
        return self._settings.action_timeout_s

    def _task_steps(self, arguments: TaskArgs) -> int:
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
        return decision.allowed

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


def _uid(pid: int | None) -> int | None:
    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).uids().real)
    return None


def _log_start(browser: _Browser, launch: ChromiumLaunch) -> None:
    user = f"uid {launch.run_as[0]}" if launch.run_as else f"uid {os.geteuid()} (the actor's)"
    proxy = launch.proxy_url or "NONE (SA01_BROWSER_UNSAFE_NO_EGRESS_PROXY)"
    if not launch.sandbox:
        log.warning(
            "Chromium pid %s runs WITHOUT its sandbox (SA01_BROWSER_UNSAFE_NO_SANDBOX): unsafe "
            "for multiple tenants",
            browser.pid,
        )
    log.info(
        "Chromium pid %s started as %s, sandbox %s, egress proxy %s",
        browser.pid,
        user,
        browser.sandbox,
        proxy,
    )


# --- the tool handlers ------------------------------------------------------------------------


class _Handlers:
    """The browser tools for one call; each returns a JSON-able result or raises ToolError."""

    def __init__(self, actor: BrowserActor, browser: _Browser, llm: BrowserLlm | None) -> None:
        self._actor = actor
        self._session = browser.session
        self._llm = llm

    async def run(self, tool: str, arguments: Any) -> Any:
        handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "browser_navigate": self.navigate,
            "browser_state": self.state,
            "browser_click": self.click,
            "browser_type": self.type,
            "browser_select": self.select,
            "browser_scroll": self.scroll,
            "browser_screenshot": self.screenshot,
            "browser_extract": self.extract,
            "browser_task": self.task,
        }
        return await handlers[tool](arguments)

    async def _act(self, action: str, **params: Any) -> str:
        result = await getattr(self._actor.tools(), action)(browser_session=self._session, **params)
        if result.error:
            raise ToolError(_one_line(result.error, 500))
        return str(result.extracted_content or "")

    async def _page(self) -> dict[str, str]:
        # From the page itself: the target info browser-use caches lags behind navigations.
        found = await self._evaluate("({url: location.href, title: document.title})")
        page = found if isinstance(found, dict) else {}
        return {"url": str(page.get("url", "")), "title": str(page.get("title", ""))}

    async def _evaluate(self, expression: str) -> Any:
        cdp = await self._session.get_or_create_cdp_session()
        reply = await cdp.cdp_client.send.Runtime.evaluate(
            params={"expression": expression, "returnByValue": True},
            session_id=cdp.session_id,
        )
        return reply.get("result", {}).get("value")

    async def _ensure_indexed(self) -> None:
        # Indices come from the last state; compute one if the model acts before asking.
        if not await self._session.get_selector_map():
            await self._session.get_browser_state_summary(include_screenshot=False)

    async def navigate(self, args: NavigateArgs) -> dict[str, Any]:
        denial = await self._actor.denial(args.url)
        if denial is not None:
            raise ToolError(f"navigation to {args.url} denied: {denial}")
        await self._act("navigate", url=args.url, new_tab=False)
        page = await self._page()
        if page["url"] != args.url:
            denial = await self._actor.denial(page["url"])
            if denial is not None:
                await self._session.navigate_to("about:blank")
                raise ToolError(f"{args.url} redirected to {page['url']}, denied: {denial}")
        return page

    async def state(self, args: StateArgs) -> dict[str, Any]:
        summary = await self._session.get_browser_state_summary(include_screenshot=False)
        text = summary.dom_state.llm_representation()
        return {
            **await self._page(),
            "tabs": [{"url": tab.url, "title": tab.title} for tab in summary.tabs],
            "page": text[: args.max_chars],
            "truncated": len(text) > args.max_chars,
        }

    async def click(self, args: ClickArgs) -> dict[str, Any]:
        await self._ensure_indexed()
        return {"result": await self._act("click", index=args.index), **await self._page()}

    async def type(self, args: TypeArgs) -> dict[str, Any]:
        await self._ensure_indexed()
        done = await self._act("input", index=args.index, text=args.text, clear=args.clear)
        return {"result": done, **await self._page()}

    async def select(self, args: SelectArgs) -> dict[str, Any]:
        await self._ensure_indexed()
        done = await self._act("select_dropdown", index=args.index, text=args.option)
        return {"result": done, **await self._page()}

    async def scroll(self, args: ScrollArgs) -> dict[str, Any]:
        done = await self._act("scroll", down=args.direction == "down", pages=args.amount)
        return {"result": done, **await self._page()}

    async def screenshot(self, args: ScreenshotArgs) -> dict[str, Any]:
        png: bytes = await self._session.take_screenshot(full_page=args.full_page)
        width, height = _png_size(png)
        data = base64.b64encode(png).decode("ascii")
        return {
            "attachment": {"media_type": "image/png", "data_b64": data},
            "width": width,
            "height": height,
            **await self._page(),
        }

    async def extract(self, args: ExtractArgs) -> dict[str, Any]:
        if args.selector is not None:
            text = await self._act("find_elements", selector=args.selector, max_results=200)
        elif args.query is not None:
            text = await self._act("search_page", pattern=args.query)
        else:
            text = await self._page_text()
        return {"text": text[: args.max_chars], "truncated": len(text) > args.max_chars}

    async def _page_text(self) -> str:
        return str(await self._evaluate("document.body ? document.body.innerText : ''") or "")

    async def task(self, args: TaskArgs) -> dict[str, Any]:
        if self._llm is None:
            raise ToolError("browser_task needs a model, and this browser was given none")
        from browser_use import Agent

        chat = self._actor.chat_model(self._llm)
        agent: Any = Agent(
            task=args.task,
            # Its BaseChatModel protocol, but for a pydantic hook browser-use never calls here.
            llm=cast(Any, chat),
            browser_session=self._session,
            tools=_agent_tools(self._actor, await self._actor.evaluate_allowed()),
            use_vision=False,
            use_judge=False,
            directly_open_url=False,
            calculate_cost=False,
            file_system_path=str(self._actor.task_workdir()),
            max_failures=2,
        )
        chat.on_refused = agent.stop  # a spent budget ends the task, no retries
        history = await agent.run(max_steps=self._actor._task_steps(args))
        if chat.refusal is not None:
            raise ToolError(f"browser_task refused: {chat.refusal.message}")
        errors = [error for error in history.errors() if error]
        return {
            "done": history.is_done(),
            "success": bool(history.is_successful()),
            "answer": history.final_result(),
            "steps": history.number_of_steps(),
            "errors": [_one_line(error, 300) for error in errors[-3:]],
            **await self._page(),
        }


def _agent_tools(actor: BrowserActor, evaluate: bool = False) -> Any:
    """browser-use's actions for its Agent, minus web search and (unless the policy allowed
    it) ``evaluate``, with navigation checked."""
    from browser_use import BrowserSession, Tools
    from browser_use.agent.views import ActionResult
    from browser_use.tools.views import NavigateAction

    tools: Any = Tools(exclude_actions=["search"] if evaluate else ["search", "evaluate"])

    async def navigate(params: NavigateAction, browser_session: BrowserSession) -> ActionResult:
        denial = await actor.denial(params.url)
        if denial is not None:
            return ActionResult(error=f"navigation to {params.url} denied: {denial}")
        await browser_session.navigate_to(params.url, new_tab=params.new_tab)
        return ActionResult(extracted_content=f"Navigated to {params.url}")

    # The registry matches injected arguments by their annotation objects, and this module's
    # annotations are strings (PEP 563) naming lazily imported classes: give it the classes.
    navigate.__annotations__ = {
        "params": NavigateAction,
        "browser_session": BrowserSession,
        "return": ActionResult,
    }
    # Same name as the builtin: it replaces it in the registry, so the Agent cannot bypass it.
    tools.action("Navigate to a URL (http or https).", param_model=NavigateAction)(navigate)
    return tools


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        raise ToolError("the screenshot is not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _one_line(error: object, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text[:limit] or type(error).__name__


# --- pooling ----------------------------------------------------------------------------------


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


def _browser_call_attributes(call: ToolInvocation) -> dict[str, Any]:
    tool = _tracing.tool_attributes(call.tool, call.tool_call_id)
    return _tracing.rpc_attributes("BrowserActor", "execute", tool)


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
        attributes = _browser_call_attributes(invocation)
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
