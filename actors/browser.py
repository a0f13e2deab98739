"""Browser actors: browser-use 0.11.13 on headless Chromium, one browser per actor, pooled.

:class:`BrowserActor` is a plain class (``ray.remote`` is applied by the pool) that runs the
browser tools of :mod:`agentcluster.tools._browser` on its own Chromium: ``execute`` takes a
``ToolInvocation`` dict and returns a ``ToolOutcome`` dict, and never raises for a tool failure.

Its Chromium runs headless without the sandbox, with telemetry, cloud sync and version checks off,
its profile and downloads in the actor's own temp dir (removed on ``stop`` and at exit). Chromium
is started through ``setpriv --pdeathsig KILL`` so it dies with the actor even when the actor is
killed outright. If Chromium dies, the next look at it (every call, and ``health``) notices,
starts a fresh one, and the call answers "the browser crashed and was restarted; retry".

:class:`PooledBrowserTools` runs calls on a pool of these actors with one sticky lease per
session, so a session keeps its browser (and page) across the steps of a turn until
:meth:`PooledBrowserTools.end_session` or the pool's idle release.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import logging
import os
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from ray.exceptions import RayActorError

from actors.pool import ActorPool, PoolConfig, PoolExhausted, PoolSpec
from agentcluster import tracing as _tracing
from agentcluster.config import (
    BrowserSettings,
    Settings,
    TracingSettings,
    prepare_offline_environment,
)
from agentcluster.errors import ConfigError, ToolError
from agentcluster.llm._types import ToolSchema
from agentcluster.tools._base import ToolInvocation, ToolOutcome
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
    parse_browser_arguments,
)
from agentcluster.tracing import Carrier

__all__ = [
    "CRASHED",
    "BrowserActor",
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

_CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-gpu",
]
_KILL_TIMEOUT_S = 5.0
_WORKDIR_PREFIX = "ac-browser-"
_OWNER_FILE = "owner.pid"


class _BrowserDied(Exception):
    """Chromium was found dead and has been replaced."""


# --- one Chromium and its browser-use session ------------------------------------------------


class _Browser:
    """One Chromium process driven by one browser-use BrowserSession, in its own profile dir."""

    def __init__(self, settings: BrowserSettings, workdir: Path, generation: int) -> None:
        self._settings = settings
        self.profile_dir = workdir / f"profile-{generation}"
        self._downloads = workdir / "downloads"
        self._executable = _launcher(settings.chromium_path, workdir)
        self.session: Any = None
        self.pid: int | None = None

    async def start(self) -> None:
        BrowserProfile, BrowserSession = _browser_use_classes()
        profile = BrowserProfile(
            executable_path=str(self._executable),
            headless=self._settings.headless,
            chromium_sandbox=False,
            # A name browser-use recognises as its own temp profile, so it is not copied.
            user_data_dir=str(self.profile_dir / "browser-use-user-data-dir"),
            downloads_path=str(self._downloads),
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
    for folder in parent.glob(f"{_WORKDIR_PREFIX}*"):
        try:
            owner = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not psutil.pid_exists(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _launcher(chromium: Path, workdir: Path) -> Path:
    """A script that starts Chromium so that it gets SIGKILL when its parent dies."""
    if not os.access(chromium, os.X_OK):
        raise ConfigError(f"SA01_BROWSER_CHROMIUM_PATH: {chromium} is not an executable file")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return chromium
    script = workdir / "chromium.sh"
    script.write_text(f'#!/bin/sh\nexec {setpriv} --pdeathsig KILL -- {chromium} "$@"\n')
    script.chmod(0o700)
    return script


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
        check_url: the policy hook for navigation targets (the reason to deny, or None).
        tracing: where this actor's spans go (``SA01_TRACING_*``); from the environment if
            omitted.

    Raises:
        ConfigError: Chromium is not where the settings say.
    """

    def __init__(
        self,
        settings: BrowserSettings | None = None,
        llm: BrowserLlm | dict[str, Any] | None = None,
        check_url: UrlCheck | None = None,
        tracing: TracingSettings | None = None,
    ) -> None:
        prepare_offline_environment()
        _tracing.configure_tracing(tracing or TracingSettings(), "browser-actor")
        self._settings = settings or BrowserSettings()
        self._llm = BrowserLlm.model_validate(llm) if isinstance(llm, dict) else llm
        self._check_url = check_url
        self._invocation: ToolInvocation | None = None
        _sweep_orphans(Path(tempfile.gettempdir()))
        self._workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        (self._workdir / _OWNER_FILE).write_text(str(os.getpid()))
        _launcher(self._settings.chromium_path, self._workdir)  # fail fast on a bad path
        self._browser: _Browser | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._origins: set[str] = set()
        self._calls = 0
        self._restarts = 0
        self._tools: Any = None
        atexit.register(_cleanup_at_exit, self._workdir, self._pids)

    def _pids(self) -> list[int]:
        pid = self._browser.pid if self._browser is not None else None
        return [pid] if pid is not None else []

    # -- lifecycle -----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Starts the browser on first use (so pool members come up warm) and reports on it."""
        if self._browser is None and not self._lock.locked():
            async with self._lock:
                if self._browser is None:
                    await self._start_browser()
        browser = self._browser
        return {
            "actor_pid": os.getpid(),
            "browser_pid": browser.pid if browser else None,
            "browser_alive": bool(browser and browser.alive()),
            "calls": self._calls,
            "restarts": self._restarts,
        }

    async def browser_pid(self) -> int | None:
        """The PID of this actor's Chromium (its main process), if running."""
        return self._browser.pid if self._browser is not None else None

    async def schemas(self) -> list[dict[str, Any]]:
        """The browser tools' schemas as dicts."""
        return [schema.model_dump() for schema in browser_schemas()]

    async def reset(self) -> None:
        """Fresh page state for the next lease: one blank tab, no cookies or site storage.

        Anything that fails here is solved by a fresh browser instead.
        """
        async with self._lock:
            browser = self._browser
            if browser is None:
                return
            try:
                async with asyncio.timeout(self._settings.action_timeout_s):
                    await self._clear(browser)
            except Exception as exc:
                # Why broad: whatever failed, a new Chromium is the clean state we promised.
                log.warning("browser reset failed (%s); starting a fresh browser", exc)
                await self._replace_browser()
            self._origins.clear()

    async def _clear(self, browser: _Browser) -> None:
        session = browser.session
        focused = session.agent_focus_target_id
        for tab in await session.get_tabs():
            if tab.target_id != focused:
                await session.close_page(tab.target_id)
        await browser.blank()
        cdp = await session.get_or_create_cdp_session()
        # Cookies are browser-wide (root connection); site storage is cleared through the page.
        await session.cdp_client.send.Storage.clearCookies()
        for origin in self._origins:
            await cdp.cdp_client.send.Storage.clearDataForOrigin(
                params={"origin": origin, "storageTypes": "all"}, session_id=cdp.session_id
            )

    async def stop(self) -> None:
        """Close Chromium and remove the actor's temp dir (profile, downloads)."""
        async with self._lock:
            if self._browser is not None:
                await self._browser.close()
                self._browser = None
            shutil.rmtree(self._workdir, ignore_errors=True)
        await _tracing.flush_tracing()

    async def _start_browser(self) -> _Browser:
        self._generation += 1
        browser = _Browser(self._settings, self._workdir, self._generation)
        self._browser = browser
        try:
            async with asyncio.timeout(max(self._settings.action_timeout_s, 30.0)):
                await browser.start()
        except BaseException:
            await browser.close()
            self._browser = None
            raise
        return browser

    async def _replace_browser(self) -> _Browser:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
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
        invocation: dict[str, Any],
        llm: dict[str, Any] | None = None,
        trace: Carrier | None = None,
    ) -> dict[str, Any]:
        """Run one browser tool call; failures come back as ``ok=False`` outcomes.

        Args:
            invocation: a ``ToolInvocation`` as a dict.
            llm: a ``BrowserLlm`` as a dict, for browser_task (else the constructor's).
            trace: the caller's trace carrier; this call's span continues it.
        """
        started = time.perf_counter()
        call = ToolInvocation.model_validate(invocation)
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
        return outcome.model_copy(update={"latency_ms": latency_ms}).model_dump()

    async def _execute(self, call: ToolInvocation, llm: dict[str, Any] | None) -> ToolOutcome:
        try:
            arguments = parse_browser_arguments(call.tool, call.arguments)
            model = BrowserLlm.model_validate(llm) if llm is not None else self._llm
        except ToolError as exc:
            return ToolOutcome(ok=False, error=exc.message)
        async with self._lock:
            self._calls += 1
            self._invocation = call  # whose navigations the URL check decides
            try:
                return await self._run(call, arguments, model)
            finally:
                self._invocation = None

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
        await self._remember_origin(browser)
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

    async def _remember_origin(self, browser: _Browser) -> None:
        url = await browser.session.get_current_page_url()
        parts = urlsplit(url)
        if parts.scheme in {"http", "https"} and parts.netloc:
            self._origins.add(f"{parts.scheme}://{parts.netloc}")

    async def denial(self, url: str) -> str | None:
        """Why ``url`` must not be opened (syntax, then the policy hook), or None."""
        problem = navigation_problem(url)
        if problem is None and self._check_url is not None:
            problem = await self._check_url(url, self._invocation)
        return problem

    def tools(self) -> Any:
        """browser-use's action registry (built once, on first use)."""
        if self._tools is None:
            from browser_use import Tools

            self._tools = Tools()
        return self._tools

    def task_workdir(self) -> Path:
        return self._workdir / f"agent-{self._calls}"


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

        agent: Any = Agent(
            task=args.task,
            llm=_chat_model(self._llm, self._actor),
            browser_session=self._session,
            tools=_agent_tools(self._actor),
            use_vision=False,
            use_judge=False,
            directly_open_url=False,
            calculate_cost=False,
            file_system_path=str(self._actor.task_workdir()),
            max_failures=2,
        )
        history = await agent.run(max_steps=self._actor._task_steps(args))
        errors = [error for error in history.errors() if error]
        return {
            "done": history.is_done(),
            "success": bool(history.is_successful()),
            "answer": history.final_result(),
            "steps": history.number_of_steps(),
            "errors": [_one_line(error, 300) for error in errors[-3:]],
            **await self._page(),
        }


