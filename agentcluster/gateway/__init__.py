"""The gateway: HTTP API v1 (FastAPI) over the runtime, with problem+json errors."""

from agentcluster.gateway._app import create_app, replica_id
from agentcluster.gateway._service import Caller, GatewayService
from agentcluster.gateway._problems import BodyLimit, ProblemError, problem

__all__ = [
    "BodyLimit",
    "Caller",
    "GatewayService",
    "ProblemError",
    "create_app",
    "problem",
    "replica_id",
]
