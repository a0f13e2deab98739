"""The data directory (``SA01_DATA_DIR``) is private: directories 0700, files 0600.

It holds the SQLite state store (every tenant's messages and API key hashes), the embedded Fernet
key, the demo API key, the ``up`` log and PID file and the session workspaces, so nothing in it
may be readable by another user of the machine (a sandboxed tool runs as one). Everything
agentcluster creates there goes through :func:`make_private_dir` / :func:`create_private_file`,
which set the mode explicitly (whatever the umask), and :func:`secure_data_dir` runs at start:
it creates the directory, tightens our own entries that are looser than that, and returns a
warning for each entry that is not ours to change (another owner: an operator must fix it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agentcluster.config import Settings
from agentcluster.errors import ConfigError

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "DataDirReport",
    "create_private_file",
    "make_private_dir",
    "prepare_sqlite_file",
    "secure_data_dir",
    "tighten",
    "write_private_text",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataDirReport:
    """What :func:`secure_data_dir` did: entries tightened, and entries it could not fix."""

    tightened: tuple[Path, ...]
    warnings: tuple[str, ...]


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (an existing one is left as is).

    The mode is set with ``chmod`` after ``mkdir``, so a permissive umask cannot widen it.

    Raises:
        ConfigError: a component exists and is not a directory, or cannot be created.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile; its creator set its mode
        except OSError as exc:
            raise ConfigError(f"cannot create directory {folder}: {exc.strerror}") from None
        os.chmod(folder, PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory")
    return path


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist (its directory too, 0700).

    Returns:
        Whether this call created it.
    """
    make_private_dir(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(descriptor, PRIVATE_FILE_MODE)
    finally:
        os.close(descriptor)
    return True


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, which is 0600 from its first byte (replaced atomically)."""
    make_private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def prepare_sqlite_file(database: Path) -> None:
    """Make sure an SQLite database and its side files are private before SQLite opens them.

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's mode, so a 0600
    database keeps its journal 0600 too. A file that is not ours is left alone (logged).
    """
    created = create_private_file(database)
    if created:
        return
    for path in (database, *(database.with_name(database.name + s) for s in _SQLITE_SIDE_FILES)):
        problem = tighten(path)
        if problem is not None:
            logger.warning("%s", problem)


def tighten(path: Path, *, keep: int = 0) -> str | None:
    """Remove group and other permissions from ``path`` if it is ours and has any.

    Args:
        keep: permission bits left as they are (the data dir's search bits, see
            :func:`secure_data_dir`).

    Returns:
        None when ``path`` is private now (or does not exist); else why it is not (not ours).
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    remove = _OPEN_TO_OTHERS & ~keep
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & remove:
        return None
    mode = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    if info.st_uid != os.geteuid():
        return (
            f"{path} is accessible to group or others (mode {stat.S_IMODE(info.st_mode):o}) and "
            f"owned by uid {info.st_uid}, not this process (uid {os.geteuid()}); "
            f"run chmod {mode:o} on it"
        )
    os.chmod(path, stat.S_IMODE(info.st_mode) & ~remove)
    return None


def secure_data_dir(settings: Settings) -> DataDirReport:
    """Create the data dir (0700) and tighten what agentcluster keeps in it; run at start.

    Tightened: the data dir itself, the SQLite store with its side files, the Fernet key file,
    the demo API key, the ``up`` log and PID files and the workspace root. Another owner's
    entry is not changed: it is reported in ``warnings`` (and logged) for an operator.

    One exception: when the data dir holds another user's entry (``make deps-up`` keeps
    PostgreSQL's data, owned by ``postgres``, there), the search (x) bits it has for group and
    others are kept, so that user can still reach its own directory; they allow no listing, and
    every entry of ours is 0700/0600.
    """
    data_dir = make_private_dir(settings.data_dir)
    tightened: list[Path] = []
    warnings: list[str] = []
    for path in _our_entries(settings, data_dir):
        before = _mode(path)
        keep = _search_bits_needed(data_dir) if path == data_dir else 0
        problem = tighten(path, keep=keep)
        if problem is not None:
            warnings.append(problem)
            logger.warning("%s", problem)
        elif before is not None and before != _mode(path):
            tightened.append(path)
            logger.info("data dir: %s was mode %o, now private", path, before)
    return DataDirReport(tuple(tightened), tuple(warnings))


def _our_entries(settings: Settings, data_dir: Path) -> list[Path]:
    entries = [data_dir]
    database = data_dir / "agentcluster.db"
    entries += [database, *(data_dir / f"agentcluster.db{s}" for s in _SQLITE_SIDE_FILES)]
    names = ("fernet.key", "demo-api-key", "agentcluster.log", "agentcluster.pid", "workspaces")
    entries += [data_dir / name for name in names]
    for configured in (settings.crypto.key_file, settings.tools.workspace_root):
        if configured is not None and configured.parent.resolve() == data_dir.resolve():
            entries.append(configured)
    return entries


def _search_bits_needed(data_dir: Path) -> int:
    euid = os.geteuid()
    for entry in data_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if entry.lstat().st_uid != euid:
                logger.info("data dir: keeps its search bits for %s (another owner)", entry)
                return stat.S_IXGRP | stat.S_IXOTH
    return 0


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return None
