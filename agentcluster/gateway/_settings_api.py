"""Provider settings over HTTP, admin key only.

``GET /v1/settings/providers`` (keys masked), ``PUT /v1/settings/providers`` (replace them all; a
masked key sent back keeps the stored one) and ``POST /v1/settings/providers/{name}/test`` (one
small call to the provider; ``ok: false`` with a detail when it fails). Errors are problem+json
like the rest of the API: 401/403 for a missing or non-admin key (checked before the body), 422
``validation-failed`` and 400 ``malformed-json`` for bad bodies, 404 for an unknown provider, 409
``conflict`` for a stale ``version``, 500 ``misconfigured`` when no key can encrypt or decrypt.

The app's lifespan opens the :class:`~agentcluster.providers.ProviderService` with
:func:`start_settings_api`; :func:`include_settings_api` adds the routes. Callers are
authenticated like every route of the gateway (``_callers.AdminDep``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Request

from agentcluster.config import Settings
from agentcluster.errors import DependencyUnavailable
from agentcluster.gateway._callers import AdminDep
from agentcluster.gateway._responses import problem_responses
from agentcluster.providers import (
    NAME_PATTERN,
    Probe,
    ProviderService,
    ProviderSettingsIn,
    ProviderSettingsOut,
    ProviderTestIn,
    ProviderTestResult,
    open_provider_service,
)
from agentcluster.store import SharedDatabase

__all__ = ["include_settings_api", "settings_router", "start_settings_api", "stop_settings_api"]


def _providers(request: Request) -> ProviderService:
    providers: ProviderService | None = getattr(request.app.state, "providers", None)
    if providers is None:
        raise DependencyUnavailable("gateway", "provider settings are not started on this replica")
    return providers


ProvidersDep = Annotated[ProviderService, Depends(_providers)]
ProviderName = Annotated[str, Path(pattern=NAME_PATTERN)]

settings_router = APIRouter(prefix="/v1/settings/providers", tags=["settings"])


@settings_router.get("", response_model=ProviderSettingsOut, responses=problem_responses(500))
async def get_providers(_admin: AdminDep, providers: ProvidersDep) -> ProviderSettingsOut:
    return await providers.get()


@settings_router.put("", response_model=ProviderSettingsOut, responses=problem_responses(409, 500))
async def put_providers(
    body: ProviderSettingsIn, _admin: AdminDep, providers: ProvidersDep
) -> ProviderSettingsOut:
    return await providers.put(body)


@settings_router.post(
    "/{name}/test", response_model=ProviderTestResult, responses=problem_responses(404, 500)
)
async def test_provider(
    name: ProviderName,
    _admin: AdminDep,
    providers: ProvidersDep,
    body: ProviderTestIn | None = None,
) -> ProviderTestResult:
    return await providers.test(name, body)


def include_settings_api(app: FastAPI) -> None:
    """Add the provider settings routes to ``app``."""
    app.include_router(settings_router)


async def start_settings_api(
    app: FastAPI,
    settings: Settings,
    *,
    state_store: SharedDatabase | None = None,
    known_agents: Collection[str] | None = None,
    probe: Probe | None = None,
) -> ProviderService:
    """Open the provider service for ``app`` (in its lifespan; close with stop_settings_api).

    Args:
        app: the gateway app (the service goes to ``app.state.providers``).
        settings: the settings tree.
        state_store: the replica's state store, shared by the embedded settings store.
        known_agents: the agent profiles' names (settings for others are refused).
        probe: the test call (default: one LiteLLM call).
    """
    providers = await open_provider_service(
        settings, state_store=state_store, known_agents=known_agents, probe=probe
    )
    app.state.providers = providers
    return providers


async def stop_settings_api(app: FastAPI) -> None:
    """Close what :func:`start_settings_api` opened."""
    providers: ProviderService | None = getattr(app.state, "providers", None)
    if providers is not None:
        app.state.providers = None
        await providers.aclose()
