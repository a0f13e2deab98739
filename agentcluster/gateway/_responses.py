"""The error half of the OpenAPI document: which problem+json responses each operation declares,
so a client generated from ``/openapi.json`` knows every status it can get.

One mechanism for every operation of the native API (and of any facade whose errors are
problem+json): :func:`declare_problems` derives the statuses an operation can answer from what
the document already says it needs and accepts, and keeps those the route names itself with
:func:`problem_responses`:

- a key (a security requirement, from ``CallerDep``/``AdminDep``): 401, 403 (the policy, or a
  tenant key where the admin key is needed and the other way round), 429 (the tenant's rate)
  and 503 (the key store or the policy unreachable);
- a request body: 400 ``malformed-json``, 413 ``payload-too-large`` and 422;
- query, header or path parameters: 422 ``validation-failed``;
- whatever the route names: ``responses=problem_responses(404, 409)``.

Every one is ``application/problem+json`` with the ``Problem`` schema. Operations whose errors
have a shape of their own (the OpenAI-compatible routes) are left out by name
(:func:`operations_of` their router) and declare their errors themselves.

:func:`exact_openapi` installs it on the app, with the agents this gateway serves as the enum of
``SessionCreateIn.agent`` and of the agent path parameters (names are deployment data).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from agentcluster import api

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_SCHEMA",
    "declare_problems",
    "derived_statuses",
    "digits_at_most",
    "exact_openapi",
    "operations_of",
    "problem_responses",
]

PROBLEM_JSON = "application/problem+json"
PROBLEM_SCHEMA = "Problem"
_REF = "#/components/schemas/" + PROBLEM_SCHEMA

_WHY = {
    400: "Malformed request: the body is not JSON, or a header or cursor is not in its format",
    401: "Missing or invalid API key (with WWW-Authenticate: Bearer)",
    403: "Denied: by the policy, or the key cannot do this (tenant vs admin key)",
    404: "No such resource for this tenant",
    409: "The resource's state does not allow it",
    413: "The request body is too large",
    422: "The request is well-formed but invalid (validation-failed)",
    429: "Over the tenant's rate or open streams, with Retry-After",
    500: "The server cannot do it as configured (misconfigured)",
    503: "A dependency is unavailable, with Retry-After",
}

_FASTAPI_VALIDATION = "HTTPValidationError"
_AUTHENTICATED = (401, 403, 429, 503)
_BODY = (400, 413, 422)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries declaring each status as a problem+json answer.

    Args:
        statuses: HTTP statuses the operation answers with a problem (4xx/5xx).

    Returns:
        A dict for a route decorator's ``responses`` (or a router's).
    """
    return {status: _problem_response(status) for status in statuses}


_SECONDS = {"type": "integer", "minimum": 0}
_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {"description": "seconds until a retry may succeed", "schema": _SECONDS},
        "RateLimit-Limit": {"description": "requests per window", "schema": _SECONDS},
        "RateLimit-Remaining": {"description": "requests left in the window", "schema": _SECONDS},
        "RateLimit-Reset": {"description": "seconds until the window resets", "schema": _SECONDS},
    },
    503: {"Retry-After": {"description": "seconds until a retry may succeed", "schema": _SECONDS}},
}
"""Headers a problem of that status may carry (never required: not every cause sets them)."""


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _WHY.get(status, "An error (problem+json)"),
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def _authenticated(operation: dict[str, Any]) -> bool:
    """Whether the operation needs a key (a security requirement, none of them empty)."""
    security = operation.get("security") or []
    return bool(security) and all(requirement for requirement in security)


def derived_statuses(operation: dict[str, Any]) -> set[int]:
    """The problem statuses an operation of the document can answer by what it needs and
    accepts: a key (401, 403, 429, 503), a body (400, 413, 422), parameters (422)."""
    statuses: set[int] = set()
    if _authenticated(operation):
        statuses.update(_AUTHENTICATED)
    if "requestBody" in operation:
        statuses.update(_BODY)
    if operation.get("parameters"):
        statuses.add(422)
    return statuses


