"""The gateway: HTTP API v1 (FastAPI) over the runtime, with problem+json errors."""

from agentcluster.gateway._app import create_app, current_service, replica_id
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._problems import BodyLimit, ProblemError, problem
from agentcluster.gateway._service import Caller, GatewayService

__all__ = [
    "BodyLimit",
    "Caller",
    "CallerDep",
    "GatewayService",
    "ProblemError",
    "ServiceDep",
    "create_app",
    "current_service",
    "problem",
    "replica_id",
]
