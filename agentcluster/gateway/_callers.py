"""Who is calling: the FastAPI dependencies every router of the gateway shares (the app's
:class:`GatewayService` and the authenticated :class:`Caller` of a bearer token)."""

from typing import Annotated

from fastapi import Depends, Header, Request

from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._service import Caller, GatewayService

__all__ = [
    "AdminDep",
    "CallerDep",
    "ServiceDep",
    "bearer_token",
    "request_admin",
    "request_caller",
    "request_service",
]


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
    service: ServiceDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    caller = await service.authenticate(bearer_token(authorization))
    await service.admit(caller)  # the tenant's requests per minute: 429 past it
    return caller


CallerDep = Annotated[Caller, Depends(request_caller)]


async def request_admin(caller: CallerDep) -> Caller:
    caller.require_admin()  # a dependency: 401/403 come before any complaint about the body
    return caller


AdminDep = Annotated[Caller, Depends(request_admin)]
