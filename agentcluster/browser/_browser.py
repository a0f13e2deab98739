"""One Chromium process driven by one browser-use ``BrowserSession``, in its own profile dir.

:class:`Browser` starts Chromium through the launcher of :mod:`agentcluster.browser._chromium`
(unprivileged, sandboxed, behind the worker's egress proxy), checks its sandbox, tells whether it
is alive and closes it by its own PID. The helpers here clean up after workers that were killed
outright (their temp dirs, their Chromium).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from agentcluster.browser._chromium import (
    WORKDIR_PREFIX,
    ChromiumLaunch,
    prepare_profile,
    sandbox_state,
    write_launcher,
)
from agentcluster.config import BrowserSettings
from agentcluster.errors import ConfigError

__all__ = [
    "OWNER_FILE",
    "Browser",
    "cleanup_at_exit",
    "log_start",
    "process_uid",
    "sweep_orphans",
]

log = logging.getLogger(__name__)

_CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-gpu",
]
_KILL_TIMEOUT_S = 5.0
OWNER_FILE = "owner.pid"
"""The file in a worker's temp dir naming the PID of the process that owns it."""


class Browser:
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


def sweep_orphans(parent: Path) -> None:
    """Remove the temp dirs of browser workers whose process is gone (killed outright)."""
    for folder in parent.glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not psutil.pid_exists(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _kill_pid(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def cleanup_at_exit(workdir: Path, pids: Callable[[], list[int]]) -> None:
    """Kill the worker's Chromium and remove its temp dir (registered with ``atexit``)."""
    for pid in pids():
        _kill_pid(pid)
    shutil.rmtree(workdir, ignore_errors=True)


def process_uid(pid: int | None) -> int | None:
    """The real uid of process ``pid`` (None when unknown or gone)."""
    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).uids().real)
    return None


def log_start(browser: Browser, launch: ChromiumLaunch) -> None:
    """Log how a Chromium started: its user, sandbox and egress proxy (a warning without its
    sandbox)."""
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
