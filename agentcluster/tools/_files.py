"""Session workspaces and the workspace file tools (LangChain's FileManagementToolkit, wrapped).

A session's workspace is ``<workspace_root>/<tenant_id>/<session_id>``, created on first use. The
file tools are LangChain community's file-management tools rooted at that directory, exposed
under our names with our argument names. LangChain refuses paths that resolve outside the root
(``../``, absolute paths, symlinks pointing out); its tools answer errors as ``"Error: ..."``
strings, which become :class:`~agentcluster.errors.ToolError` here. They do blocking file I/O,
so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcluster.datadir import make_private_dir
from agentcluster.errors import ToolError
from agentcluster.llm import ToolSchema
from agentcluster.tools._base import ToolInvocation
from agentcluster.tools._workspace_archive import WorkspaceQuota, workspace_usage

with warnings.catch_warnings():
    # langchain-community warns at import that it is "being sunset"; the toolkit still works.
    warnings.filterwarnings("ignore", message=".*langchain-community.*", category=Warning)
    from langchain_community.agent_toolkits.file_management.toolkit import (
        FileManagementToolkit,
    )
    from langchain_core.tools import BaseTool

__all__ = ["FileTool", "SessionWorkspaces", "file_tools"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_MAX_READ_CHARS = 200_000


class SessionWorkspaces:
    """Maps (tenant, session) to a workspace directory under ``root``, creating it on demand.

    Each workspace has a quota (bytes of files, number of entries) that the file tools and
    python_exec hold it to, and is removed once unused for ``retention_s`` (:meth:`sweep`): a
    closed session's files go at most that long after its last tool call.

    Args:
        root: the directory that holds every tenant's workspaces.
        quota: the limits of one workspace; unlimited if omitted.
        retention_s: how long an unused workspace is kept; forever if omitted.
    """

    def __init__(
        self, root: Path, quota: WorkspaceQuota | None = None, retention_s: float | None = None
    ) -> None:
        self._root = root
        self._quota = quota
        self._retention_s = retention_s

    @property
    def root(self) -> Path:
        return self._root

    @property
    def quota(self) -> WorkspaceQuota | None:
        return self._quota

    def path(self, tenant_id: str, session_id: str) -> Path:
        """The workspace directory of a session (not created).

        Raises:
            ToolError: an id is not a plain name (so it cannot point elsewhere).
        """
        return (
            self._root / _checked_id("tenant_id", tenant_id) / _checked_id("session_id", session_id)
        )

    async def open(self, tenant_id: str, session_id: str) -> Path:
        """The workspace directory of a session, created (mode 0700, parents too) if needed,
        and marked used now (its retention counts from here)."""
        path = self.path(tenant_id, session_id)
        await asyncio.to_thread(_open_private_dir, path)
        return path

    def sweep(self, now: float | None = None) -> int:
        """Remove every workspace unused for the retention period, and leftovers of
        interrupted python_exec runs; returns how many workspaces were removed (blocking)."""
        if self._retention_s is None:
            return 0
        cutoff = (time.time() if now is None else now) - self._retention_s
        removed = 0
        for tenant in _subdirs(self._root):
            for workspace in _subdirs(tenant):
                if _mtime(workspace) < cutoff:
                    shutil.rmtree(workspace, ignore_errors=True)
                    removed += not workspace.name.startswith(".")
            with contextlib.suppress(OSError):
                tenant.rmdir()  # only if it is empty now
        return removed

    async def check_quota(self, workspace: Path, add_bytes: int, add_entries: int) -> None:
        """Refuse a change that would take ``workspace`` past its quota.

        Raises:
            ToolError: the workspace would hold more bytes or entries than its quota allows.
        """
        if self._quota is None:
            return
        used, entries = await asyncio.to_thread(workspace_usage, workspace)
        quota = self._quota
        if used + add_bytes > quota.max_bytes or entries + add_entries > quota.max_files:
            raise ToolError(
                f"the session workspace quota ({quota.max_bytes} bytes, {quota.max_files} "
                f"entries) does not allow this: it holds {used} bytes in {entries} entries"
            )


def _open_private_dir(path: Path) -> None:
    make_private_dir(path)
    os.utime(path)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [entry for entry in folder.iterdir() if entry.is_dir() and not entry.is_symlink()]
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _checked_id(name: str, value: str) -> str:
    if not _SAFE_ID.match(value) or value in {".", ".."} or ".." in value:
        raise ToolError(f"{name} {value!r} cannot name a workspace directory")
    return value


# Our tool name -> (LangChain tool name, description, our parameters, our arg -> LangChain arg).
@dataclass(frozen=True)
class _Spec:
    langchain_name: str
    description: str
    properties: dict[str, Any]
    required: tuple[str, ...]
    arg_names: dict[str, str]


_PATH = {"type": "string", "description": "Path relative to the workspace."}
_SPECS: dict[str, _Spec] = {
    "file_read": _Spec(
        "read_file", "Read a UTF-8 text file from the workspace.", {"path": _PATH}, ("path",),
        {"path": "file_path"},
    ),
    "file_write": _Spec(
        "write_file",
        "Write text to a file in the workspace (replacing it unless append is true).",
        {"path": _PATH, "text": {"type": "string"}, "append": {"type": "boolean"}},
        ("path", "text"),
        {"path": "file_path", "text": "text", "append": "append"},
    ),
    "file_list": _Spec(
        "list_directory",
        "List the files and directories in a workspace directory ('.' by default).",
        {"path": _PATH}, (), {"path": "dir_path"},
    ),
    "file_delete": _Spec(
        "file_delete", "Delete a file in the workspace.", {"path": _PATH}, ("path",),
        {"path": "file_path"},
    ),
    "file_copy": _Spec(
        "copy_file", "Copy a file within the workspace.",
        {"source": _PATH, "destination": _PATH}, ("source", "destination"),
        {"source": "source_path", "destination": "destination_path"},
    ),
    "file_move": _Spec(
        "move_file", "Move or rename a file within the workspace.",
        {"source": _PATH, "destination": _PATH}, ("source", "destination"),
        {"source": "source_path", "destination": "destination_path"},
    ),
    "file_search": _Spec(
        "file_search",
        "Find files whose names match a shell pattern such as '*.csv', recursively under a "
        "workspace directory ('.' by default).",
        {"pattern": {"type": "string"}, "path": _PATH}, ("pattern",),
        {"pattern": "pattern", "path": "dir_path"},
    ),
}  # fmt: skip


def _langchain_tool(langchain_name: str, root: Path) -> BaseTool:
    tools = FileManagementToolkit(root_dir=str(root), selected_tools=[langchain_name]).get_tools()
    return tools[0]


class FileTool:
    """One LangChain file-management tool rooted at the calling session's workspace.

    Args:
        name: our tool name, one of ``file_read``, ``file_write``, ``file_list``, ``file_delete``,
            ``file_copy``, ``file_move``, ``file_search``.
        workspaces: where each session's files live.
        max_read_chars: ``file_read`` returns at most this many characters (with a flag).
    """

    def __init__(
        self,
        name: str,
        workspaces: SessionWorkspaces,
        max_read_chars: int = DEFAULT_MAX_READ_CHARS,
    ) -> None:
        self._spec = _SPECS[name]
        self._workspaces = workspaces
        self._max_read_chars = max_read_chars
        self._schema = ToolSchema(
            name=name,
            description=self._spec.description,
            parameters={
                "type": "object",
                "properties": self._spec.properties,
                "required": list(self._spec.required),
                "additionalProperties": False,
            },
        )

    @property
    def schema(self) -> ToolSchema:
        return self._schema

    async def run(self, arguments: dict[str, Any], invocation: ToolInvocation) -> dict[str, Any]:
        """Run the LangChain tool in the session's workspace.

        Raises:
            ToolError: the path leaves the workspace, does not exist, or the operation failed.
        """
        root = await self._workspaces.open(invocation.tenant_id, invocation.session_id)
        await self._check_quota(root, arguments)
        tool = _langchain_tool(self._spec.langchain_name, root)
        mapped = {self._spec.arg_names[key]: value for key, value in arguments.items()}
        output = await asyncio.to_thread(tool.run, mapped)
        text = str(output)
        if text.startswith("Error:"):
            raise ToolError(f"{self._schema.name}: {text.removeprefix('Error:').strip()}")
        return self._result(arguments, text)

    async def _check_quota(self, root: Path, arguments: dict[str, Any]) -> None:
        name = self._schema.name
        if name == "file_write" and isinstance(arguments.get("text"), str):
            target = _inside(root, arguments.get("path"))
            size = len(arguments["text"].encode("utf-8"))
            existing = await asyncio.to_thread(_file_size, target)
            grows = size if arguments.get("append") else size - (existing or 0)
            await self._workspaces.check_quota(root, grows, 0 if existing is not None else 1)
        elif name == "file_copy":
            source = _inside(root, arguments.get("source"))
            copied = await asyncio.to_thread(_file_size, source)
            await self._workspaces.check_quota(root, copied or 0, 1)

    def _result(self, arguments: dict[str, Any], text: str) -> dict[str, Any]:
        name = self._schema.name
        if name == "file_read":
            truncated = len(text) > self._max_read_chars
            return {
                "path": arguments["path"],
                "text": text[: self._max_read_chars],
                "truncated": truncated,
            }
        if name in {"file_list", "file_search"}:
            # LangChain answers "No files found ..." for an empty listing.
            entries = [] if text.startswith("No files found") else sorted(text.splitlines())
            return {"path": arguments.get("path", "."), "entries": entries}
        return {"message": text}


def file_tools(
    workspaces: SessionWorkspaces, max_read_chars: int = DEFAULT_MAX_READ_CHARS
) -> list[FileTool]:
    """All the workspace file tools."""
    return [FileTool(name, workspaces, max_read_chars) for name in _SPECS]


def _inside(root: Path, relative: object) -> Path | None:
    # Only to measure: LangChain's own check refuses paths outside the workspace afterwards.
    if not isinstance(relative, str):
        return None
    target = (root / relative).resolve()
    return target if target.is_relative_to(root.resolve()) else None


def _file_size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None
