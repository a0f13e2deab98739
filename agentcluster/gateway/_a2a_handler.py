"""The A2A request handler: a2a-sdk's :class:`RequestHandler` port implemented over
:class:`GatewayService` (its JSON-RPC dispatcher parses, validates and answers; this does the
work).

Each call reads its :class:`A2ACall` (the caller the route authenticated, the service and the
agent of the endpoint) from the SDK's call context. A message without ``contextId`` opens a
session of the agent; with one it continues that session (of the caller's tenant and of this
agent, else TaskNotFound). The message's ``messageId`` is its idempotency key: a resend to the
same context returns the first turn. A blocking send or a stream holds one of the tenant's
open-stream slots, as ``?wait=true`` does.

A message naming a ``taskId`` answers a task in ``input-required`` (its turn's tool calls wait
for a person): its decisions (see :func:`~._a2a_tasks.approval_decisions`) are made through the
gateway's approvals and the task goes on, answered (or streamed) to its next end or pause; any
other task takes no further message.

Errors: what the caller got wrong is an A2A error (TaskNotFound for another tenant's task or
context, InvalidParams, ...). What A2A has no code for (a policy denial, a rate or stream limit,
an unreachable dependency) is left on the call for the route to answer as HTTP problem+json
(403, 429 with Retry-After, 503), as for the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler, validate_request_params
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE, MAX_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import (
    A2AError,
    ExtendedAgentCardNotConfiguredError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)

from agentcluster import api
from agentcluster import events as ev
from agentcluster.domain import Session, Submission
from agentcluster.errors import AgentClusterError, NotFoundError, UserError
from agentcluster.gateway._a2a_tasks import (
    TERMINAL,
    StreamEvent,
    TaskStream,
    TaskView,
    approval_decisions,
    message_text,
    task_of,
    task_state,
    views_of_session,
)
from agentcluster.gateway._approval_turns import (
    Resumption,
    decide,
    follow_resumed,
    wait_resumed,
    waiting_calls,
)
from agentcluster.gateway._problems import ProblemError
from agentcluster.gateway._service import Caller, GatewayService
from agentcluster.gateway._streams import release_shielded
from agentcluster.limits import StreamLease
from agentcluster.runtime import StreamItem

__all__ = ["A2ACall", "GatewayRequestHandler", "decode_page_token", "encode_page_token"]

log = logging.getLogger(__name__)

CALL_KEY = "agentcluster"
"""Where the call context's state holds the :class:`A2ACall`."""
CANCEL_WAIT_S = 5.0
EVENTS_PAGE = 500
AGENT_CACHE_SIZE = 10_000
_HTTP_STATUSES = (401, 403, 429)


@dataclass
class A2ACall:
    """One JSON-RPC request: who calls which agent, and what the route must do afterwards."""

    service: GatewayService
    caller: Caller
    agent: str
    lease: StreamLease | None = None
    """The open-stream slot a stream holds until its response ends (released by the route)."""
    http_error: Exception | None = None
    """An error to answer as HTTP problem+json instead of the JSON-RPC error it became."""


def _call(context: ServerCallContext) -> A2ACall:
    call = context.state.get(CALL_KEY)
    if not isinstance(call, A2ACall):
        raise InternalError("the request reached the A2A handler without a caller")
    return call


@contextmanager
def _mapped(call: A2ACall) -> Iterator[None]:
    """Our errors as A2A errors (see the module's docstring)."""
    try:
        yield
    except A2AError:
        raise
    except NotFoundError as exc:
        raise TaskNotFoundError(exc.message) from None
    except UserError as exc:
        if exc.status in _HTTP_STATUSES:
            call.http_error = exc
            raise InternalError(exc.message) from None
        raise InvalidParamsError(exc.message) from None
    except (ProblemError, AgentClusterError) as exc:  # 403, outages: the route answers them
        call.http_error = exc
        raise InternalError("the request could not be served; see the HTTP status") from None
    except Exception:  # a bug: an A2A internal error, logged here (the details stay here)
        log.exception("A2A request failed")
        raise InternalError("internal error") from None


def _idempotency_key(message_id: str) -> str | None:
    """The idempotency key of an A2A message id (bounded and printable whatever the id)."""
    if not message_id:
        return None
    return "a2a-" + hashlib.sha256(message_id.encode()).hexdigest()[:40]