def _chat_model(llm: BrowserLlm, actor: BrowserActor) -> Any:
    from browser_use.llm.openai.chat import ChatOpenAI

    return ChatOpenAI(
        model=llm.model,
        base_url=llm.api_base,
        api_key=llm.api_key or "unused",
        max_retries=1,
        timeout=actor._settings.action_timeout_s,
    )


def _agent_tools(actor: BrowserActor) -> Any:
    """browser-use's actions for its Agent, minus web search, with navigation checked."""
    from browser_use import BrowserSession, Tools
    from browser_use.agent.views import ActionResult
    from browser_use.tools.views import NavigateAction

    tools: Any = Tools(exclude_actions=["search"])

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
) -> PoolSpec:
    """The pool of browser actors the settings describe (``SA01_BROWSER_*``)."""
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
        },
        namespace=settings.runtime.namespace,
        num_cpus=browser.num_cpus,
        resources={browser.resource: 1.0} if browser.resource else {},
    )


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
        payload = llm.model_dump() if llm is not None else None
        attributes = _browser_call_attributes(invocation)
        with _tracing.outgoing("BrowserActor/execute", attributes=attributes) as (span, trace):
            try:
                outcome = await lease.member.execute.remote(invocation.model_dump(), payload, trace)
            except RayActorError as exc:
                _tracing.mark_error(span, exc)
                await self._pool.report_failure(lease, "the browser actor died during a call")
                return ToolOutcome(ok=False, error=CRASHED)
        return ToolOutcome.model_validate(outcome)

    async def end_session(self, session_id: str) -> bool:
        """Give the session's browser back (at the end of its turn); False if it held none."""
        return await self._pool.release_key(session_id)
