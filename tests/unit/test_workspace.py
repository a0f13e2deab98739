"""Session workspaces: the file tools, the quota, retention, and the archive checks python_exec's
results pass before they replace a workspace. No Ray, no services, no sandbox."""

from __future__ import annotations

import io
import os
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from agentcluster.errors import ToolError
from agentcluster.tools import InProcessToolExecutor, ToolInvocation, ToolRegistry
from agentcluster.tools._files import SessionWorkspaces, file_tools
from agentcluster.tools._workspace_archive import (
    ArchiveRejected,
    WorkspaceQuota,
    pack_workspace,
    unpack_checked,
)

pytestmark = pytest.mark.timeout(60)


def _invocation(
    tool: str, arguments: dict[str, object], tenant: str, session: str
) -> ToolInvocation:
    return ToolInvocation(
        tenant_id=tenant,
        session_id=session,
        turn_id="turn-1",
        agent="tester",
        tool_call_id=uuid.uuid4().hex,
        tool=tool,
        arguments=arguments,
    )


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("file_read", {"path": "../other/secret.txt"}),
        ("file_read", {"path": "/etc/hostname"}),
        ("file_write", {"path": "../escape.txt", "text": "x"}),
        ("file_copy", {"source": "a.txt", "destination": "../../a.txt"}),
        ("file_list", {"path": ".."}),
    ],
)
async def test_file_tools_refuse_paths_outside_the_workspace(
    tmp_path: Path, tool: str, arguments: dict[str, object]
) -> None:
    workspaces = SessionWorkspaces(tmp_path / "root")
    (tmp_path / "root" / "t1" / "other").mkdir(parents=True)
    (tmp_path / "root" / "t1" / "other" / "secret.txt").write_text("secret")
    executor = InProcessToolExecutor(ToolRegistry(file_tools(workspaces)))
    (await workspaces.open("t1", "s1")).joinpath("a.txt").write_text("a")

    outcome = await executor.execute(_invocation(tool, arguments, "t1", "s1"))
    assert not outcome.ok
    assert "Access denied" in (outcome.error or "")
    assert not (tmp_path / "root" / "t1" / "escape.txt").exists()
    assert not (tmp_path / "a.txt").exists()


async def test_file_tools_report_missing_files_as_tool_errors(tmp_path: Path) -> None:
    executor = InProcessToolExecutor(ToolRegistry(file_tools(SessionWorkspaces(tmp_path))))
    outcome = await executor.execute(_invocation("file_read", {"path": "nope.txt"}, "t1", "s1"))
    assert outcome == outcome.model_copy(update={"ok": False})
    assert "no such file" in (outcome.error or "")


@pytest.mark.parametrize("bad", ["..", "../t2", "a/b", "", "."])
def test_workspace_ids_cannot_name_other_directories(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ToolError, match="cannot name a workspace"):
        SessionWorkspaces(tmp_path).path("t1", bad)


# ---------------------------------------------------------------- quota


async def test_file_write_past_the_quota_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    workspaces = SessionWorkspaces(tmp_path, WorkspaceQuota(max_bytes=1000, max_files=10))
    executor = InProcessToolExecutor(ToolRegistry(file_tools(workspaces)))
    ok = await executor.execute(
        _invocation("file_write", {"path": "a", "text": "x" * 600}, "t1", "s1")
    )
    assert ok.ok
    over = await executor.execute(
        _invocation("file_write", {"path": "b", "text": "y" * 600}, "t1", "s1")
    )
    assert not over.ok and "quota" in (over.error or "")
    assert not (tmp_path / "t1" / "s1" / "b").exists()
    # Replacing a file counts only the difference.
    replaced = await executor.execute(
        _invocation("file_write", {"path": "a", "text": "z" * 900}, "t1", "s1")
    )
    assert replaced.ok
    copied = await executor.execute(
        _invocation("file_copy", {"source": "a", "destination": "c"}, "t1", "s1")
    )
    assert not copied.ok and "quota" in (copied.error or "")


