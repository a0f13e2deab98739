"""A tenant's webhook signing secret over HTTP (tenant keys; the ``session.create`` policy
action: whoever may start sessions configures where their outcomes go).

``GET /v1/webhooks/secret`` answers the secret (made on first use); ``POST
/v1/webhooks/secret/rotate`` replaces it: deliveries from then on are signed with the new one.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from agentcluster.api import WebhookSecretOut
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._responses import problem_responses

__all__ = ["include_webhooks_api", "webhooks_router"]

webhooks_router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@webhooks_router.get("/secret", response_model=WebhookSecretOut, responses=problem_responses(403))
async def get_secret(caller: CallerDep, service: ServiceDep) -> WebhookSecretOut:
    tenant_id = await service.authorize(caller, "session.create")
    return WebhookSecretOut(secret=await service.runtime.store.webhook_secret(tenant_id))


@webhooks_router.post(
    "/secret/rotate", response_model=WebhookSecretOut, responses=problem_responses(403)
)
async def rotate_secret(caller: CallerDep, service: ServiceDep) -> WebhookSecretOut:
    tenant_id = await service.authorize(caller, "session.create")
    return WebhookSecretOut(secret=await service.runtime.store.rotate_webhook_secret(tenant_id))


def include_webhooks_api(app: FastAPI) -> None:
    """Add the webhook secret routes to ``app``."""
    app.include_router(webhooks_router)