def encode_page_token(cursor: str | None, skip: int) -> str:
    """A ListTasks page token: the sessions cursor the page starts at and the tasks to skip
    in that first session."""
    raw = json.dumps({"c": cursor, "s": skip}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str | None, int]:
    """The cursor and skip of a page token (InvalidParams for anything else)."""
    if not token:
        return None, 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor, skip = data["c"], data["s"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidParamsError("pageToken is not a token this server gave") from None
    if not (cursor is None or isinstance(cursor, str)) or not isinstance(skip, int) or skip < 0:
        raise InvalidParamsError("pageToken is not a token this server gave")
    return cursor, skip


class _Tasks:
    """Reads tasks of the caller's tenant from the store (scoped to the endpoint's agent)."""

    def __init__(self, call: A2ACall, tenant_id: str) -> None:
        self.call = call
        self.tenant_id = tenant_id
        self.store = call.service.runtime.store

    async def session(self, session_id: str) -> Session:
        """The session of the caller's tenant (TaskNotFound otherwise, or of another agent)."""
        try:
            session = await self.store.get_session(self.tenant_id, session_id)
        except NotFoundError:
            raise TaskNotFoundError(f"context {session_id} not found") from None
        if session.agent != self.call.agent:
            raise TaskNotFoundError(f"context {session_id} belongs to another agent")
        return session

    async def views(self, session_id: str, after_seq: int = 0) -> list[TaskView]:
        """The session's tasks from its events (after ``after_seq``)."""
        events: list[ev.Event] = []
        while True:
            page = await self.store.list_events(
                self.tenant_id, session_id, after_seq=after_seq, limit=EVENTS_PAGE
            )
            events.extend(page)
            if len(page) < EVENTS_PAGE:
                return views_of_session(events)
            after_seq = page[-1].seq

    async def view(self, turn_id: str) -> TaskView:
        try:
            turn = await self.store.get_turn(self.tenant_id, turn_id)
        except NotFoundError:
            raise TaskNotFoundError(f"task {turn_id} not found") from None
        await self.session(turn.session_id)
        found = [v for v in await self.views(turn.session_id) if v.turn_id == turn_id]
        if not found:
            raise TaskNotFoundError(f"task {turn_id} not found")
        return found[0]


def _history_length(params: GetTaskRequest | ListTasksRequest) -> int | None:
    return params.history_length if params.HasField("history_length") else None


def _wanted(view: TaskView, params: ListTasksRequest) -> bool:
    if params.status != TaskState.TASK_STATE_UNSPECIFIED and task_state(view.status) != (
        params.status
    ):
        return False
    if params.HasField("status_timestamp_after") and view.updated_at is not None:
        return view.updated_at > params.status_timestamp_after.ToDatetime(view.updated_at.tzinfo)
    return True


class GatewayRequestHandler(RequestHandler):
    """A2A operations on the gateway's sessions and turns (see the module's docstring).

    It remembers the agent of the contexts it has checked, per tenant: a session's agent never
    changes, and submitting a message checks the session's tenant again, so a continued context
    costs no session read (the same saving as the policy's cached decisions).
    """

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], str] = {}

    # -- messages ---------------------------------------------------------------------------

    async def _session_of(self, call: A2ACall, message: Message) -> str:
        """The message's context (a session of the caller's tenant and this agent), or a new
        session when it names none."""
        if not message.context_id:
            body = api.SessionCreateIn(agent=call.agent, metadata={"a2a": "message"})
            return (await call.service.create_session(call.caller, body)).session_id
        tenant_id = await call.service.authorize(call.caller, "session.read")
        key = (tenant_id, message.context_id)
        agent = self._agents.get(key)
        if agent is None:
            agent = (await _Tasks(call, tenant_id).session(message.context_id)).agent
            self._remember(key, agent)
        if agent != call.agent:
            raise TaskNotFoundError(f"context {message.context_id} belongs to another agent")
        return message.context_id

    def _remember(self, key: tuple[str, str], agent: str) -> None:
        if len(self._agents) >= AGENT_CACHE_SIZE:
            self._agents.clear()
        self._agents[key] = agent

    async def _submit(
        self, call: A2ACall, params: SendMessageRequest, notify: bool
    ) -> tuple[str, str, Submission]:
        content = message_text(params.message)
        session_id = await self._session_of(call, params.message)
        key = _idempotency_key(params.message.message_id)
        submission = await call.service.submit(
            call.caller, session_id, api.MessageIn(content=content), key, notify=notify
        )
        return session_id, content, submission

    @validate_request_params
    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        """SendMessage: the turn's task once it has ended (``returnImmediately``: at once,
        submitted)."""
        call = _call(context)
        with _mapped(call):
            if params.message.task_id:
                return await self._answer_task(call, params)
            if params.configuration.return_immediately:
                session_id, content, submission = await self._submit(call, params, notify=True)
                view = TaskView(
                    submission.turn_id, session_id, "queued", submission.message_id, content
                )
                return task_of(view)
            return await self._send_and_wait(call, params)

    async def _send_and_wait(self, call: A2ACall, params: SendMessageRequest) -> Task:
        history = _history_length_of(params)
        lease = await call.service.open_stream(call.caller)  # before the commit, as ?wait=true
        try:
            session_id, _content, submission = await self._submit(call, params, notify=False)
            await call.service.wait(call.caller, session_id, submission)
        finally:
            await release_shielded(lease)
        tasks = _Tasks(call, call.caller.tenant())
        after = max(submission.seq - 1, 0)
        found = [v for v in await tasks.views(session_id, after) if v.turn_id == submission.turn_id]
        if not found:
            raise TaskNotFoundError(f"task {submission.turn_id} not found")
        return task_of(found[0], history)

    # -- answering a task that waits for approvals -----------------------------------------

    async def _waiting_task(self, call: A2ACall, message: Message) -> tuple[_Tasks, TaskView]:
        """The task a message names, which must wait for approvals."""
        tenant_id = await call.service.authorize(call.caller, "session.read")
        tasks = _Tasks(call, tenant_id)
        view = await tasks.view(message.task_id)
        if message.context_id and message.context_id != view.session_id:
            raise InvalidParamsError(f"task {view.turn_id} is of context {view.session_id}")
        if view.status != "awaiting_approval":
            state = "has ended" if view.status in TERMINAL else "is still running"
            raise UnsupportedOperationError(
                f"task {message.task_id} {state}; a task takes a message only while it waits "
                f"for approvals (input-required): send the next one with contextId "
                f"{view.session_id} and no taskId"
            )
        return tasks, view

    async def _decide(self, call: A2ACall, message: Message) -> tuple[_Tasks, Resumption]:
        tasks, view = await self._waiting_task(call, message)
        decisions = approval_decisions(message, waiting_calls(view.events))
        return tasks, await decide(call.service, call.caller, view.session_id, decisions)

    async def _answer_task(self, call: A2ACall, params: SendMessageRequest) -> Task:
        """SendMessage to an input-required task: decide, then the task once its turn ended or
        paused again (``returnImmediately``: as it stands after the decisions)."""
        tasks, resumption = await self._decide(call, params.message)
        if resumption.resumed and not params.configuration.return_immediately:
            await wait_resumed(call.service, call.caller, resumption)
        return task_of(await tasks.view(resumption.turn_id), _history_length_of(params))

    async def _answer_task_streamed(
        self, call: A2ACall, params: SendMessageRequest
    ) -> tuple[Task, str, str, StreamItem | None, AsyncIterator[StreamItem] | None]:
        """SendStreamingMessage to an input-required task: decide, then the task as it stands
        and its resumed turn's items (none while calls still wait)."""
        call.lease = await call.service.open_stream(call.caller)
        tasks, resumption = await self._decide(call, params.message)
        if not resumption.resumed:
            return task_of(await tasks.view(resumption.turn_id)), "", "", None, None
        items = follow_resumed(call.service, call.caller, resumption)
        first = await anext(items, None)
        task = task_of(await tasks.view(resumption.turn_id))
        return task, resumption.turn_id, resumption.session_id, first, items

    @validate_request_params
    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[StreamEvent]:
        """SendStreamingMessage: the task (submitted), then its updates until it ends (or
        pauses: ``input-required``)."""
        call = _call(context)
        if params.message.task_id:
            with _mapped(call):
                task, turn_id, session_id, first, resumed = await self._answer_task_streamed(
                    call, params
                )
            yield task
            if resumed is not None:
                async for event in _task_events(turn_id, session_id, first, resumed):
                    yield event
            return
        with _mapped(call):
            call.lease = await call.service.open_stream(call.caller)
            session_id, content, submission = await self._submit(call, params, notify=False)
            items = call.service.turn_items(call.caller, session_id, submission)
            first = await anext(items, None)  # subscribed and woken before the response starts
        view = TaskView(submission.turn_id, session_id, "queued", submission.message_id, content)
        yield task_of(view)
        async for event in _task_events(submission.turn_id, session_id, first, items):
            yield event

    # -- tasks ------------------------------------------------------------------------------

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        """GetTask: the task of a turn of the caller's tenant (TaskNotFound otherwise)."""
        call = _call(context)
        with _mapped(call):
            tenant_id = await call.service.authorize(call.caller, "session.read")
            view = await _Tasks(call, tenant_id).view(params.id)
        return task_of(view, _history_length(params))

    @validate_request_params
    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task:
        """CancelTask: cancel a queued or running turn and answer its task once it has ended
        (or after CANCEL_WAIT_S, as it stands); an ended task is TaskNotCancelable."""
        call = _call(context)
        with _mapped(call):
            tenant_id = await call.service.authorize(call.caller, "session.read")
            tasks = _Tasks(call, tenant_id)
            view = await tasks.view(params.id)
            if view.status in TERMINAL:
                raise TaskNotCancelableError(f"task {params.id} has ended ({view.status})")
            await call.service.cancel(call.caller, view.session_id, view.turn_id)
            submission = Submission(message_id=view.message_id, turn_id=view.turn_id, created=False)
            await call.service.runtime.wait_turn(
                tenant_id, view.session_id, submission, CANCEL_WAIT_S
            )
            return task_of(await tasks.view(params.id))

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[StreamEvent]:
        """SubscribeToTask: the task as it stands, then its updates until it ends (an ended
        task cannot be subscribed to: UnsupportedOperation)."""
        call = _call(context)
        with _mapped(call):
            tenant_id = await call.service.authorize(call.caller, "session.read")
            tasks = _Tasks(call, tenant_id)
            view = await tasks.view(params.id)
            if view.status in TERMINAL:
                raise UnsupportedOperationError(f"task {params.id} has ended ({view.status})")
            call.lease = await call.service.open_stream(call.caller)
            items = call.service.runtime.stream(
                tenant_id, view.session_id, after_seq=view.last_seq, until_turn=view.turn_id
            )
        yield task_of(view)
        async for event in _task_events(view.turn_id, view.session_id, None, items):
            yield event

    @validate_request_params
    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        """ListTasks: the tasks of the caller's sessions with this agent, newest session first
        (a context's tasks in the order they were sent); filters by context, state and time."""
        call = _call(context)
        with _mapped(call):
            size = params.page_size if params.HasField("page_size") else 0
            if size < 0 or size > MAX_LIST_TASKS_PAGE_SIZE:
                raise InvalidParamsError(f"pageSize must be 1 to {MAX_LIST_TASKS_PAGE_SIZE}")
            size = size or DEFAULT_LIST_TASKS_PAGE_SIZE
            tenant_id = await call.service.authorize(call.caller, "session.read")
            views, token = await _list(_Tasks(call, tenant_id), params, size)
        history = _history_length(params)
        tasks = [task_of(view, history) for view in views]
        return ListTasksResponse(
            tasks=tasks, next_page_token=token or "", page_size=size, total_size=len(tasks)
        )

    # -- not offered ------------------------------------------------------------------------

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError


