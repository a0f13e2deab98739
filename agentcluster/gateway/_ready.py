"""``GET /v1/ready``: each dependency's name and state for anyone (load balancers, ``make
health``), the details (URLs with passwords masked, why a dependency is down, latencies) for the
admin key only.

The replica keeps one :class:`~agentcluster.health.ReadinessProbe` over the runtime's own store:
a flood of requests costs at most one probe per second and no new connection per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from agentcluster import api
from agentcluster.config import Settings
from agentcluster.health import Readiness, ReadinessProbe
from agentcluster.store import StoreHealth

__all__ = ["include_ready", "ready_body", "start_ready", "stop_ready"]

router = APIRouter(tags=["system"])


def start_ready(app: FastAPI, settings: Settings, store: StoreHealth) -> None:
    """Give the app its readiness probe (at startup, once the runtime's store is open)."""
    app.state.readiness = ReadinessProbe(settings, store=store)
    app.state.ready_admin_key = settings.auth.admin_key


async def stop_ready(app: FastAPI) -> None:
    """Close the probe's connections (before the store it shares is closed)."""
    probe: ReadinessProbe | None = getattr(app.state, "readiness", None)
    if probe is not None:
        await probe.aclose()


def _is_admin(admin_key: str | None, authorization: str | None) -> bool:
    """Whether the header carries the admin key; anything else (none, a tenant key, garbage)
    just gets the public answer."""
    if not admin_key or not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), admin_key.encode())


def ready_body(readiness: Readiness, *, details: bool) -> api.Ready:
    """The API's view of a probe: names and states, plus details when ``details``."""
    dependencies = [
        (
            api.ReadyDependency(
                name=status.name,
                state=status.state,
                detail=status.detail,
                latency_ms=round(status.latency_ms, 1),
            )
            if details
            else api.ReadyDependency(name=status.name, state=status.state)
        )
        for status in readiness.statuses
    ]
    return api.Ready(
        status="degraded" if readiness.degraded else "ready",
        dependencies=dependencies,
        checked_at=readiness.checked_at,
    )


@router.get(
    "/v1/ready",
    response_model=api.Ready,
    responses={503: {"model": api.Ready, "description": "Some dependency is down"}},
    openapi_extra={"security": [{}, {"bearer": []}]},  # the admin key is optional here
)
async def ready(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> JSONResponse:
    """200 when every configured dependency answers, 503 naming the ones that do not. Details
    (``detail``, ``latency_ms``) only with ``Authorization: Bearer <admin key>``."""
    readiness = await request.app.state.readiness.check()
    details = _is_admin(request.app.state.ready_admin_key, authorization)
    body = ready_body(readiness, details=details)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=503 if readiness.degraded else 200,
        headers={"Cache-Control": "no-store"},
    )


def include_ready(app: FastAPI) -> None:
    """Serve ``/v1/ready`` (start_ready must run in the app's lifespan)."""
    app.include_router(router)
