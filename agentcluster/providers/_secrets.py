"""Provider secrets at rest: Fernet encryption, where the key comes from, and masking.

:class:`SecretBox` encrypts with the first of its keys and decrypts with any of them (a
``MultiFernet``), so a rotation can be rolled out; a token no key opens raises
:class:`~agentcluster.errors.SecretKeyError` naming the variable, never the secret.

Where the key comes from is a :class:`KeySource`, chosen by :func:`key_source`:

* ``SA01_CRYPTO_FERNET_KEY`` set: those keys (:class:`StaticKeys`);
* unset in the embedded mode (no Redis, SQLite: one machine): a key generated once and kept in a
  0600 file under the data dir that every process of the machine reads (:class:`KeyFile`);
* unset otherwise (production): :class:`NoKey`, which refuses with an error naming the variable.
  A generated key per machine would make secrets written on one node unreadable on the others.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from agentcluster.config import Settings
from agentcluster.datadir import make_private_dir
from agentcluster.errors import ConfigError, SecretKeyError

__all__ = [
    "KEY_FILE_VARIABLE",
    "KEY_VARIABLE",
    "MASK",
    "KeyFile",
    "KeySource",
    "NoKey",
    "SecretBox",
    "StaticKeys",
    "is_embedded",
    "key_file_path",
    "key_source",
    "mask_secret",
    "read_key_file",
    "write_key_file",
]

KEY_VARIABLE = "SA01_CRYPTO_FERNET_KEY"
KEY_FILE_VARIABLE = "SA01_CRYPTO_KEY_FILE"
MASK = "…"
"""The ellipsis in a masked secret (``sk-…abcd``); a clear secret never contains it."""


class SecretBox:
    """Encrypts and decrypts secrets: the first key encrypts, every key decrypts.

    Args:
        keys: url-safe base64 Fernet keys, the encrypting one first.
        variable: the setting the keys came from, named in errors.

    Raises:
        ConfigError: no key, or a value that is not a Fernet key.
    """

    def __init__(self, keys: Sequence[str], *, variable: str = KEY_VARIABLE) -> None:
        if not keys:
            raise ConfigError(f"{variable}: no key given")
        try:
            self._fernets = [Fernet(key.encode() if isinstance(key, str) else key) for key in keys]
        except (ValueError, binascii.Error):
            raise ConfigError(f"{variable}: not a Fernet key (use Fernet.generate_key())") from None
        self._multi = MultiFernet(self._fernets)
        self.variable = variable

    def __repr__(self) -> str:
        return f"SecretBox({len(self._fernets)} key(s) from {self.variable})"

    def encrypt(self, secret: str) -> str:
        """The Fernet token of ``secret`` under the first key."""
        return self._multi.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The secret inside ``token``.

        Raises:
            SecretKeyError: no key of this box opens it (a wrong key, or rotated away from it).
        """
        try:
            return self._multi.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                self.variable,
                "this key cannot decrypt the stored provider secrets (a wrong key, or they were "
                "rotated to another key: set the key they were rotated to)",
            ) from None

    def rotate(self, token: str, new: SecretBox) -> str:
        """``token`` re-encrypted under ``new``'s first key (opened with this box's keys).

        Raises:
            SecretKeyError: this box cannot open ``token``.
        """
        self.decrypt(token)  # the clear error, naming this box's variable
        return MultiFernet([new._fernets[0], *self._fernets]).rotate(token.encode()).decode()

    def opens(self, token: str) -> bool:
        """Whether some key of this box decrypts ``token``."""
        try:
            self._multi.decrypt(token.encode())
        except InvalidToken:
            return False
        return True


def mask_secret(secret: str) -> str:
    """A hint of ``secret`` safe to show: ``sk-…abcd`` for long ones, ``…`` for short ones."""
    if len(secret) >= 16:
        return f"{secret[:3]}{MASK}{secret[-4:]}"
    if len(secret) >= 10:
        return f"{MASK}{secret[-2:]}"
    return MASK


class KeySource(Protocol):
    """Where a process gets its :class:`SecretBox`."""

    async def box(self, *, create: bool = False) -> SecretBox:
        """The box to use; ``create`` lets a writer make a key where that is allowed.

        Raises:
            ConfigError: no key is available (the message names the variable).
        """
        ...


