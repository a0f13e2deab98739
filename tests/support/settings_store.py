"""An in-memory :class:`~agentcluster.providers.SettingsStore` for unit tests: the same
compare-and-set contract as the Redis and SQL adapters, plus a switch to make it fail."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from agentcluster.errors import ConflictError, DependencyUnavailable
from agentcluster.providers import StoredDocument


class MemorySettingsStore:
    """Keeps the document in a dict (copied in and out, as a real store serializes it)."""

    description = "memory"

    def __init__(self) -> None:
        self.document = StoredDocument(version=0, data={})
        self.down = False
        self.reads = 0
        self.version_checks = 0
        self.closed = False

    def raw(self) -> str:
        """The stored document as the JSON text a real store would hold."""
        return json.dumps(self.document.data)

    def _check(self) -> None:
        if self.down:
            raise DependencyUnavailable("memory", "the test switched the store off")

    async def version(self) -> int:
        self._check()
        self.version_checks += 1
        return self.document.version

    async def read(self) -> StoredDocument:
        self._check()
        self.reads += 1
        return StoredDocument(
            version=self.document.version,
            data=copy.deepcopy(self.document.data),
            updated_at=self.document.updated_at,
        )

    async def write(self, data: dict[str, Any], expected_version: int) -> int:
        self._check()
        if self.document.version != expected_version:
            raise ConflictError(f"stored version {self.document.version}, not {expected_version}")
        self.document = StoredDocument(
            version=expected_version + 1,
            data=json.loads(json.dumps(data)),
            updated_at=datetime.now(UTC),
        )
        return self.document.version

    async def aclose(self) -> None:
        self.closed = True
