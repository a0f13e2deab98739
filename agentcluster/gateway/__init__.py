"""The gateway: HTTP API v1 (FastAPI) over the runtime, with problem+json errors."""

from agentcluster.gateway._app import Caller, create_app
from agentcluster.gateway._problems import BodyLimit, ProblemError, problem

__all__ = ["BodyLimit", "Caller", "ProblemError", "create_app", "problem"]
