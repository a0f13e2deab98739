"""A session's schedules over HTTP: messages it gets on a cron schedule.

``POST /v1/sessions/{id}/schedules`` ``{cron, content, timezone?, missed?}`` adds one (201);
``GET`` lists them with their next tick; ``DELETE .../schedules/{schedule_id}`` removes one (204).
Each tick is submitted like a message (an idempotency key derived from the schedule and the
tick: once, whichever ticker sends it); see :mod:`agentcluster.schedules`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Response

from agentcluster import api
from agentcluster.gateway._callers import CallerDep, ServiceDep
from agentcluster.gateway._responses import problem_responses

__all__ = ["include_schedules_api", "schedules_router"]

SessionId = Annotated[
    str, Path(description="a session's id", json_schema_extra={"pattern": api.ID_PATTERN})
]
ScheduleId = Annotated[
    str, Path(description="a schedule's id", json_schema_extra={"pattern": api.ID_PATTERN})
]

schedules_router = APIRouter(prefix="/v1/sessions/{session_id}/schedules", tags=["schedules"])


@schedules_router.post(
    "",
    status_code=201,
    response_model=api.ScheduleOut,
    responses=problem_responses(404, 409, 422),
)
async def create_schedule(
    session_id: SessionId, body: api.ScheduleIn, caller: CallerDep, service: ServiceDep
) -> api.ScheduleOut:
    return await service.create_schedule(caller, session_id, body)


@schedules_router.get("", response_model=api.ScheduleList, responses=problem_responses(404))
async def list_schedules(
    session_id: SessionId, caller: CallerDep, service: ServiceDep
) -> api.ScheduleList:
    return await service.schedules(caller, session_id)


@schedules_router.delete(
    "/{schedule_id}", status_code=204, response_class=Response, responses=problem_responses(404)
)
async def delete_schedule(
    session_id: SessionId, schedule_id: ScheduleId, caller: CallerDep, service: ServiceDep
) -> Response:
    await service.delete_schedule(caller, session_id, schedule_id)
    return Response(status_code=204)


def include_schedules_api(app: FastAPI) -> None:
    """Add the schedules routes to ``app``."""
    app.include_router(schedules_router)
