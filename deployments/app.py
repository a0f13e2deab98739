"""Serve application builder: ``serve deploy configs/serve.yaml`` and ``serve run`` import
``deployments.app:build_app``."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.gateway import build_gateway

__all__ = ["build_app"]


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The agentcluster Serve application (settings come from the environment)."""
    del args  # configuration lives in the environment (agentcluster.config), not in app args
    return build_gateway()
