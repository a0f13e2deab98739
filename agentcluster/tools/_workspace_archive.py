"""Moving a session workspace into and out of a python_exec sandbox as a tar stream.

The sandbox never sees the stored workspace directory: the host packs it into a tar stream the
sandbox unpacks into its own size-limited tmpfs, and the sandbox packs the result back. That
result is written by the model's code's own uid, so it is untrusted input:
:func:`unpack_checked` takes only regular files and directories with plain relative names, counts
bytes and entries against the session's quota while it reads, and writes into a fresh staging
directory; only a complete, valid archive replaces the workspace (:func:`replace_workspace`).
Anything else leaves the stored workspace as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

__all__ = [
    "ArchiveRejected",
    "UnpackReport",
    "WorkspaceQuota",
    "pack_workspace",
    "replace_workspace",
    "unpack_checked",
    "workspace_usage",
]

_MAX_NAME_BYTES = 1024
_MAX_DEPTH = 64


@dataclass(frozen=True)
class WorkspaceQuota:
    """A session workspace's limits: total bytes of file content and number of entries."""

    max_bytes: int
    max_files: int


@dataclass(frozen=True)
class UnpackReport:
    """What :func:`unpack_checked` stored: bytes, entries (files and directories), skipped."""

    bytes: int
    files: int
    skipped: int


class ArchiveRejected(Exception):
    """The sandbox's archive broke a rule (quota, names, format); nothing of it is kept."""


def workspace_usage(root: Path) -> tuple[int, int]:
    """(bytes of regular files, number of files and directories) under ``root``."""
    total = entries = 0
    for folder, dirs, files in os.walk(root):
        entries += len(dirs) + len(files)
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total, entries


def pack_workspace(root: Path, out: BinaryIO) -> None:
    """Write ``root``'s regular files and directories to ``out`` as a tar stream."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for folder, dirs, files in os.walk(root):
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(folder, name)
                info = os.lstat(path)
                arcname = os.path.relpath(path, root)
                if stat.S_ISDIR(info.st_mode):
                    archive.addfile(_dir_info(arcname))
                elif stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as handle:
                        member = _file_info(arcname, info.st_size, int(info.st_mtime))
                        archive.addfile(member, handle)


def _dir_info(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.DIRTYPE
    member.mode = 0o700
    return member


def _file_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = size
    member.mode = 0o600
    member.mtime = mtime
    return member


def unpack_checked(stream: BinaryIO, dest: Path, quota: WorkspaceQuota) -> UnpackReport:
    """Extract an untrusted tar stream into the new directory ``dest`` within ``quota``.

    Links, devices and other special members are skipped (counted in ``skipped``). Files are
    written 0600 and directories 0700, owned by this process's user, whatever the archive says.

    Raises:
        ArchiveRejected: a name is absolute, climbs out, is too long or too deep; the archive is
            malformed; or it holds more bytes or entries than ``quota`` allows. ``dest`` is
            removed in that case.
    """
    dest.mkdir(mode=0o700)
    try:
        return _extract(stream, dest, quota)
    except (tarfile.TarError, OSError, EOFError, UnicodeError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveRejected(
            f"the sandbox returned an unreadable workspace archive: {exc}"
        ) from None
    except ArchiveRejected:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract(stream: BinaryIO, dest: Path, quota: WorkspaceQuota) -> UnpackReport:
    total = entries = skipped = 0
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if not (member.isfile() or member.isdir()):
                skipped += 1
                continue
            parts = _checked_parts(member.name)
            if not parts:
                continue
            entries += 1
            total += member.size if member.isfile() else 0
            if entries > quota.max_files:
                raise ArchiveRejected(f"the workspace would hold over {quota.max_files} entries")
            if total > quota.max_bytes:
                raise ArchiveRejected(f"the workspace would hold over {quota.max_bytes} bytes")
            target = dest.joinpath(*parts)
            _make_parents(dest, parts[:-1])
            if member.isdir():
                with contextlib.suppress(FileExistsError):
                    target.mkdir(mode=0o700)
                continue
            _write_file(archive, member, target)
    return UnpackReport(bytes=total, files=entries, skipped=skipped)


def _checked_parts(name: str) -> tuple[str, ...]:
    if "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        raise ArchiveRejected("the workspace archive has an over-long or invalid name")
    path = PurePosixPath(name)
    parts = tuple(part for part in path.parts if part not in ("", "."))
    if path.is_absolute() or ".." in parts:
        raise ArchiveRejected(f"the workspace archive names a path outside it: {name[:80]!r}")
    if len(parts) > _MAX_DEPTH:
        raise ArchiveRejected(f"the workspace archive nests deeper than {_MAX_DEPTH} levels")
    return parts


def _make_parents(dest: Path, parts: tuple[str, ...]) -> None:
    folder = dest
    for part in parts:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ArchiveRejected(f"the workspace archive uses {part!r} as file and directory")
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)


def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(member)
    if source is None:
        raise ArchiveRejected(f"the workspace archive member {member.name[:80]!r} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    if target.is_dir():
        raise ArchiveRejected(f"the workspace archive uses {member.name[:80]!r} twice")
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)
    with contextlib.suppress(OSError):
        os.utime(target, (member.mtime, member.mtime))


def replace_workspace(workspace: Path, staged: Path) -> None:
    """Put the directory ``staged`` where ``workspace`` is (both on one filesystem)."""
    retired = workspace.with_name(f".{workspace.name}.old-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        workspace.rename(retired)
    staged.rename(workspace)
    shutil.rmtree(retired, ignore_errors=True)
