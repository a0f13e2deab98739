"""The gateway as a Ray Serve deployment: the FastAPI app of agentcluster.gateway as ingress.

``serve.deployment`` and ``serve.ingress`` are applied here and nowhere else; autoscaling, health
checks and limits come from ``configs/serve.yaml`` (or the defaults below for ``serve run``).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from agentcluster.config import Settings, load_settings
from agentcluster.gateway import create_app

__all__ = ["DEFAULT_OPTIONS", "build_gateway"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "name": "Gateway",
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 5,
        "downscale_delay_s": 30,
    },
    "max_ongoing_requests": 64,
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
    "ray_actor_options": {"num_cpus": 0},
}


def build_gateway(settings: Settings | None = None, **options: Any) -> Application:
    """The Serve application of the gateway (options override DEFAULT_OPTIONS)."""
    settings = settings or load_settings()
    app = create_app(settings)

    class Gateway:
        """One gateway replica; FastAPI's lifespan connects it to the runtime."""

        async def check_health(self) -> None:
            # Serve calls this periodically; the replica is healthy while its event loop runs
            # (dependencies are reported by /v1/ready, not by restarting replicas).
            return None

    ingress = serve.ingress(app)(Gateway)
    deployment = serve.deployment(**(DEFAULT_OPTIONS | options))(ingress)
    return deployment.bind()
