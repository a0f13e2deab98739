"""Policy decisions from an OPA server over its REST API."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from agentcluster.policy._bundle import BATCH_ENTRYPOINT, ENTRYPOINT
from agentcluster.policy._engine import RegoPolicyEngine
from agentcluster.policy._inputs import decision_from_result
from agentcluster.tools import PolicyDecision

__all__ = ["OpaServerPolicy"]


class OpaServerPolicy(RegoPolicyEngine):
    """Asks an OPA server: ``POST {url}/v1/data/agentcluster/authz/decision``.

    One keep-alive :class:`httpx.AsyncClient` serves every call; use the engine from one event
    loop. Unreachable, slow (past ``timeout_s``), non-200 or malformed answers deny, with a reason
    naming the server; :meth:`decide` never raises for them.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8181``.
        timeout_s: the limit for one decision (connect, write, read together).
    """

    engine = "opa"

    def __init__(
        self,
        url: str,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._decision_url = f"{self.url}/v1/data/{ENTRYPOINT}"
        self._batch_url = f"{self.url}/v1/data/{BATCH_ENTRYPOINT}"
        self._source = f"OPA at {self.url}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30.0),
            # A decision must not depend on the process's proxy settings.
            trust_env=False,
        )

    async def decide(self, policy_input: Mapping[str, Any]) -> PolicyDecision:
        """Ask the server for the decision on ``policy_input``; deny when it cannot answer."""
        result = await self._ask(self._decision_url, policy_input)
        if isinstance(result, PolicyDecision):
            return result
        return decision_from_result(result, engine=self.engine, source=self._source)

    async def _evaluate_batch(self, batch: dict[str, Any]) -> object:
        return await self._ask(self._batch_url, batch)

    async def _ask(self, url: str, policy_input: Mapping[str, Any]) -> object:
        """The ``result`` of evaluating ``url`` on ``policy_input`` (None when undefined), or a
        denial naming why the server gave none."""
        try:
            response = await self._client.post(url, json={"input": policy_input})
        except httpx.TimeoutException as exc:
            return self._failure(
                f"did not answer within {self.timeout_s:g} s ({type(exc).__name__})"
            )
        except httpx.HTTPError as exc:
            return self._failure(f"unreachable: {type(exc).__name__}")
        except (TypeError, ValueError) as exc:
            return self._failure(f"was not asked: the input is not JSON ({exc})")
        if response.status_code != 200:
            return self._failure(f"answered HTTP {response.status_code}: {_error_text(response)}")
        try:
            body = response.json()
        except ValueError:
            return self._failure("answered with a body that is not JSON")
        return body.get("result") if isinstance(body, dict) else body

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    def _failure(self, problem: str) -> PolicyDecision:
        return PolicyDecision(
            allowed=False,
            reason=f"policy engine ({self._source}) {problem}",
            engine=self.engine,
            failed=True,
        )

    def __repr__(self) -> str:
        return f"OpaServerPolicy(url={self.url!r}, timeout_s={self.timeout_s!r})"


def _error_text(response: httpx.Response, limit: int = 200) -> str:
    """OPA's error message (``{"code": ..., "message": ...}``) or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        text = str(body["message"])
    else:
        text = response.text if response.text else json.dumps(body)
    return text if len(text) <= limit else text[: limit - 3] + "..."
