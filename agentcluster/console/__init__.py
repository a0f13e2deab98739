"""The web console: a small front end (plain ES modules, no build step) served by the gateway at
``/ui``, and the two API routes it adds (``GET /v1/whoami``, the admin key's ``GET /v1/cluster``).

Wire it into a gateway app with :func:`include_console`.
"""

from __future__ import annotations

from fastapi import FastAPI

from agentcluster.console._assets import CONTENT_SECURITY_POLICY, ConsoleAssets, ui_router
from agentcluster.console._cluster import (
    BreakerOut,
    ClusterOut,
    ClusterProbe,
    HostOut,
    PoolOut,
    RayClusterProbe,
    WhoAmI,
    breakers_from_metrics,
    cluster_router,
    read_cluster,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "BreakerOut",
    "ClusterOut",
    "ClusterProbe",
    "ConsoleAssets",
    "HostOut",
    "PoolOut",
    "RayClusterProbe",
    "WhoAmI",
    "breakers_from_metrics",
    "cluster_router",
    "include_console",
    "read_cluster",
]


def include_console(app: FastAPI, assets: ConsoleAssets | None = None) -> FastAPI:
    """Add the console (``/ui``) and its API routes to a gateway app from ``create_app``; returns
    the app. ``assets`` defaults to the files shipped with the package."""
    app.include_router(cluster_router())
    app.include_router(ui_router(assets))
    return app