def _history_length_of(params: SendMessageRequest) -> int | None:
    configuration = params.configuration
    return configuration.history_length if configuration.HasField("history_length") else None


async def _task_events(
    turn_id: str,
    session_id: str,
    first: StreamItem | None,
    items: AsyncIterator[StreamItem],
) -> AsyncGenerator[StreamEvent]:
    """The A2A events of a turn's stream items (``first`` already taken from ``items``; items
    of other turns are left out)."""
    stream = TaskStream(turn_id, session_id)
    if first is not None and getattr(first, "turn_id", turn_id) == turn_id:
        for event in stream.events(first):
            yield event
    async for item in items:
        if getattr(item, "turn_id", turn_id) == turn_id:
            for event in stream.events(item):
                yield event


async def _list(
    tasks: _Tasks, params: ListTasksRequest, size: int
) -> tuple[list[TaskView], str | None]:
    """One page of tasks and the token of the next (None at the end)."""
    cursor, skip = decode_page_token(params.page_token)
    if params.context_id:
        await tasks.session(params.context_id)
        views = [v for v in await tasks.views(params.context_id) if _wanted(v, params)]
        more = skip + size < len(views)
        return views[skip : skip + size], encode_page_token(None, skip + size) if more else None
    found: list[TaskView] = []
    while len(found) < size:
        page = await tasks.store.list_sessions(tasks.tenant_id, limit=1, cursor=cursor)
        if not page.items:
            return found, None
        session = page.items[0]
        listed: list[TaskView] = []
        if session.agent == tasks.call.agent:
            listed = [v for v in await tasks.views(session.session_id) if _wanted(v, params)]
        taken = listed[skip : skip + size - len(found)]
        found.extend(taken)
        if skip + len(taken) < len(listed):  # the page is full inside this session
            return found, encode_page_token(cursor, skip + len(taken))
        if page.next_cursor is None:
            return found, None
        cursor, skip = page.next_cursor, 0
    return found, encode_page_token(cursor, 0)
