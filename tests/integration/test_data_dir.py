"""Everything agentcluster creates under SA01_DATA_DIR is private: directories 0700, files 0600.

The embedded pieces that write there run for real (the SQLite store with its WAL, the demo API
key, the generated Fernet key, session workspaces, the ``up`` log and PID file) under a umask of
0, so a mode that only the umask kept private fails here. Then every entry of the data dir is
checked: none may be accessible to group or others.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcluster.bootstrap import open_state_store
from agentcluster.config import Settings, load_settings
from agentcluster.datadir import (
    create_private_file,
    make_private_dir,
    secure_data_dir,
    tighten,
    write_private_text,
)
from agentcluster.errors import ConfigError
from agentcluster.providers import key_source
from agentcluster.tools._files import SessionWorkspaces
from deployments.launcher import _demo_api_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_EMBEDDED_UNSET = (
    "SA01_DB_DSN",
    "SA01_REDIS_URL",
    "SA01_KAFKA_BOOTSTRAP_SERVERS",
    "SA01_CRYPTO_FERNET_KEY",
    "SA01_CRYPTO_NEW_FERNET_KEY",
    "SA01_CRYPTO_KEY_FILE",
    "SA01_TOOLS_WORKSPACE_ROOT",
)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Umask 0: without explicit modes, new files would be 0666 and directories 0777."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Embedded settings (SQLite, key file) with a data dir two levels below tmp_path."""
    for name in _EMBEDDED_UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SA01_DATA_DIR", str(tmp_path / "state" / "data"))
    return load_settings()


def _open_to_others(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that group or others can access."""
    found = []
    paths = [root, *root.rglob("*")]
    for path in paths:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077 and not path.is_symlink():
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_embedded_pieces_create_only_private_files(
    settings: Settings, loose_umask: None
) -> None:
    report = secure_data_dir(settings)
    assert report.warnings == ()
    api_key = await _demo_api_key(settings)
    store = await open_state_store(settings)
    # The store opens a connection per call; one held open keeps the WAL side files in place.
    holder = sqlite3.connect(settings.data_dir / "agentcluster.db")
    try:
        holder.execute("SELECT count(*) FROM sqlite_master").fetchall()
        tenant = await store.create_tenant("perm-test")
        await store.create_api_key(tenant.tenant_id, "k")
        box = await key_source(settings).box(create=True)
        assert box.decrypt(box.encrypt("s")) == "s"
        workspace = await SessionWorkspaces(settings.workspace_root).open("t-1", "s-1")
        # The `up` command's log and PID file, as agentcluster/cli/_local.py writes them.
        create_private_file(settings.data_dir / "agentcluster.log")
        write_private_text(settings.data_dir / "agentcluster.pid", "123\n")
        created = {p.name for p in settings.data_dir.iterdir()}
        # While the store is open its WAL side files exist: they are checked too.
        assert {"agentcluster.db", "agentcluster.db-wal", "agentcluster.db-shm"} <= created
        assert {"demo-api-key", "fernet.key", "workspaces", "agentcluster.log"} <= created
        assert workspace.is_dir()
        assert _open_to_others(settings.data_dir.parent) == []
    finally:
        holder.close()
        await store.close()
    assert (settings.data_dir / "demo-api-key").read_text().strip() == api_key
    assert _open_to_others(settings.data_dir.parent) == []
    assert _mode(settings.data_dir) == 0o700
    assert _mode(settings.data_dir / "agentcluster.db") == 0o600


async def test_loose_modes_left_by_an_older_version_are_tightened_at_start(
    settings: Settings, loose_umask: None
) -> None:
    data = settings.data_dir
    data.mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    loose = {
        "agentcluster.db": 0o644,
        "agentcluster.db-wal": 0o644,
        "agentcluster.db-shm": 0o666,
        "fernet.key": 0o640,
        "demo-api-key": 0o644,
        "agentcluster.log": 0o664,
        "agentcluster.pid": 0o644,
    }
    for name, mode in loose.items():
        (data / name).write_text("")
        os.chmod(data / name, mode)
    (data / "workspaces" / "t-1").mkdir(parents=True)
    os.chmod(data / "workspaces", 0o777)
    report = secure_data_dir(settings)
    assert report.warnings == ()
    assert {p.name for p in report.tightened} == {"data", "workspaces", *loose}
    assert _mode(data) == 0o700 and _mode(data / "workspaces") == 0o700
    assert all(_mode(data / name) == 0o600 for name in loose)
    # Opening the store tightens its files too (SA01_DB_DSN pointing at an old file).
    os.chmod(data / "agentcluster.db", 0o644)
    store = await open_state_store(settings)
    await store.close()
    assert _mode(data / "agentcluster.db") == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_another_owners_file_is_reported_not_changed(settings: Settings) -> None:
    make_private_dir(settings.data_dir)
    foreign = settings.data_dir / "demo-api-key"
    foreign.write_text("x")
    os.chmod(foreign, 0o644)
    os.chown(foreign, 65534, 65534)
    report = secure_data_dir(settings)
    assert _mode(foreign) == 0o644
    assert len(report.warnings) == 1
    assert "demo-api-key is accessible to group or others (mode 644)" in report.warnings[0]
    assert "owned by uid 65534" in report.warnings[0] and "chmod 600" in report.warnings[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_the_data_dir_keeps_only_the_search_bit_another_owners_service_needs(
    settings: Settings,
) -> None:
    # As `make deps-up` leaves it: PostgreSQL's data (owned by postgres) under a 0701 data dir.
    data = make_private_dir(settings.data_dir)
    service = data / "postgres"
    service.mkdir(mode=0o700)
    os.chown(service, 65534, 65534)
    os.chmod(data, 0o755)
    secure_data_dir(settings)
    assert _mode(data) == 0o711  # search only: nothing can be listed
    assert _mode(service) == 0o700
    os.rmdir(service)
    secure_data_dir(settings)
    assert _mode(data) == 0o700


def test_make_private_dir_creates_each_missing_level_private(
    tmp_path: Path, loose_umask: None
) -> None:
    make_private_dir(tmp_path / "a" / "b" / "c")
    assert [_mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        make_private_dir(tmp_path / "file")


def test_private_files_are_private_from_the_first_byte(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "d" / "secret"
    write_private_text(path, "one")
    write_private_text(path, "two")
    assert path.read_text() == "two" and _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary left
    assert create_private_file(tmp_path / "d" / "new") is True
    assert create_private_file(tmp_path / "d" / "new") is False
    assert _mode(tmp_path / "d" / "new") == 0o600
    assert tighten(tmp_path / "missing") is None
