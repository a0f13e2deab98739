"""How a browser worker starts Chromium: as an unprivileged user, sandboxed, behind its proxy.

browser-use starts the executable it is given with its own flags; that executable is a launcher
written here, which

* drops every flag that would weaken the browser (``--no-sandbox``, ``--no-zygote``,
  ``--disable-web-security``, any proxy or host-resolver flag, ...), whoever added it (browser-use
  adds ``--no-sandbox`` whenever it thinks it runs in a container);
* appends the flags that route every request through the actor's egress proxy
  (``--proxy-server``, ``--proxy-bypass-list=<-loopback>``: without it Chromium sends loopback
  and link-local 169.254/16 around the proxy) and turn off what would leave another way (QUIC,
  DNS prefetch, WebRTC UDP that does not go through the proxy);
* runs Chromium with an empty environment (HOME in its own profile dir), through
  ``setpriv --pdeathsig KILL`` so it dies with the actor, and, when the actor is root, as
  ``SA01_BROWSER_RUN_AS_UID``/``GID`` with no supplementary groups.

Chromium's own sandbox (user namespaces, seccomp-bpf) stays on. :func:`sandbox_problem` tells,
before a start, whether that uid can have it here; :func:`sandbox_state` checks a running
Chromium's renderers for it. Only ``SA01_BROWSER_UNSAFE_NO_SANDBOX`` lets a browser run without.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from agentcluster.config import BrowserSettings
from agentcluster.errors import ConfigError
from agentcluster.tools import IPAddress

__all__ = [
    "DROPPED_SWITCHES",
    "ChromiumLaunch",
    "is_reserved",
    "launch_plan",
    "prepare_profile",
    "register_ports",
    "sandbox_problem",
    "sandbox_state",
    "workdir_root",
    "write_launcher",
]

WORKDIR_PREFIX = "ac-browser-"
_PORTS_FILE = "ports"

DROPPED_SWITCHES: frozenset[str] = frozenset(
    {
        "--no-sandbox",
        "--disable-setuid-sandbox",
        "--disable-gpu-sandbox",
        "--disable-seccomp-filter-sandbox",
        "--disable-namespace-sandbox",
        "--no-zygote",
        "--single-process",
        "--disable-site-isolation-trials",
        "--disable-web-security",
        "--allow-running-insecure-content",
        "--remote-allow-origins",
        "--remote-debugging-address",
        "--proxy-server",
        "--proxy-bypass-list",
        "--proxy-pac-url",
        "--no-proxy-server",
        "--proxy-auto-detect",
        "--host-resolver-rules",
        "--host-rules",
    }
)
"""Flags the launcher removes, whoever passed them (with or without ``=value``)."""

_ENFORCED_SWITCHES = [
    "--disable-quic",
    "--dns-prefetch-disable",
    "--no-pings",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-service-autorun",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
]
_DISABLED_FEATURES = [
    "DnsOverHttps",
    "AsyncDns",
    "MediaRouter",
    "PreconnectToSearch",
    "OptimizationHints",
    "AutofillServerCommunication",
    "Translate",
    "SignInProfileCreation",
    "DiceWebSigninInterception",
    "ChromeLabs",
]

_LAUNCHER = """
import json, os, sys
PLAN = json.loads({plan!r})
args, features = [], []
for arg in sys.argv[1:]:
    name = arg.split("=", 1)[0]
    if name in PLAN["drop"]:
        continue
    if name == "--disable-features":
        features += [item for item in arg.split("=", 1)[1].split(",") if item]
        continue
    args.append(arg)
