"""Python client of the agentcluster HTTP API v1.

``Client`` blocks (``httpx.Client``); ``AsyncClient`` has the same methods as coroutines and async
iterators (``httpx.AsyncClient``). Both execute the same request specs, so they cannot drift::

    from agentcluster.client import Client

    with Client("http://127.0.0.1:21016", api_key="ac_...") as client:
        session = client.create_session(agent="default")
        turn = client.ask(session.session_id, "What is 2 + 2?")
        for item in client.stream_turn(session.session_id, "And times 3?"):
            ...  # agentcluster.events events (with ``seq``) and live ``Delta`` text fragments

Request and response bodies are the models of :mod:`agentcluster.api`; errors are
:class:`ApiError` subclasses (problem+json answers) and :class:`ConnectionFailed`.
"""

from agentcluster.api import Delta
from agentcluster.client._async import AsyncClient
from agentcluster.client._calls import DEFAULT_URL, RetryPolicy
from agentcluster.client._errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    error_from_problem,
)
from agentcluster.client._handle import HandleClient, connect
from agentcluster.client._sse import ServerSentEvent, SSEDecoder, StreamItem
from agentcluster.client._sync import Client

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Delta",
    "Forbidden",
    "HandleClient",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "RateLimited",
    "RetryPolicy",
    "SSEDecoder",
    "ServerError",
    "ServerSentEvent",
    "StreamItem",
    "Unauthorized",
    "Unavailable",
    "connect",
    "error_from_problem",
]
