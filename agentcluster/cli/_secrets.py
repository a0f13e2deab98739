"""``agentcluster secrets rotate``: re-encrypt every provider secret under a new Fernet key.

The old keys are the ones in use (``SA01_CRYPTO_FERNET_KEY``, or the embedded mode's key file);
the new key comes from ``--new-key-file`` or ``SA01_CRYPTO_NEW_FERNET_KEY``. The embedded mode may
also generate it: the new key is written beside the key file first, the secrets are re-encrypted
in one all-or-nothing write, then the new key replaces the old file (see
:class:`~agentcluster.providers.KeyFile`). Output names counts, versions, files and variables,
never a secret or a key.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cryptography.fernet import Fernet

from agentcluster.config import Settings
from agentcluster.errors import ConfigError
from agentcluster.providers import (
    KEY_VARIABLE,
    KeyFile,
    RotationReport,
    SecretBox,
    key_source,
    open_settings_store,
    read_key_file,
    rotate_secrets,
    write_key_file,
)

__all__ = ["NEW_KEY_VARIABLE", "run_secrets_rotate"]

NEW_KEY_VARIABLE = "SA01_CRYPTO_NEW_FERNET_KEY"


@dataclass(frozen=True)
class _Plan:
    old: SecretBox
    new: SecretBox
    key_file: KeyFile | None = None
    """Set in the embedded mode: its pending key is renamed over it once the rotation is done."""


def _given_new_key(settings: Settings, new_key_file: Path | None) -> tuple[str, str] | None:
    """The new key and where it came from, if the operator gave one."""
    if new_key_file is not None:
        return read_key_file(new_key_file, variable="--new-key-file"), "--new-key-file"
    if settings.crypto.new_fernet_key:
        return settings.crypto.new_fernet_key, NEW_KEY_VARIABLE
    return None


def _embedded_plan(source: KeyFile, given: tuple[str, str] | None) -> _Plan:
    if not source.path.exists():
        raise ConfigError(
            f"{KEY_VARIABLE}: not set and no generated key at {source.path}: no secret was ever "
            "stored, nothing to rotate"
        )
    if source.pending.exists():
        # An interrupted rotation: finish it with the key it already wrote.
        pending = read_key_file(source.pending)
        if given is not None and given[0] != pending:
            raise ConfigError(
                f"{given[1]}: an interrupted rotation left its new key in {source.pending}; "
                "run again without a new key to finish that one"
            )
        new_key = pending
    else:
        new_key = given[0] if given is not None else Fernet.generate_key().decode()
        write_key_file(source.pending, new_key, replace=False)
    old = SecretBox([read_key_file(source.pending), read_key_file(source.path)])
    new = SecretBox([new_key], variable=given[1] if given else str(source.pending))
    return _Plan(old=old, new=new, key_file=source)


async def _plan(settings: Settings, new_key_file: Path | None) -> _Plan:
    source = key_source(settings)
    given = _given_new_key(settings, new_key_file)
    if isinstance(source, KeyFile):
        return await asyncio.to_thread(_embedded_plan, source, given)
    old = await source.box()  # no key at all: the error names SA01_CRYPTO_FERNET_KEY
    if given is None:
        raise ConfigError(
            f"{NEW_KEY_VARIABLE}: not set; set it (or pass --new-key-file) to the key to rotate "
            "to, e.g. from Fernet.generate_key()"
        )
    if settings.crypto.fernet_keys == [given[0]]:
        raise ConfigError(f"{given[1]}: the same key as {KEY_VARIABLE}; give a new one")
    return _Plan(old=old, new=SecretBox([given[0]], variable=given[1]))


def _next_steps(plan: _Plan, out: TextIO) -> None:
    if plan.key_file is not None:
        print(
            f"the new key replaced {plan.key_file.path} (mode 0600); running processes use it at "
            "their next settings check: nothing to set.",
            file=out,
        )
        return
    source = plan.new.variable
    print(
        f"next: set {KEY_VARIABLE} to the new key (the value of {source}) on every node and "
        f"restart them, then unset {NEW_KEY_VARIABLE}. A process still on the old key keeps the "
        f"provider settings it has until then; {KEY_VARIABLE}=<new>,<old> lets a process read "
        "both during a rolling restart.",
        file=out,
    )


async def run_secrets_rotate(settings: Settings, new_key_file: Path | None, out: TextIO) -> int:
    """Rotate every provider secret to the new key and print what to do next.

    Raises:
        ConfigError: no old or new key, a key that cannot decrypt the stored secrets.
        ConflictError: the settings changed meanwhile (nothing written; run it again).
    """
    plan = await _plan(settings, new_key_file)
    store = await open_settings_store(settings)
    try:
        report: RotationReport = await rotate_secrets(store, plan.old, plan.new)
        where = store.description
    finally:
        await store.aclose()
    if plan.key_file is not None:
        await asyncio.to_thread(os.replace, plan.key_file.pending, plan.key_file.path)
    print(
        f"rotated {report.secrets} secret(s) of {report.providers} provider(s) to the new key; "
        f"the provider settings are at version {report.version} ({where}).",
        file=out,
    )
    _next_steps(plan, out)
    return 0
