"""The approvals HTTP contract: one body shape per decision, validated as documented."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from agentcluster.api import ApprovalDecisionIn

SCHEMA = ApprovalDecisionIn.model_json_schema()

BODIES: list[tuple[dict[str, Any], bool]] = [
    ({"decision": "approve"}, True),
    ({"decision": "approve", "message": "fine"}, True),
    ({"decision": "reject", "message": None}, True),
    ({"decision": "edit", "arguments": {"url": "https://a.test/"}}, True),
    ({"decision": "edit"}, False),
    ({"decision": "edit", "arguments": None}, False),
    ({"decision": "edit", "arguments": [1]}, False),
    ({"decision": "approve", "arguments": None}, True),
    ({"decision": "reject", "arguments": {"x": 1}}, False),
    ({"decision": "maybe"}, False),
    ({"decision": "approve", "extra": 1}, False),
]


@pytest.mark.parametrize(("body", "valid"), BODIES)
def test_the_document_and_the_validation_agree(body: dict[str, Any], valid: bool) -> None:
    documented = jsonschema.Draft202012Validator(SCHEMA).is_valid(body)
    try:
        ApprovalDecisionIn.model_validate(body)
        accepted = True
    except ValidationError:
        accepted = False
    assert documented == accepted == valid


def test_edit_arguments_are_bounded_like_metadata() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(20):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ValidationError, match="levels deep"):
        ApprovalDecisionIn(decision="edit", arguments=deep)