def _is_fastapis_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/" + _FASTAPI_VALIDATION))


def declare_problems(document: dict[str, Any], foreign: Collection[tuple[str, str]] = ()) -> None:
    """Give every operation of ``document`` the problem+json responses it can answer (those it
    declares itself stay as they are; FastAPI's own 422, whose shape we never send, is
    replaced).

    Args:
        document: an OpenAPI document, changed in place.
        foreign: ``(path, method)`` of operations whose errors have a shape of their own.
    """
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method.lower()) in foreign:
                continue
            responses = operation.setdefault("responses", {})
            if _is_fastapis_422(responses.get("422", {})):
                del responses["422"]
            for status in sorted(derived_statuses(operation)):
                responses.setdefault(str(status), _problem_response(status))
    if _FASTAPI_VALIDATION not in json.dumps(document.get("paths", {})):
        schemas = document.get("components", {}).get("schemas", {})
        schemas.pop(_FASTAPI_VALIDATION, None)
        schemas.pop("ValidationError", None)


def operations_of(routers: Iterable[APIRouter]) -> set[tuple[str, str]]:
    """``(path, method)`` of every route of ``routers`` (for ``foreign``)."""
    return {
        (route.path, method.lower())
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


def digits_at_most(limit: int, *, padding: str = "") -> str:
    """A regular expression matching exactly the decimal numbers 0..``limit`` written with at
    most as many digits as ``limit`` (leading zeros allowed), optionally surrounded by any
    number of the ``padding`` characters.

    >>> digits_at_most(250)
    '^(?:[0-9]{1,2}|[0-1][0-9]{2}|2[0-4][0-9]|25[0-0])$'
    """
    digits = str(limit)
    options = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    for index, digit in enumerate(digits):
        rest = len(digits) - index - 1
        if digit == "0" and index < len(digits) - 1:
            continue
        last = int(digit) - 1 if index < len(digits) - 1 else int(digit)
        if last < 0:
            continue
        tail = f"[0-9]{{{rest}}}" if rest > 1 else "[0-9]" if rest == 1 else ""
        options.append(f"{re.escape(digits[:index])}[0-{last}]{tail}")
    core = "(?:" + "|".join(options) + ")"
    pad = f"[{re.escape(padding)}]*" if padding else ""
    return f"^{pad}{core}{pad}$"


def _agent_enum(document: dict[str, Any], agents: list[str]) -> None:
    """The agents as the enum of the session's ``agent`` (required when no agent is called
    ``default``, the field's default) and of every ``{name}`` of the agents' paths."""
    schemas = document.get("components", {}).get("schemas", {})
    created = schemas.get("SessionCreateIn")
    if created is not None and "agent" in created.get("properties", {}):
        field = created["properties"]["agent"]
        field["enum"] = agents
        if field.get("default") not in agents:
            field.pop("default", None)
            created["required"] = sorted({*created.get("required", []), "agent"})
    for path, operations in document.get("paths", {}).items():
        if not path.startswith("/v1/agents/"):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "name":
                    parameter["schema"] = {**parameter["schema"], "enum": agents}


def exact_openapi(
    app: FastAPI, agents: Collection[str], foreign: Collection[tuple[str, str]] = ()
) -> None:
    """Make ``app.openapi()`` return the finished document: every operation's problems
    (:func:`declare_problems`), the ``Problem`` schema, the agents as enums. Built once, then
    cached like FastAPI's own.

    Args:
        app: the gateway app.
        agents: the names of the agents this gateway serves.
        foreign: ``(path, method)`` of operations whose errors have a shape of their own
            (:func:`operations_of` their routers).
    """
    build = app.openapi
    names = sorted(agents)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components[PROBLEM_SCHEMA] = api.Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        declare_problems(document, foreign)
        if names:
            _agent_enum(document, names)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
