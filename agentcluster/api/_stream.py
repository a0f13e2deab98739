"""Stream items besides events: live text fragments and the overflow notice.

They live in the API package (not the runtime) so the client can parse them without importing
the runtime's dependencies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from agentcluster.events import Event

__all__ = ["Delta", "Overflow", "StreamItem"]


class Delta(BaseModel):
    """A fragment of streamed model output; live only, never persisted (the step's
    ``llm.completed`` event carries the whole text)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["delta"] = "delta"
    session_id: str
    turn_id: str
    step: int
    index: int
    text: str


class Overflow(BaseModel):
    """Sent instead of items a slow subscriber missed; it should resubscribe after its last seq."""

    model_config = ConfigDict(frozen=True)

    type: Literal["overflow"] = "overflow"
    session_id: str


StreamItem = Event | Delta | Overflow
