"""The approvals part of the HTTP API v1 contract: tool calls that wait for a person.

A policy that answers ``ask`` for a tool call pauses its turn (``turn.awaiting_approval``);
``GET /v1/sessions/{id}/approvals`` lists what waits and ``POST .../approvals/{tool_call_id}``
decides one: ``approve``, ``edit`` (run with other ``arguments``) or ``reject`` (the model reads
``message`` as the tool's error). The turn resumes once each of its waiting calls is decided.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from agentcluster.api._models import MAX_CONTENT_CHARS, _In, _Out, check_metadata
from agentcluster.domain import Approval, ApprovalDecision, ApprovalStatus

__all__ = ["ApprovalDecisionIn", "ApprovalList", "ApprovalOut"]


class ApprovalDecisionIn(_In):
    """``POST /v1/sessions/{id}/approvals/{tool_call_id}``."""

    decision: ApprovalDecision
    arguments: dict[str, Any] | None = Field(
        default=None,
        description=(
            "edit only (and required there): the arguments the tool runs with instead, a JSON "
            "object of at most 16 KiB and 16 levels; the policy decides them again"
        ),
    )
    message: str | None = Field(
        default=None,
        max_length=MAX_CONTENT_CHARS,
        description="a note for the record; on reject, what the model reads as the tool's error",
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """One shape per decision (``edit`` requires ``arguments``, the others take none), as
        the validator below enforces: the document says exactly what is accepted."""
        fields = handler(core_schema)
        fields = handler.resolve_ref_schema(fields)
        properties = fields["properties"]
        message = properties["message"]
        arguments = {k: v for k, v in properties["arguments"].items() if k != "default"}
        arguments.pop("anyOf", None)
        arguments.update({"type": "object", "additionalProperties": True})

        def shape(decision: str, **more: Any) -> dict[str, Any]:
            return {
                "type": "object",
                "properties": {"decision": {"type": "string", "const": decision}, **more},
                "required": ["decision", *(["arguments"] if decision == "edit" else [])],
                "additionalProperties": False,
            }

        no_arguments = {"type": "null", "description": "edit only"}
        return {
            "title": "ApprovalDecisionIn",
            "description": fields.get("description", ""),
            "oneOf": [
                shape("approve", arguments=no_arguments, message=message),
                shape("edit", arguments=arguments, message=message),
                shape("reject", arguments=no_arguments, message=message),
            ],
        }

    @model_validator(mode="after")
    def _arguments_for_edit(self) -> ApprovalDecisionIn:
        if self.decision == "edit":
            if self.arguments is None:
                raise ValueError("edit needs the arguments the tool runs with instead")
            check_metadata(self.arguments)
        elif self.arguments is not None:
            raise ValueError(f"arguments are only taken with edit, not {self.decision}")
        return self


class ApprovalOut(_Out):
    tool_call_id: str
    session_id: str
    turn_id: str
    tool: str
    arguments: dict[str, Any]
    reason: str
    status: ApprovalStatus
    decisions: list[ApprovalDecision]
    expires_at: datetime | None = None
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    edited_arguments: dict[str, Any] | None = None
    message: str | None = None

    @classmethod
    def of(cls, approval: Approval) -> ApprovalOut:
        return cls(
            tool_call_id=approval.tool_call_id,
            session_id=approval.session_id,
            turn_id=approval.turn_id,
            tool=approval.tool,
            arguments=approval.arguments,
            reason=approval.reason,
            status=approval.status,
            decisions=list(approval.decisions),
            expires_at=approval.expires_at,
            created_at=approval.created_at,
            decided_at=approval.decided_at,
            decided_by=approval.decided_by,
            edited_arguments=approval.edited_arguments,
            message=approval.message,
        )


class ApprovalList(_Out):
    items: list[ApprovalOut]
