"""A session's tool calls waiting for a person, over HTTP.

``GET /v1/sessions/{id}/approvals`` lists the waiting ones (``?all=true``: decided ones too);
``POST .../approvals/{tool_call_id}`` ``{decision: approve | edit | reject, arguments?, message?}``
decides one (``session.approve``): the turn resumes once each of its waiting calls is decided.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query

from agentcluster import api
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._responses import problem_responses

__all__ = ["TOOL_CALL_ID_PATTERN", "approvals_router", "include_approvals_api"]

TOOL_CALL_ID_PATTERN = r"^[!-.0-~]{1,128}$"
"""A tool call id as a model wrote it (``call_...``, ``toolu_...``): printable ASCII but ``/``,
as the store keeps it (128 characters at most)."""

SessionId = Annotated[
    str, Path(description="a session's id", json_schema_extra={"pattern": api.ID_PATTERN})
]
ToolCallId = Annotated[
    str,
    Path(
        description="the waiting tool call's id (tool.approval_requested)",
        pattern=TOOL_CALL_ID_PATTERN,
    ),
]

approvals_router = APIRouter(prefix="/v1/sessions/{session_id}/approvals", tags=["approvals"])


@approvals_router.get("", response_model=api.ApprovalList, responses=problem_responses(404))
async def list_approvals(
    session_id: SessionId,
    caller: CallerDep,
    service: ServiceDep,
    include_all: Annotated[
        bool, Query(alias="all", description="also the decided, expired and cancelled ones")
    ] = False,
) -> api.ApprovalList:
    return await service.approvals(caller, session_id, include_all)


@approvals_router.post(
    "/{tool_call_id}",
    response_model=api.ApprovalOut,
    responses=problem_responses(404, 409, 422),
)
async def decide_approval(
    session_id: SessionId,
    tool_call_id: ToolCallId,
    body: api.ApprovalDecisionIn,
    caller: CallerDep,
    service: ServiceDep,
) -> api.ApprovalOut:
    """Approve, edit (run with other arguments) or reject (the model reads ``message`` as the
    tool's error) a tool call waiting for a person."""
    return await service.decide_approval(caller, session_id, tool_call_id, body)


def include_approvals_api(app: FastAPI) -> None:
    """Add the approvals routes to ``app``."""
    app.include_router(approvals_router)
