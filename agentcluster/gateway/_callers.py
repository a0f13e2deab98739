"""Who is calling: the FastAPI dependencies every router of the gateway shares (the app's
:class:`GatewayService` and the authenticated :class:`Caller` of a bearer token)."""

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._service import Caller, GatewayService

__all__ = [
    "BEARER",
    "AdminDep",
    "CallerDep",
    "ServiceDep",
    "bearer_token",
    "request_admin",
    "request_caller",
    "request_service",
]


BEARER = HTTPBearer(
    auto_error=False,  # bearer_token below answers a missing or malformed header itself
    scheme_name="bearer",
    description="A tenant's API key, or the admin key (keys, limits and settings)",
)
"""The security scheme of every authenticated operation in the OpenAPI document."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without a header; 401 for
    any other scheme or an empty token."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ProblemError(
            401,
            "unauthorized",
            "use Authorization: Bearer <api key>",
            {"WWW-Authenticate": "Bearer"},
        )
    return value.strip()


def request_service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


ServiceDep = Annotated[GatewayService, Depends(request_service)]


async def request_caller(
    service: ServiceDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    """The authenticated caller of a request (its key read from the raw header, so that any
    scheme but Bearer gets a 401 saying so), admitted against its tenant's rate."""
    caller = await service.authenticate(bearer_token(authorization))
    await service.admit(caller)  # the tenant's requests per minute: 429 past it
    return caller


CallerDep = Annotated[Caller, Depends(request_caller)]


async def request_admin(caller: CallerDep) -> Caller:
    caller.require_admin()  # a dependency: 401/403 come before any complaint about the body
    return caller


AdminDep = Annotated[Caller, Depends(request_admin)]
