"""Provider secrets at rest: the Fernet box, where its key comes from, masking and rotation.

No services: the key file lives in a temporary directory, the settings in a memory store."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from agentcluster.cli import parse_args
from agentcluster.config import load_settings
from agentcluster.errors import ConfigError, ConflictError, SecretKeyError
from agentcluster.providers import (
    KeyFile,
    NoKey,
    SecretBox,
    StaticKeys,
    StoredSettings,
    key_source,
    mask_secret,
    rotate_secrets,
)
from tests.support.settings_store import MemorySettingsStore

pytestmark = pytest.mark.timeout(30)

SECRET = "sk-unit-0123456789abcdefWXYZ"


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests choose their own mode: the services' variables must not leak in."""
    for name in (
        "SA01_REDIS_URL",
        "SA01_DB_DSN",
        "SA01_CRYPTO_FERNET_KEY",
        "SA01_CRYPTO_NEW_FERNET_KEY",
        "SA01_CRYPTO_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


# --- the box ----------------------------------------------------------------------------------


def test_a_token_is_neither_the_secret_nor_contains_it() -> None:
    box = SecretBox([new_key()])
    token = box.encrypt(SECRET)
    assert token != SECRET and SECRET not in token
    assert box.decrypt(token) == SECRET


def test_a_wrong_key_is_a_clear_error_naming_the_variable_never_the_secret() -> None:
    key, other = new_key(), new_key()
    token = SecretBox([key]).encrypt(SECRET)
    with pytest.raises(SecretKeyError) as wrong:
        SecretBox([other]).decrypt(token)
    assert isinstance(wrong.value, ConfigError)
    message = wrong.value.message
    assert message.startswith("SA01_CRYPTO_FERNET_KEY: ") and "cannot decrypt" in message
    for clear in (SECRET, key, other):
        assert clear not in message and clear not in repr(wrong.value)
    # It crosses actors like every error of ours.
    copied = pickle.loads(pickle.dumps(wrong.value))
    assert copied.variable == "SA01_CRYPTO_FERNET_KEY" and copied.message == message


def test_a_value_that_is_not_a_key_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_FERNET_KEY: not a Fernet key"):
        SecretBox(["short"])
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_FERNET_KEY: no key given"):
        SecretBox([])


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    new, old = new_key(), new_key()
    old_token = SecretBox([old]).encrypt(SECRET)
    both = SecretBox([new, old])
    assert both.decrypt(old_token) == SECRET
    fresh = both.encrypt(SECRET)
    assert SecretBox([new]).decrypt(fresh) == SECRET
    assert not SecretBox([old]).opens(fresh)


def test_rotate_moves_a_token_to_the_new_key_only() -> None:
    old, new = SecretBox([new_key()]), SecretBox([new_key()])
    rotated = old.rotate(old.encrypt(SECRET), new)
    assert new.decrypt(rotated) == SECRET
    assert not old.opens(rotated)


def test_the_box_never_shows_its_keys() -> None:
    key = new_key()
    assert key not in repr(SecretBox([key]))
    assert key not in repr(StaticKeys((key,)))


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("sk-proj-abcdefghijklmnop1234", "sk-…1234"),
        ("0123456789ab", "…ab"),
        ("short", "…"),
        ("", "…"),
    ],
)
def test_masking_shows_a_hint_never_the_secret(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked
    assert not secret or secret not in mask_secret(secret)


# --- where the key comes from -----------------------------------------------------------------


def test_a_configured_key_list_is_parsed_and_each_key_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new, old = new_key(), new_key()
    monkeypatch.setenv("SA01_CRYPTO_FERNET_KEY", f" {new} , {old} ")
    assert load_settings().crypto.fernet_keys == [new, old]
    monkeypatch.setenv("SA01_CRYPTO_FERNET_KEY", f"{new},c2hvcnQ=")
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_FERNET_KEY: a Fernet key is 32"):
        load_settings()
    monkeypatch.delenv("SA01_CRYPTO_FERNET_KEY")
    monkeypatch.setenv("SA01_CRYPTO_NEW_FERNET_KEY", f"{new},{old}")
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_NEW_FERNET_KEY: one key only"):
        load_settings()


def test_the_key_source_follows_the_mode(tmp_path: Path) -> None:
    key = new_key()
    configured = load_settings({"crypto": {"fernet_key": key}})
    assert key_source(configured) == StaticKeys((key,))
    embedded = load_settings({"crypto": {"key_file": tmp_path / "k"}})
    source = key_source(embedded)
    assert isinstance(source, KeyFile) and source.path == tmp_path / "k"
    production = load_settings({"redis": {"url": "redis://127.0.0.1:1/0"}})
    assert isinstance(key_source(production), NoKey)
    shared_db = load_settings({"db": {"dsn": "postgresql://u:p@127.0.0.1:1/db"}})
    assert isinstance(key_source(shared_db), NoKey)


async def test_production_without_a_key_refuses_naming_the_variable() -> None:
    settings = load_settings({"redis": {"url": "redis://127.0.0.1:1/0"}})
    with pytest.raises(ConfigError) as refused:
        await key_source(settings).box(create=True)
    message = refused.value.message
    assert message.startswith("SA01_CRYPTO_FERNET_KEY: not set; SA01_REDIS_URL is set")
    assert "Fernet.generate_key()" in message


async def test_the_embedded_key_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "fernet.key"
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_FERNET_KEY: not set, and no generated"):
        await KeyFile(path).box()
    box = await KeyFile(path).box(create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process (another KeyFile) reads the same key; it does not make a second one.
    token = box.encrypt(SECRET)
    assert (await KeyFile(path).box(create=True)).decrypt(token) == SECRET
    assert [p.name for p in path.parent.iterdir()] == ["fernet.key"]


async def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    path.write_text(new_key())
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_KEY_FILE: .* \(mode 644\); run chmod 600"):
        await KeyFile(path).box()


async def test_a_pending_key_encrypts_and_a_replaced_file_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    source = KeyFile(path)
    old_box = await source.box(create=True)
    old_token = old_box.encrypt(SECRET)
    new = new_key()
    source.pending.write_text(new)
    os.chmod(source.pending, 0o600)
    during = await source.box()
    assert during.decrypt(old_token) == SECRET
    assert SecretBox([new]).decrypt(during.encrypt(SECRET)) == SECRET
    os.replace(source.pending, path)
    after = await source.box()
    assert not after.opens(old_token)
    assert after.decrypt(SecretBox([new]).encrypt(SECRET)) == SECRET


# --- rotation ---------------------------------------------------------------------------------


def stored_with(box: SecretBox, *secrets: str | None) -> dict[str, object]:
    providers = [
        {
            "name": f"p{index}",
            "kind": "openai",
            "models": ["m"],
            "api_key_token": box.encrypt(secret) if secret else None,
        }
        for index, secret in enumerate(secrets)
    ]
    return {"providers": providers, "agents": {}}


async def test_rotation_keeps_every_secret_readable_and_the_old_key_opens_none() -> None:
    old_key = new_key()
    old, new = SecretBox([old_key]), SecretBox([new_key()])
    store = MemorySettingsStore()
    await store.write(stored_with(old, SECRET, None, "second-secret-value-0000"), 0)
    report = await rotate_secrets(store, old, new)
    assert (report.providers, report.secrets, report.version) == (3, 2, 2)
    tokens = StoredSettings.of(store.document.data).tokens()
    assert sorted(new.decrypt(t) for t in tokens) == sorted([SECRET, "second-secret-value-0000"])
    for token in tokens:
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt(token.encode())


async def test_rotation_with_a_key_that_cannot_decrypt_writes_nothing() -> None:
    writer, stranger, new = (SecretBox([new_key()]) for _ in range(3))
    store = MemorySettingsStore()
    await store.write(stored_with(writer, SECRET, "another-secret-abcdefgh"), 0)
    before = store.raw()
    with pytest.raises(SecretKeyError, match=r"^SA01_CRYPTO_FERNET_KEY: "):
        await rotate_secrets(store, stranger, new)
    assert store.raw() == before and store.document.version == 1


class RacingStore(MemorySettingsStore):
    """Another writer gets in between a reader's read and its write, once."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: dict[str, object] | None = None

    async def write(self, data: dict[str, object], expected_version: int) -> int:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await super().write(meanwhile, self.document.version)
        return await super().write(data, expected_version)


async def test_a_change_during_rotation_is_a_conflict_not_a_lost_write() -> None:
    old, new = SecretBox([new_key()]), SecretBox([new_key()])
    store = RacingStore()
    await store.write(stored_with(old, SECRET), 0)
    store.meanwhile = stored_with(old, "written-meanwhile-000000")
    with pytest.raises(ConflictError):
        await rotate_secrets(store, old, new)
    # The other writer's change is what is stored, still under the old key.
    tokens = StoredSettings.of(store.document.data).tokens()
    assert [old.decrypt(t) for t in tokens] == ["written-meanwhile-000000"]


def test_the_rotate_command_parses() -> None:
    args = parse_args(["secrets", "rotate"])
    assert (args.command, args.secrets_command, args.new_key_file) == ("secrets", "rotate", None)
    args = parse_args(["secrets", "rotate", "--new-key-file", "/tmp/k"])
    assert args.new_key_file == Path("/tmp/k")
