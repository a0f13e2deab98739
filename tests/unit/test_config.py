"""The settings tree: defaults, each bad value naming its variable, and the env-read rule."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agentcluster.config import flag, load_settings
from agentcluster.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

SA01 = [
    "SA01_DB_DSN",
    "SA01_KAFKA_BOOTSTRAP_SERVERS",
    "SA01_REDIS_URL",
    "SA01_POLICY_URL",
    "SA01_AUTH_INTERNAL_TOKEN",
    "SA01_CRYPTO_FERNET_KEY",
    "GATEWAY_PORT",
    "GATEWAY_HOST",
    "SA01_GATEWAY_PORT",
    "SA01_GATEWAY_HOST",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SA01:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_embedded_mode() -> None:
    settings = load_settings()
    assert settings.gateway.port == 21016
    assert settings.db.dsn is None
    assert settings.db_dsn.startswith("sqlite+aiosqlite:///")
    assert settings.kafka.bootstrap_servers is None
    assert settings.redis.url is None
    assert settings.policy.url is None


def test_good_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("SA01_DB_DSN", "postgresql://u:p@127.0.0.1:5432/db")
    monkeypatch.setenv("SA01_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092,127.0.0.1:9093")
    monkeypatch.setenv("SA01_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SA01_POLICY_URL", "http://127.0.0.1:8181/")
    monkeypatch.setenv("SA01_AUTH_INTERNAL_TOKEN", "x" * 32)
    monkeypatch.setenv("SA01_CRYPTO_FERNET_KEY", key)
    monkeypatch.setenv("GATEWAY_PORT", "8080")
    settings = load_settings()
    assert settings.db_dsn == "postgresql+asyncpg://u:p@127.0.0.1:5432/db"
    assert settings.policy.url == "http://127.0.0.1:8181"
    assert settings.crypto.fernet_key == key
    assert settings.gateway.port == 8080


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SA01_DB_DSN", "mysql://u:p@h/db"),
        ("SA01_DB_DSN", "not a url"),
        ("SA01_DB_POOL_SIZE", "0"),
        ("SA01_DB_MAX_OVERFLOW", "-1"),
        ("SA01_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1"),
        ("SA01_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:notaport"),
        ("SA01_REDIS_URL", "http://127.0.0.1:6379"),
        ("SA01_POLICY_URL", "ftp://127.0.0.1"),
        ("SA01_POLICY_URL", "http://127.0.0.1:99999"),
        ("SA01_AUTH_INTERNAL_TOKEN", "short"),
        ("SA01_CRYPTO_FERNET_KEY", "not-a-fernet-key"),
        ("SA01_CRYPTO_FERNET_KEY", "c2hvcnQ="),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_PORT", "eighty"),
        ("SA01_RELAY_BATCH_SIZE", "-1"),
        ("SA01_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: "), message
    assert "\n" not in message


def test_the_gateway_address_has_the_sa01_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_GATEWAY_HOST", "0.0.0.0")
    monkeypatch.setenv("SA01_GATEWAY_PORT", "8081")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = load_settings()
    assert (settings.gateway.host, settings.gateway.port) == ("0.0.0.0", 8081)
    monkeypatch.setenv("SA01_GATEWAY_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"^SA01_GATEWAY_PORT: "):
        load_settings()


def test_an_old_gateway_name_is_read_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "8082")
    with pytest.warns(FutureWarning, match=r"^GATEWAY_PORT is deprecated: set SA01_GATEWAY_PORT"):
        assert load_settings().gateway.port == 8082
    monkeypatch.setenv("SA01_GATEWAY_PORT", "8083")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name set: the old one is not read, no warning
        assert load_settings().gateway.port == 8083


def test_cross_field_rule_names_the_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_RELAY_BACKOFF_INITIAL_S", "10")
    monkeypatch.setenv("SA01_RELAY_BACKOFF_MAX_S", "1")
    with pytest.raises(ConfigError, match=r"^SA01_RELAY_.*backoff_initial_s must be <="):
        load_settings()


def test_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AC_TEST_FLAG", "yes")
    assert flag("AC_TEST_FLAG") is True
    monkeypatch.setenv("AC_TEST_FLAG", "maybe")
    with pytest.raises(ConfigError, match=r"^AC_TEST_FLAG: "):
        flag("AC_TEST_FLAG")
    monkeypatch.delenv("AC_TEST_FLAG")
    assert flag("AC_TEST_FLAG", default=True) is True


NAMES = {"environ", "getenv", "environb"}


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        attribute = isinstance(node, ast.Attribute) and node.attr in NAMES
        imported = (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in NAMES for alias in node.names)
        )
        if attribute or imported:
            lines.append(getattr(node, "lineno", 0))
    return lines


def test_only_config_reads_the_environment() -> None:
    offenders = []
    for package in ("agentcluster", "actors", "deployments"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "agentcluster" / "config.py":
                continue
            for line in _reads_environment(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == [], f"environment read outside agentcluster/config.py: {offenders}"


def test_the_env_guard_catches_a_read() -> None:
    assert _reads_environment(ast.parse("import os\nx = os.environ.get('A')\n")) == [2]
    assert _reads_environment(ast.parse("from os import getenv\n")) == [1]
