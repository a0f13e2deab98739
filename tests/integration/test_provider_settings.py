"""Provider settings on real services: secrets at rest in Redis and in the embedded SQLite table,
wrong keys, rotation (through the CLI), changes reaching other processes' resolvers, and the HTTP
router (admin only, masked, problem+json) with test calls to the fake LLM over loopback.

Every test has its own Redis key prefix (runtime namespace), secret and model names. After each
test the captured logs and output are searched for the secret: it must appear nowhere.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken
from fastapi import FastAPI
from sqlalchemy import select

from agentcluster.cli import main
from agentcluster.cli._secrets import run_secrets_rotate
from agentcluster.config import Settings, load_settings
from agentcluster.errors import ConflictError, SecretKeyError
from agentcluster.gateway import GatewayService
from agentcluster.gateway._problems import install_problem_handlers
from agentcluster.gateway._settings_api import include_settings_api
from agentcluster.providers import (
    KeyFile,
    ProviderService,
    ProviderSettingsIn,
    SqlSettingsStore,
    StaticKeys,
    StoredSettings,
    key_source,
    open_provider_resolver,
    open_provider_service,
)
from agentcluster.runtime import Runtime
from agentcluster.store import SqlStateStore, open_store
from agentcluster.store.models import EventRow
from agentcluster.testing.fake_llm import FakeLLM
from tests.conftest import eventually, service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN_KEY = "admin-" + "k" * 32
PROBLEM = "application/problem+json"


def fernet_key() -> str:
    return Fernet.generate_key().decode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def secret() -> str:
    return f"sk-it-{uuid.uuid4().hex}"


@pytest.fixture
def namespace() -> str:
    return f"ac-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_url() -> str:
    return service("SA01_REDIS_URL")


@pytest.fixture
async def raw_redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    keys = [key async for key in client.scan_iter(f"{namespace}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def no_secret_leaks(
    secret: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Every log record (DEBUG and up, LiteLLM's too) and all output: never the secret."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    records = [r for phase in ("setup", "call") for r in caplog.get_records(phase)]
    captured = capsys.readouterr()
    everything = "\n".join(formatter.format(r) for r in records) + captured.out + captured.err
    assert everything.strip(), "nothing was captured: the grep would prove nothing"
    assert secret not in everything


def redis_settings(redis_url: str, namespace: str, **crypto: str) -> Settings:
    return load_settings(
        {"redis": {"url": redis_url}, "runtime": {"namespace": namespace}, "crypto": crypto}
    )


def settings_body(
    secret: str, *, model: str = "demo", api_base: str = "http://127.0.0.1:9/v1"
) -> ProviderSettingsIn:
    return ProviderSettingsIn.model_validate(
        {
            "providers": [
                {
                    "name": "local",
                    "kind": "openai",
                    "api_base": api_base,
                    "api_key": secret,
                    "models": [model],
                },
                {"name": "second", "kind": "openai", "api_key": secret[::-1], "models": ["x"]},
            ],
            "agents": {"default": {"model": f"local/{model}"}},
        }
    )


# --- secrets at rest in Redis -----------------------------------------------------------------


async def test_the_redis_value_is_not_the_plaintext(
    redis_url: str,
    namespace: str,
    secret: str,
    raw_redis: aioredis.Redis,
    no_secret_leaks: None,
) -> None:
    key = fernet_key()
    providers = await open_provider_service(redis_settings(redis_url, namespace, fernet_key=key))
    try:
        out = await providers.put(settings_body(secret))
    finally:
        await providers.aclose()
    assert out.providers[0].api_key == f"sk-…{secret[-4:]}"
    stored = await raw_redis.hgetall(f"{namespace}:settings:llm.providers")
    assert set(stored) == {"version", "document", "updated_at"} and stored["version"] == "1"
    for value in stored.values():
        assert secret not in value and secret[::-1] not in value and value != secret
    token = StoredSettings.model_validate_json(stored["document"]).providers[0].api_key_token
    assert token is not None and Fernet(key).decrypt(token.encode()).decode() == secret


async def test_a_wrong_key_is_a_clear_error_naming_the_variable(
    redis_url: str, namespace: str, secret: str, raw_redis: aioredis.Redis, no_secret_leaks: None
) -> None:
    right, wrong = fernet_key(), fernet_key()
    writer = await open_provider_service(redis_settings(redis_url, namespace, fernet_key=right))
    await writer.put(settings_body(secret))
    await writer.aclose()
    reader = await open_provider_service(redis_settings(redis_url, namespace, fernet_key=wrong))
    resolver = await open_provider_resolver(redis_settings(redis_url, namespace, fernet_key=wrong))
    try:
        with pytest.raises(SecretKeyError) as on_get:
            await reader.get()
        with pytest.raises(SecretKeyError) as on_route:
            await resolver.route("local/demo")
    finally:
        await reader.aclose()
        await resolver.aclose()
    for error in (on_get.value, on_route.value):
        assert error.message.startswith("SA01_CRYPTO_FERNET_KEY: this key cannot decrypt")
        assert right not in error.message and wrong not in error.message
        logging.getLogger("test").info("refused: %s", error)


async def test_without_a_key_production_refuses_to_store_secrets(
    redis_url: str, namespace: str, secret: str, raw_redis: aioredis.Redis, no_secret_leaks: None
) -> None:
    from agentcluster.errors import ConfigError

    providers = await open_provider_service(redis_settings(redis_url, namespace))
    try:
        with pytest.raises(ConfigError) as refused:
            await providers.put(settings_body(secret))
    finally:
        await providers.aclose()
    assert refused.value.message.startswith("SA01_CRYPTO_FERNET_KEY: not set; SA01_REDIS_URL")
    assert await raw_redis.exists(f"{namespace}:settings:llm.providers") == 0
    logging.getLogger("test").info("refused: %s", refused.value)


# --- rotation ---------------------------------------------------------------------------------


async def test_rotation_keeps_every_secret_readable_and_the_old_key_opens_none(
    redis_url: str,
    namespace: str,
    secret: str,
    raw_redis: aioredis.Redis,
    no_secret_leaks: None,
) -> None:
    old, new = fernet_key(), fernet_key()
    before = redis_settings(redis_url, namespace, fernet_key=old)
    writer = await open_provider_service(before)
    shown_before = await writer.put(settings_body(secret))
    await writer.aclose()
    # A host already on "<new>,<old>" (a rolling restart) reads both before and after.
    rolling = await open_provider_resolver(
        redis_settings(redis_url, namespace, fernet_key=f"{new},{old}")
    )
    assert (await rolling.route("local/demo")).api_key == secret  # type: ignore[union-attr]

    out = io.StringIO()
    settings = redis_settings(redis_url, namespace, fernet_key=old, new_fernet_key=new)
    assert await run_secrets_rotate(settings, None, out) == 0
    printed = out.getvalue()
    assert "rotated 2 secret(s) of 2 provider(s)" in printed and "version 2" in printed
    assert "set SA01_CRYPTO_FERNET_KEY to the new key" in printed
    for clear in (secret, old, new):
        assert clear not in printed
    print(printed)

    document = await raw_redis.hget(f"{namespace}:settings:llm.providers", "document")
    tokens = StoredSettings.model_validate_json(document or "{}").tokens()
    assert sorted(Fernet(new).decrypt(t.encode()).decode() for t in tokens) == sorted(
        [secret, secret[::-1]]
    )
    for token in tokens:
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(token.encode())
    after = await open_provider_service(redis_settings(redis_url, namespace, fernet_key=new))
    stale = await open_provider_service(before)
    try:
        shown_after = await after.get()
        with pytest.raises(SecretKeyError):
            await stale.get()
    finally:
        await after.aclose()
        await stale.aclose()
    assert [p.api_key for p in shown_after.providers] == [p.api_key for p in shown_before.providers]
    assert (await rolling.refresh()) == 2
    assert (await rolling.route("second/x")).api_key == secret[::-1]  # type: ignore[union-attr]
    await rolling.aclose()


async def test_the_rotate_command_runs_from_the_environment(
    redis_url: str,
    namespace: str,
    secret: str,
    raw_redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = fernet_key(), fernet_key()
    writer = await open_provider_service(redis_settings(redis_url, namespace, fernet_key=old))
    await writer.put(settings_body(secret))
    await writer.aclose()
    monkeypatch.setenv("SA01_REDIS_URL", redis_url)
    monkeypatch.setenv("SA01_RUNTIME_NAMESPACE", namespace)
    monkeypatch.setenv("SA01_CRYPTO_FERNET_KEY", old)
    monkeypatch.delenv("SA01_CRYPTO_NEW_FERNET_KEY", raising=False)
    # main() runs its own event loop, like the real command: off this test's loop.
    code = await asyncio.to_thread(main, ["secrets", "rotate"])
    assert code == 2
    assert "SA01_CRYPTO_NEW_FERNET_KEY: not set" in capsys.readouterr().err
    monkeypatch.setenv("SA01_CRYPTO_NEW_FERNET_KEY", new)
    assert await asyncio.to_thread(main, ["secrets", "rotate"]) == 0
    printed = capsys.readouterr()
    assert "rotated 2 secret(s)" in printed.out
    for clear in (secret, old, new):
        assert clear not in printed.out + printed.err
    reader = await open_provider_service(redis_settings(redis_url, namespace, fernet_key=new))
    assert (await reader.get()).version == 2
    await reader.aclose()


# --- changes reach every process --------------------------------------------------------------


async def test_a_change_reaches_resolvers_of_other_processes_without_restart(
    redis_url: str,
    namespace: str,
    secret: str,
    raw_redis: aioredis.Redis,
    no_secret_leaks: None,
) -> None:
    key = fernet_key()
    settings = redis_settings(redis_url, namespace, fernet_key=key).model_copy(deep=True)
    settings.llm.settings_refresh_s = 0.2
    hosts = [await open_provider_resolver(settings) for _ in range(2)]
    writer = await open_provider_service(settings)
    try:
        for host in hosts:
            assert await host.route("local/demo") is None  # nothing configured yet
        await writer.put(settings_body(secret))

        async def everyone_routes(base: str) -> bool:
            routes = [await host.route("local/demo") for host in hosts]
            return all(r is not None and r.api_base == base for r in routes)

        await eventually(lambda: everyone_routes("http://127.0.0.1:9/v1"), timeout=10)
        await writer.put(settings_body(secret, api_base="http://127.0.0.1:10/v1"))
        await eventually(lambda: everyone_routes("http://127.0.0.1:10/v1"), timeout=10)
        assert [host.version for host in hosts] == [2, 2]
    finally:
        await writer.aclose()
        for host in hosts:
            await host.aclose()


# --- the embedded default: the state store's settings table -----------------------------------


def files_containing(directory: Path, text: str) -> list[str]:
    """Files under ``directory`` (the database, its WAL, the key file...) holding ``text``."""
    return [
        str(path)
        for path in directory.rglob("*")
        if path.is_file() and text.encode() in path.read_bytes()
    ]


async def test_compare_and_set_lets_one_of_two_writers_win(store: SqlStateStore) -> None:
    """On SQLite and PostgreSQL: the same version written twice at once is one write, one 409."""
    settings_store = SqlSettingsStore(store)
    base = await settings_store.version()
    outcomes = await asyncio.gather(
        settings_store.write({"providers": [], "agents": {}}, base),
        settings_store.write({"providers": [], "agents": {"a": {"model": "p/m"}}}, base),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["ConflictError", "int"]
    assert await settings_store.version() == base + 1
    with pytest.raises(ConflictError):
        await settings_store.write({}, base)
    newest = await settings_store.read()
    assert newest.version == base + 1 and newest.updated_at is not None


async def test_embedded_mode_shares_settings_and_key_across_processes(
    tmp_path: Path, secret: str, no_secret_leaks: None
) -> None:
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'agentcluster.db'}"
    key_file = tmp_path / "data" / "fernet.key"
    settings = load_settings(
        {"db": {"dsn": dsn}, "redis": {"url": None}, "crypto": {"key_file": key_file}}
    ).model_copy(deep=True)
    settings.llm.settings_refresh_s = 0.2
    assert isinstance(key_source(settings), KeyFile)
    # Two processes of one machine: each opens its own state store on the same file.
    gateway_store, host_store = await open_store(dsn), await open_store(dsn)
    providers = await open_provider_service(settings, state_store=gateway_store)
    host = await open_provider_resolver(settings, state_store=host_store)
    try:
        assert await host.route("local/demo") is None
        await providers.put(settings_body(secret))
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        async def host_sees(api_key: str) -> bool:
            route = await host.route("local/demo")
            return route is not None and route.api_key == api_key

        await eventually(lambda: host_sees(secret), timeout=10)
        assert files_containing(tmp_path, secret) == []

        old_key = key_file.read_text().strip()
        out = io.StringIO()
        assert await run_secrets_rotate(settings, None, out) == 0
        assert f"the new key replaced {key_file}" in out.getvalue()
        print(out.getvalue())
        new_key = key_file.read_text().strip()
        assert new_key != old_key and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert not KeyFile(key_file).pending.exists()
        for token in StoredSettings.of((await SqlSettingsStore(host_store).read()).data).tokens():
            with pytest.raises(InvalidToken):
                Fernet(old_key).decrypt(token.encode())
        # The host follows the replaced key file and the new version, with no restart.
        other = f"{secret}-next"
        await providers.put(settings_body(other))
        await eventually(lambda: host_sees(other), timeout=10)
        shown = await providers.get()
        assert shown.providers[0].api_key == f"sk-…{other[-4:]}"
    finally:
        await providers.aclose()
        await host.aclose()
        await gateway_store.close()
        await host_store.close()


# --- the HTTP router --------------------------------------------------------------------------


class Api:
    """A FastAPI app of just the settings router, authenticated by the real gateway service."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, tenant_key: str) -> None:
        self.app = app
        self.client = client
        self.tenant_key = tenant_key

    async def call(
        self, method: str, path: str, key: str | None = ADMIN_KEY, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return await self.client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def api(
    tmp_path: Path, redis_url: str, namespace: str, raw_redis: aioredis.Redis
) -> AsyncIterator[Api]:
    state_store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    tenant = await state_store.create_tenant("settings-tests")
    _key, tenant_key = await state_store.create_api_key(tenant.tenant_id, "not-admin")
    settings = load_settings(
        {
            "auth": {"admin_key": ADMIN_KEY},
            "redis": {"url": redis_url},
            "runtime": {"namespace": namespace},
            "crypto": {"fernet_key": fernet_key()},
        }
    )
    app = FastAPI()
    install_problem_handlers(app)
    include_settings_api(app)
    runtime = Runtime(state_store, router=None)  # type: ignore[arg-type]  # auth needs the store only
    app.state.service = GatewayService(runtime, settings, profiles={}, policy=None)
    app.state.providers = await open_provider_service(settings, known_agents={"default"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield Api(app, client, tenant_key)
    await app.state.providers.aclose()
    await state_store.close()


PATH = "/v1/settings/providers"


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    return str(response.json()["type"]).rsplit("/", 1)[-1]


def put_body(secret: str, **overrides: Any) -> dict[str, Any]:
    data = settings_body(secret).model_dump(mode="json", exclude_none=True)
    data.update(overrides)
    return data


async def test_the_router_refuses_callers_without_the_admin_key(
    api: Api, secret: str, no_secret_leaks: None
) -> None:
    assert (await api.call("GET", PATH, key=None)).status_code == 401
    assert problem_type(await api.call("GET", PATH, key="not-a-key-at-all")) == "unauthorized"
    for method, path, body in (
        ("GET", PATH, None),
        ("PUT", PATH, put_body(secret)),
        ("PUT", PATH, {"providers": "not a list"}),  # 403 before the body is even judged
        ("POST", f"{PATH}/local/test", None),
    ):
        response = await api.call(method, path, key=api.tenant_key, json=body)
        assert response.status_code == 403 and problem_type(response) == "forbidden"
        assert "admin key" in response.json()["detail"]
    assert (await api.call("GET", PATH)).json()["version"] == 0  # nothing was stored


async def test_the_router_stores_masks_and_keeps_a_masked_key(
    api: Api, secret: str, namespace: str, raw_redis: aioredis.Redis, no_secret_leaks: None
) -> None:
    put = await api.call("PUT", PATH, json=put_body(secret))
    assert put.status_code == 200, put.text
    assert secret not in put.text and put.json()["providers"][0]["api_key"] == f"sk-…{secret[-4:]}"
    got = await api.call("GET", PATH)
    assert got.status_code == 200 and secret not in got.text
    shown = got.json()
    document = await raw_redis.hget(f"{namespace}:settings:llm.providers", "document")
    tokens_before = StoredSettings.model_validate_json(document or "{}").tokens()
    # The UI sends back what it was shown: the secrets stay as they were.
    again = await api.call(
        "PUT",
        PATH,
        json={"version": shown["version"], "providers": shown["providers"], "agents": {}},
    )
    assert again.status_code == 200 and again.json()["version"] == 2
    document = await raw_redis.hget(f"{namespace}:settings:llm.providers", "document")
    assert StoredSettings.model_validate_json(document or "{}").tokens() == tokens_before
    stale = await api.call("PUT", PATH, json={**put_body(secret), "version": 1})
    assert stale.status_code == 409 and problem_type(stale) == "conflict"


async def test_the_router_validates_with_problem_details(
    api: Api, secret: str, no_secret_leaks: None
) -> None:
    cases: list[tuple[Any, int, str, str]] = [
        (put_body(secret, agents={"default": {"model": "ghost/demo"}}), 422,
         "validation-failed", "provider 'ghost' of 'ghost/demo' is not configured"),
        (put_body(secret, agents={"nobody": {"model": "local/demo"}}), 422,
         "validation-failed", "agents.nobody: no such agent profile (known: default)"),
        ({"providers": [{"name": "local", "kind": "openai", "models": ["m"],
                         "api_base": "file:///etc/passwd"}]}, 422,
         "validation-failed", "providers.0.api_base: expected an http(s)"),
        ({"providers": [{"name": "local", "kind": "openai", "models": ["m"],
                         "api_key": "sk-…0000"}]}, 422,
         "validation-failed", "providers.local.api_key: a masked value"),
    ]  # fmt: skip
    for body, status, kind, detail in cases:
        response = await api.call("PUT", PATH, json=body)
        assert (response.status_code, problem_type(response)) == (status, kind), response.text
        assert detail in response.json()["detail"]
        assert secret not in response.text
    malformed = await api.call(
        "PUT", PATH, content=b'{"providers": [', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and problem_type(malformed) == "malformed-json"
    bad_name = await api.call("POST", f"{PATH}/Not%20A%20Name/test")
    assert bad_name.status_code == 422 and problem_type(bad_name) == "validation-failed"
    missing = await api.call("POST", f"{PATH}/ghost/test")
    assert missing.status_code == 404 and problem_type(missing) == "not-found"
    assert (await api.call("GET", PATH)).json()["version"] == 0


async def test_test_connection_reaches_the_fake_llm_and_reports_a_closed_port(
    api: Api, secret: str, fake_llm: FakeLLM, no_secret_leaks: None
) -> None:
    model = f"probe-{uuid.uuid4().hex[:8]}"
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    body = put_body(secret)
    body["providers"][0].update(api_base=fake_llm.base_url, models=[model])
    body["providers"].append(
        {"name": "dead", "kind": "openai", "api_base": dead, "api_key": secret, "models": ["m"]}
    )
    body["agents"] = {"default": {"model": f"local/{model}"}}
    assert (await api.call("PUT", PATH, json=body)).status_code == 200

    works = await api.call("POST", f"{PATH}/local/test")
    assert works.status_code == 200, works.text
    result = works.json()
    assert (result["provider"], result["model"], result["ok"]) == ("local", model, True)
    sent = [r for r in fake_llm.requests if r.model == model]
    assert len(sent) == 1 and sent[0].headers["authorization"] == f"Bearer {secret}"
    assert sent[0].max_tokens == 1

    fails = await api.call("POST", f"{PATH}/dead/test", json={"model": "m"})
    assert fails.status_code == 200, fails.text
    failure = fails.json()
    assert (failure["ok"], failure["status"]) == (False, None)
    assert failure["detail"].startswith("cannot connect"), failure["detail"]
    assert secret not in works.text + fails.text


async def test_a_wrong_key_on_the_router_is_a_misconfiguration_naming_the_variable(
    api: Api, secret: str, no_secret_leaks: None
) -> None:
    assert (await api.call("PUT", PATH, json=put_body(secret))).status_code == 200
    providers: ProviderService = api.app.state.providers
    wrong = ProviderService(providers.store, StaticKeys((fernet_key(),)))
    api.app.state.providers = wrong
    try:
        response = await api.call("GET", PATH)
    finally:
        api.app.state.providers = providers
    assert response.status_code == 500 and problem_type(response) == "misconfigured"
    assert response.json()["detail"].startswith("SA01_CRYPTO_FERNET_KEY: this key cannot decrypt")


async def test_no_secret_reaches_the_events(
    tmp_path: Path, secret: str, no_secret_leaks: None
) -> None:
    """Settings changes record no events; the state store's outbox never sees a secret."""
    dsn = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    state_store = await open_store(dsn)
    settings = load_settings(
        {"db": {"dsn": dsn}, "redis": {"url": None}, "crypto": {"fernet_key": fernet_key()}}
    )
    providers = await open_provider_service(settings, state_store=state_store)
    try:
        await providers.put(settings_body(secret))
        async with state_store.engine.connect() as connection:
            events = (await connection.execute(select(EventRow))).all()
    finally:
        await providers.aclose()
        await state_store.close()
    assert secret not in repr(events)
    logging.getLogger("test").info("%d event(s) after the change", len(events))
