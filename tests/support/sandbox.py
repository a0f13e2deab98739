"""Whether this machine can run python_exec's bubblewrap sandbox, for the tests that need it.

A machine without bubblewrap fails those tests (the project's setup installs it: a missing
package is a broken setup, not a reason to skip). A machine whose kernel or container refuses
user namespaces skips them, saying so: the sandbox cannot exist there by design.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools

import pytest

from agentcluster.tools._sandbox import PythonSandbox, SandboxLimits, SandboxStatus

__all__ = ["require_sandbox"]

_NAMESPACES_REFUSED = (
    "No permissions to create new namespace",
    "Operation not permitted",
    "setting up uid map",
    "Creating new namespace failed",
)


@functools.cache
def _probe() -> SandboxStatus:
    # In a thread of its own: callers may be inside a running event loop (async tests).
    sandbox = PythonSandbox(SandboxLimits(cpu_s=5, memory_mb=256, wall_s=20))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, sandbox.status()).result(timeout=60)


def require_sandbox() -> None:
    """Fail where the sandbox is missing, skip (with the reason) where namespaces are refused."""
    status = _probe()
    if status.ready:
        return
    if any(marker in status.detail for marker in _NAMESPACES_REFUSED):
        pytest.skip(f"user namespaces are not allowed on this machine: {status.detail}")
    pytest.fail(f"python_exec's sandbox cannot run here: {status.detail}", pytrace=False)