features += PLAN["disable_features"]
args += PLAN["append"] + ["--disable-features=" + ",".join(dict.fromkeys(features))]
os.execve(PLAN["argv"][0], PLAN["argv"] + args, PLAN["env"])
"""


@dataclass(frozen=True)
class ChromiumLaunch:
    """How this actor starts Chromium.

    Attributes:
        chromium: the Chromium executable.
        setpriv: setpriv's path (None: not installed; then only a non-root actor may start).
        run_as: (uid, gid) Chromium switches to (the actor is root), or None (runs as the actor).
        sandbox: Chromium's sandbox on (off only under SA01_BROWSER_UNSAFE_NO_SANDBOX).
        proxy_url: the egress proxy, or None (SA01_BROWSER_UNSAFE_NO_EGRESS_PROXY).
    """

    chromium: Path
    setpriv: str | None
    run_as: tuple[int, int] | None
    sandbox: bool
    proxy_url: str | None


def launch_plan(settings: BrowserSettings, proxy_url: str | None) -> ChromiumLaunch:
    """The launch this node can do under these settings.

    Raises:
        ConfigError: Chromium is not executable, or the actor is root and setpriv is missing.
    """
    if not os.access(settings.chromium_path, os.X_OK):
        path = settings.chromium_path
        raise ConfigError(f"SA01_BROWSER_CHROMIUM_PATH: {path} is not an executable file")
    setpriv = shutil.which("setpriv")
    root = os.geteuid() == 0
    if root and setpriv is None:
        raise ConfigError(
            "SA01_BROWSER_RUN_AS_UID: the actor runs as root and setpriv (util-linux) is not "
            "installed, so Chromium cannot be started as an unprivileged user"
        )
    run_as = (settings.run_as_uid, settings.run_as_gid) if root else None
    return ChromiumLaunch(
        settings.chromium_path, setpriv, run_as, not settings.unsafe_no_sandbox, proxy_url
    )


def write_launcher(launch: ChromiumLaunch, path: Path, home: Path) -> Path:
    """Write the launcher script browser-use will start (see the module docstring)."""
    argv = [str(launch.chromium)]
    if launch.setpriv is not None:
        ids = []
        if launch.run_as is not None:
            uid, gid = launch.run_as
            ids = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        argv = [launch.setpriv, *ids, "--pdeathsig", "KILL", "--", str(launch.chromium)]
    append = list(_ENFORCED_SWITCHES)
    if launch.proxy_url is not None:
        append += [f"--proxy-server={launch.proxy_url}", "--proxy-bypass-list=<-loopback>"]
    if not launch.sandbox:
        append.append("--no-sandbox")
    env = {
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    plan = {
        "drop": sorted(DROPPED_SWITCHES),
        "disable_features": _DISABLED_FEATURES,
        "append": append,
        "argv": argv,
        "env": env,
    }
    script = f"#!{sys.executable} -IS\n" + _LAUNCHER.format(plan=json.dumps(plan))
    path.write_text(script)
    path.chmod(0o700)
    return path


def prepare_profile(profile_dir: Path, run_as: tuple[int, int] | None) -> None:
    """Create a fresh profile dir (HOME, tmp, downloads) owned by Chromium's user, 0700."""
    shutil.rmtree(profile_dir, ignore_errors=True)
    for folder in (profile_dir, *(profile_dir / name for name in ("tmp", "downloads"))):
        folder.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(folder, *run_as)
    if run_as is not None:
        # Chromium's user must reach its profile inside the actor's own (root) workdir.
        profile_dir.parent.chmod(0o711)


_UNSHARE_PROBE = "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x10000000) != 0)"


def sandbox_problem(launch: ChromiumLaunch) -> str | None:
    """Why Chromium's namespace sandbox cannot start for its user here, or None if it can.

    The probe: can that user create a user namespace (what Chromium's sandbox needs; Debian
    ships no setuid helper)?
    """
    command = [sys.executable, "-I", "-S", "-c", _UNSHARE_PROBE]
    if launch.run_as is not None and launch.setpriv is not None:
        uid, gid = launch.run_as
        ids = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        command = [launch.setpriv, *ids, *command]
    try:
        done = subprocess.run(command, capture_output=True, timeout=10, check=False, env={})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the sandbox probe could not run: {exc}"
    if done.returncode != 0:
        who = f"uid {launch.run_as[0]}" if launch.run_as else f"uid {os.geteuid()}"
        return (
            f"{who} cannot create a user namespace here (kernel.unprivileged_userns_clone, "
            "user.max_user_namespaces or a seccomp profile forbid it), so Chromium's sandbox "
            "cannot start"
        )
    return None


def sandbox_state(browser_pid: int) -> str:
    """What isolates this Chromium's child processes: ``namespace+seccomp``, ``namespace``,
    ``seccomp`` or ``none`` (judged from the renderers' and zygotes' /proc entries)."""
    try:
        browser = psutil.Process(browser_pid)
        own_ns = os.readlink(f"/proc/{browser_pid}/ns/user")
        children = browser.children(recursive=True)
    except (psutil.Error, OSError):
        return "none"
    namespace = seccomp = False
    for child in children:
        with contextlib.suppress(OSError):
            namespace |= os.readlink(f"/proc/{child.pid}/ns/user") != own_ns
            status = Path(f"/proc/{child.pid}/status").read_text()
            seccomp |= "\nSeccomp:\t2" in status
    kinds = [name for name, on in (("namespace", namespace), ("seccomp", seccomp)) if on]
    return "+".join(kinds) or "none"


def workdir_root() -> Path:
    """Where this node's browser actors keep their work dirs (profiles, launchers, ports): the
    temp dir, or ``/tmp`` where the actor runs as root and Chromium's own user could not reach
    into the temp dir (a ``TMPDIR`` inside a private directory, as Ray's test clusters use)."""
    temp = Path(tempfile.gettempdir())
    if os.geteuid() != 0 or _reachable_by_others(temp):
        return temp
    return Path("/tmp")


def _reachable_by_others(folder: Path) -> bool:
    # Every directory on the way must let others through (the x bit for "other").
    for part in (folder.resolve(), *folder.resolve().parents):
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def register_ports(workdir: Path, ports: list[int]) -> None:
    """Record this actor's proxy and DevTools ports, which no browser may be proxied to."""
    (workdir / _PORTS_FILE).write_text(" ".join(str(port) for port in ports))


def is_reserved(ip: IPAddress, port: int, parent: Path | None = None) -> bool:
    """Whether (ip, port) is a browser actor's proxy or DevTools port on this node (loopback)."""
    if not (ip.is_loopback or ip.is_unspecified or _mapped_loopback(ip)):
        return False
    folder = parent or workdir_root()
    for ports_file in folder.glob(f"{WORKDIR_PREFIX}*/{_PORTS_FILE}"):
        with contextlib.suppress(OSError, ValueError):
            if port in {int(item) for item in ports_file.read_text().split()}:
                return True
    return False


def _mapped_loopback(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback or ip.ipv4_mapped.is_unspecified
    return False
