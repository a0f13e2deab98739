"""The web console: a small front end (plain ES modules, no build step) served by the gateway at
``/ui``, and the two API routes it adds (``GET /v1/whoami``, the admin key's ``GET /v1/cluster``).

Wire it into a gateway app with :func:`include_console`. Importing this package does not import
the gateway (the routes' module is loaded when they are built), so the gateway's app module may
import it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from agentcluster.console._assets import CONTENT_SECURITY_POLICY, ConsoleAssets, ui_router
from agentcluster.console._models import (
    BreakerOut,
    BreakerState,
    ClusterOut,
    HostOut,
    PoolOut,
    WhoAmI,
)
from agentcluster.console._probe import (
    PART_TIMEOUT_S,
    ClusterProbe,
    NoClusterProbe,
    breakers_from_metrics,
    read_cluster,
)

if TYPE_CHECKING:
    from agentcluster.console._routes import ProbeFactory, cluster_router

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "PART_TIMEOUT_S",
    "BreakerOut",
    "BreakerState",
    "ClusterOut",
    "ClusterProbe",
    "ConsoleAssets",
    "HostOut",
    "NoClusterProbe",
    "PoolOut",
    "ProbeFactory",
    "WhoAmI",
    "breakers_from_metrics",
    "cluster_router",
    "include_console",
    "read_cluster",
    "ui_router",
]

_ROUTES = frozenset({"ProbeFactory", "cluster_router"})


def __getattr__(name: str) -> Any:
    if name in _ROUTES:
        return getattr(importlib.import_module("agentcluster.console._routes"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def include_console(
    app: FastAPI, assets: ConsoleAssets | None = None, probe: ProbeFactory | None = None
) -> FastAPI:
    """Add the console (``/ui``) and its API routes to a gateway app from ``create_app``; returns
    the app. ``assets`` defaults to the files shipped with the package; ``probe`` reads the
    cluster for ``GET /v1/cluster`` (injected by the Ray edge: ``actors.console_probe``; without
    one, each part is named in the answer's problems)."""
    from agentcluster.console._routes import cluster_router

    app.include_router(cluster_router(probe) if probe is not None else cluster_router())
    app.include_router(ui_router(assets))
    return app