@dataclass(frozen=True)
class StaticKeys:
    """Keys from the settings (``SA01_CRYPTO_FERNET_KEY``)."""

    keys: tuple[str, ...]
    variable: str = KEY_VARIABLE

    def __repr__(self) -> str:
        return f"StaticKeys({len(self.keys)} key(s) from {self.variable})"

    async def box(self, *, create: bool = False) -> SecretBox:
        return SecretBox(self.keys, variable=self.variable)


@dataclass(frozen=True)
class NoKey:
    """No key configured where none may be generated: every use fails naming the variable."""

    reason: str

    async def box(self, *, create: bool = False) -> SecretBox:
        raise ConfigError(
            f"{KEY_VARIABLE}: not set; {self.reason}, so provider secrets cannot be stored or "
            "read: set it on every node to a key from Fernet.generate_key()"
        )


class KeyFile:
    """The embedded mode's key: generated once into a 0600 file that every local process reads.

    A rotation (``agentcluster secrets rotate``) first writes the new key beside it
    (:attr:`pending`, ``<name>.new``), then re-encrypts, then renames the new key over the old.
    While the pending key exists it encrypts and both keys decrypt, so nothing written during the
    rotation is lost and an interrupted rotation can be run again. Both files are checked on every
    use (two ``stat`` calls), so running processes follow a rotation without a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = path.with_name(f"{path.name}.new")
        self._cached: tuple[tuple[_Version, _Version], SecretBox] | None = None

    def __repr__(self) -> str:
        return f"KeyFile({self.path})"

    async def box(self, *, create: bool = False) -> SecretBox:
        return await asyncio.to_thread(self._box, create)

    def _box(self, create: bool) -> SecretBox:
        version = (_file_version(self.path), _file_version(self.pending))
        if version[0] is None:
            if not create:
                raise ConfigError(
                    f"{KEY_VARIABLE}: not set, and no generated key at {self.path} yet "
                    f"({KEY_FILE_VARIABLE}); it is made when the first secret is stored"
                )
            write_key_file(self.path, Fernet.generate_key().decode(), replace=False)
            version = (_file_version(self.path), version[1])
        if self._cached is None or self._cached[0] != version:
            keys = [read_key_file(self.path)]
            if version[1] is not None:
                keys.insert(0, read_key_file(self.pending))
            self._cached = (version, SecretBox(keys, variable=KEY_FILE_VARIABLE))
        return self._cached[1]


_Version = tuple[int, int] | None


def _file_version(path: Path) -> _Version:
    # A replaced file is a new inode, whatever the clock's resolution says about its mtime.
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns


def read_key_file(path: Path, *, variable: str = KEY_FILE_VARIABLE) -> str:
    """The key kept in ``path``, refusing a file that others can read.

    Raises:
        ConfigError: unreadable, or readable by group or others (names ``variable``).
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{variable}: {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(mode):o}); run chmod 600 on it"
        )
    return text


def write_key_file(path: Path, key: str, *, replace: bool) -> None:
    """Write ``key`` to ``path`` (mode 0600) atomically.

    Without ``replace`` an existing file wins: two processes generating at once end up sharing
    whichever key was linked first.
    """
    make_private_dir(path.parent)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:  # mkstemp made it 0600 already
            handle.write(key.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            # Another process's key, linked first, wins: every process shares one key.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def is_embedded(settings: Settings) -> bool:
    """One machine, nothing shared: no Redis and the SQLite store (a key file is safe)."""
    return settings.redis.url is None and settings.db_dsn.startswith("sqlite")


def key_file_path(settings: Settings) -> Path:
    """Where the embedded mode keeps its generated key."""
    return settings.crypto.key_file or settings.data_dir / "fernet.key"


def key_source(settings: Settings) -> KeySource:
    """The key source for these settings (see the module docstring)."""
    if settings.crypto.fernet_keys:
        return StaticKeys(tuple(settings.crypto.fernet_keys))
    if is_embedded(settings):
        return KeyFile(key_file_path(settings))
    where = "SA01_REDIS_URL is set" if settings.redis.url else "the database is shared"
    return NoKey(f"{where} (not the embedded mode)")