async def test_too_many_files_are_refused(tmp_path: Path) -> None:
    workspaces = SessionWorkspaces(tmp_path, WorkspaceQuota(max_bytes=10_000, max_files=3))
    executor = InProcessToolExecutor(ToolRegistry(file_tools(workspaces)))
    for name in ("a", "b", "c"):
        outcome = await executor.execute(
            _invocation("file_write", {"path": name, "text": "1"}, "t1", "s1")
        )
        assert outcome.ok
    fourth = await executor.execute(
        _invocation("file_write", {"path": "d", "text": "1"}, "t1", "s1")
    )
    assert not fourth.ok and "quota" in (fourth.error or "")


# ---------------------------------------------------------------- retention


async def test_unused_workspaces_are_swept_after_the_retention_period(tmp_path: Path) -> None:
    workspaces = SessionWorkspaces(tmp_path, retention_s=3600)
    old = await workspaces.open("t1", "old")
    fresh = await workspaces.open("t1", "fresh")
    (old / "f.txt").write_text("x")
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    assert workspaces.sweep() == 1
    assert not old.exists() and fresh.exists()
    # Using a workspace again restarts its retention.
    os.utime(fresh, (long_ago, long_ago))
    await workspaces.open("t1", "fresh")
    assert workspaces.sweep() == 0 and fresh.exists()
    assert workspaces.sweep(now=time.time() + 7200) == 1
    assert not (tmp_path / "t1").exists()


async def test_workspaces_are_private(tmp_path: Path) -> None:
    path = await SessionWorkspaces(tmp_path / "root").open("t1", "s1")
    assert path.stat().st_mode & 0o077 == 0


# ---------------------------------------------------------------- archives from the sandbox


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return buffer


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o4777  # setuid and world-writable: must not survive
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


QUOTA = WorkspaceQuota(max_bytes=1000, max_files=10)


def test_a_valid_archive_round_trips_with_private_modes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_text("hello")
    buffer = io.BytesIO()
    pack_workspace(source, buffer)
    buffer.seek(0)
    report = unpack_checked(buffer, tmp_path / "dest", QUOTA)
    assert (report.bytes, report.files, report.skipped) == (5, 2, 0)
    assert (tmp_path / "dest" / "sub" / "a.txt").read_text() == "hello"
    assert (tmp_path / "dest" / "sub" / "a.txt").stat().st_mode & 0o7777 == 0o600


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/etc/evil", "a/../../escape", "a/" * 70 + "deep"]
)
def test_names_outside_or_too_deep_are_rejected_and_nothing_kept(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArchiveRejected):
        unpack_checked(_archive(_file(name, b"x")), tmp_path / "dest", QUOTA)
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_links_and_devices_are_skipped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    archive = _archive(
        _link("sym", str(secret)),
        _link("hard", str(secret), tarfile.LNKTYPE),
        (device, None),
        _file("ok.txt", b"ok"),
    )
    report = unpack_checked(archive, tmp_path / "dest", QUOTA)
    assert report.skipped == 3
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["ok.txt"]


def test_a_file_through_a_symlinked_directory_cannot_escape(tmp_path: Path) -> None:
    # The link is skipped, so "d/x" makes a real directory d inside dest instead.
    archive = _archive(_link("d", str(tmp_path)), _file("d/x", b"x"))
    unpack_checked(archive, tmp_path / "dest", QUOTA)
    assert (tmp_path / "dest" / "d" / "x").read_bytes() == b"x"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("big", b"x" * 1001)], "1000 bytes"),
        ([_file(f"f{i}", b"") for i in range(11)], "10 entries"),
    ],
)
def test_archives_over_the_quota_are_rejected(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], message: str
) -> None:
    with pytest.raises(ArchiveRejected, match=message):
        unpack_checked(_archive(*members), tmp_path / "dest", QUOTA)
    assert not (tmp_path / "dest").exists()


def test_garbage_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRejected, match="unreadable"):
        unpack_checked(io.BytesIO(b"not a tar" * 100), tmp_path / "dest", QUOTA)
    assert not (tmp_path / "dest").exists()
