"""Provider settings without services: validation, masking, the service's PUT semantics, test
calls through a recording probe, and the resolver's refresh (a fake clock, a memory store)."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from agentcluster.errors import (
    ConfigError,
    ConflictError,
    DependencyUnavailable,
    NotFoundError,
    SecretKeyError,
    ValidationFailed,
)
from agentcluster.llm import ChatMessage, DeltaSink, LlmRequest, LlmResult
from agentcluster.providers import (
    AgentModels,
    ModelRoute,
    ProbeOutcome,
    ProviderResolver,
    ProviderService,
    ProviderSettingsIn,
    ProviderTestIn,
    SettingsModels,
    StaticKeys,
    StoredSettings,
)
from tests.support.settings_store import MemorySettingsStore

pytestmark = pytest.mark.timeout(30)

SECRET = "sk-unit-provider-secret-7f3a9c1e"
OTHER_SECRET = "sk-unit-other-secret-00aa11bb22"


def keys() -> StaticKeys:
    return StaticKeys((Fernet.generate_key().decode(),))


def body(**changes: object) -> ProviderSettingsIn:
    data: dict[str, object] = {
        "providers": [
            {
                "name": "local",
                "kind": "openai",
                "api_base": "http://127.0.0.1:9/v1/",
                "api_key": SECRET,
                "models": ["demo", "demo-large"],
            },
            {"name": "spare", "kind": "ollama", "models": ["llama3:8b"]},
        ],
        "agents": {
            "default": {"model": "local/demo", "fallback_models": ["spare/llama3:8b"]},
        },
    }
    data.update(changes)
    return ProviderSettingsIn.model_validate(data)


class RecordingProbe:
    """Stands in for the LiteLLM call: records the route, answers as told."""

    def __init__(self, outcome: ProbeOutcome) -> None:
        self.outcome = outcome
        self.routes: list[ModelRoute] = []

    async def __call__(self, route: ModelRoute, timeout_s: float) -> ProbeOutcome:
        self.routes.append(route)
        return self.outcome


def service(
    store: MemorySettingsStore | None = None,
    source: StaticKeys | None = None,
    probe: RecordingProbe | None = None,
) -> ProviderService:
    return ProviderService(
        store or MemorySettingsStore(),
        source or keys(),
        known_agents={"default", "helper"},
        probe=probe,
    )


# --- validation -------------------------------------------------------------------------------


def first_error(data: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as invalid:
        ProviderSettingsIn.model_validate(data)
    error = invalid.value.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def provider(**changes: object) -> dict[str, object]:
    return {"name": "local", "kind": "openai", "models": ["demo"], **changes}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"providers": [provider(name="Bad Name")]}, "providers.0.name: String should match"),
        ({"providers": [provider(api_base="ftp://x")]}, "providers.0.api_base: expected an http"),
        (
            {"providers": [provider(api_base="http://u:p@127.0.0.1/v1")]},
            "providers.0.api_base: put credentials in api_key",
        ),
        ({"providers": [provider(models=[])]}, "providers.0.models: List should have at least 1"),
        ({"providers": [provider(models=["a", "a"])]}, "model 'a' is listed twice"),
        ({"providers": [provider(), provider()]}, "provider 'local' is listed twice"),
        ({"providers": [provider(api_key="sk with space")]}, "no spaces or control characters"),
        ({"providers": [provider(extra=1)]}, "providers.0.extra: Extra inputs are not permitted"),
        (
            {"providers": [provider()], "agents": {"default": {"model": "nope/demo"}}},
            "agents.default: provider 'nope' of 'nope/demo' is not configured (configured: local)",
        ),
        (
            {"providers": [provider()], "agents": {"default": {"model": "local/other"}}},
            "agents.default: 'local/other': provider 'local' lists no model 'other'",
        ),
        (
            {"agents": {"default": {"model": "demo"}}},
            "agents.default.model: String should match",
        ),
        (
            {
                "providers": [provider()],
                "agents": {"default": {"model": "local/demo", "fallback_models": ["local/demo"]}},
            },
            "model 'local/demo' is listed twice",
        ),
        ({"version": -1}, "version: Input should be greater than or equal to 0"),
    ],
)
def test_bad_settings_say_what_is_wrong(data: dict[str, object], expected: str) -> None:
    assert expected in first_error(data)


def test_a_model_reference_may_contain_slashes_and_the_base_url_is_normalised() -> None:
    settings = ProviderSettingsIn.model_validate(
        {
            "providers": [
                provider(name="router", models=["meta-llama/llama-3-8b"], api_base=" http://h/v1/ ")
            ],
            "agents": {"default": {"model": "router/meta-llama/llama-3-8b"}},
        }
    )
    assert settings.providers[0].api_base == "http://h/v1"
    assert settings.agents["default"].model == "router/meta-llama/llama-3-8b"


def test_a_provider_never_shows_its_key_in_repr() -> None:
    settings = body()
    assert SECRET not in repr(settings) and SECRET not in str(settings)


# --- the service ------------------------------------------------------------------------------


async def test_put_stores_tokens_and_answers_masked() -> None:
    store = MemorySettingsStore()
    out = await service(store).put(body())
    assert out.version == 1
    local, spare = out.providers
    assert local.api_key == "sk-…9c1e" and spare.api_key is None
    assert local.api_base == "http://127.0.0.1:9/v1"
    assert out.agents["default"].fallback_models == ["spare/llama3:8b"]
    assert SECRET not in out.model_dump_json()
    assert SECRET not in store.raw()
    token = StoredSettings.of(store.document.data).tokens()[0]
    assert token != SECRET


async def test_get_is_masked_and_empty_settings_need_no_key() -> None:
    store = MemorySettingsStore()
    nothing = await ProviderService(store, StaticKeys(())).get()
    assert (nothing.version, nothing.providers, nothing.agents) == (0, [], {})
    source = keys()
    await service(store, source).put(body())
    shown = await service(store, source).get()
    assert [p.api_key for p in shown.providers] == ["sk-…9c1e", None]
    assert SECRET not in shown.model_dump_json()


async def test_sending_the_masked_key_back_keeps_the_stored_secret() -> None:
    store, source = MemorySettingsStore(), keys()
    providers = service(store, source)
    first = await providers.put(body())
    token = StoredSettings.of(store.document.data).tokens()[0]
    again = body(providers=[p.model_dump() for p in first.providers], version=first.version)
    second = await providers.put(again)
    assert second.version == 2 and second.providers[0].api_key == first.providers[0].api_key
    assert StoredSettings.of(store.document.data).tokens() == [token]
    # A new clear key replaces it; null removes it.
    replaced = [{**first.providers[0].model_dump(), "api_key": OTHER_SECRET}]
    third = await providers.put(body(providers=replaced, agents={}))
    assert third.providers[0].api_key == "sk-…bb22"
    cleared = [{**first.providers[0].model_dump(), "api_key": None}]
    fourth = await providers.put(body(providers=cleared, agents={}))
    assert (
        fourth.providers[0].api_key is None
        and store.document.data["providers"][0]["api_key_token"] is None
    )


async def test_a_masked_key_that_is_not_the_stored_one_is_refused() -> None:
    store = MemorySettingsStore()
    providers = service(store)
    await providers.put(body())
    for masked in ("sk-…0000", "…"):
        wrong = [provider(api_key=masked)]
        with pytest.raises(ValidationFailed) as refused:
            await providers.put(body(providers=wrong, agents={}))
        assert refused.value.message.startswith("providers.local.api_key: a masked value")
    renamed = [provider(name="moved", api_key="sk-…9c1e")]
    with pytest.raises(ValidationFailed):
        await providers.put(body(providers=renamed, agents={}))
    assert store.document.version == 1


async def test_a_stale_version_or_an_unknown_agent_changes_nothing() -> None:
    store = MemorySettingsStore()
    providers = service(store)
    await providers.put(body())
    with pytest.raises(ConflictError, match="at version 1, not 0"):
        await providers.put(body(version=0))
    unknown = {"ghost": {"model": "local/demo"}}
    with pytest.raises(ValidationFailed, match=r"^agents.ghost: no such agent profile"):
        await providers.put(body(agents=unknown))
    assert store.document.version == 1


async def test_a_wrong_key_is_a_clear_error_on_get() -> None:
    store = MemorySettingsStore()
    await service(store).put(body())
    with pytest.raises(SecretKeyError, match=r"^SA01_CRYPTO_FERNET_KEY: this key cannot decrypt"):
        await service(store).get()


async def test_no_key_refuses_to_store_a_secret_but_stores_settings_without_one() -> None:
    from agentcluster.providers import NoKey

    store = MemorySettingsStore()
    providers = ProviderService(store, NoKey("SA01_REDIS_URL is set"))
    with pytest.raises(ConfigError, match=r"^SA01_CRYPTO_FERNET_KEY: not set"):
        await providers.put(body())
    assert store.document.version == 0
    keyless = [provider(), {"name": "spare", "kind": "ollama", "models": ["x"]}]
    assert (await providers.put(body(providers=keyless, agents={}))).version == 1


async def test_a_test_call_uses_the_clear_key_and_reports_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = ProbeOutcome(
        ok=False, latency_ms=3.0, detail=f"HTTP 401: bad key {SECRET}", status=401
    )
    probe = RecordingProbe(failing)
    store = MemorySettingsStore()
    providers = service(store, probe=probe)
    await providers.put(body())
    result = await providers.test("local", ProviderTestIn(model="demo-large"))
    assert probe.routes == [
        ModelRoute("local/demo-large", "openai/demo-large", "http://127.0.0.1:9/v1", SECRET)
    ]
    assert (result.ok, result.status, result.model) == (False, 401, "demo-large")
    assert result.detail == "HTTP 401: bad key sk-…9c1e"
    probe.outcome = ProbeOutcome(ok=True, latency_ms=1.0, detail="answered")
    spare = await providers.test("spare")
    assert (spare.ok, spare.model, probe.routes[-1].api_key) == (True, "llama3:8b", None)
    with pytest.raises(NotFoundError, match="provider 'ghost' is not configured"):
        await providers.test("ghost")
    assert SECRET not in caplog.text and "local" in caplog.text


# --- the resolver -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def stored(
    store: MemorySettingsStore, source: StaticKeys, settings: ProviderSettingsIn
) -> None:
    await ProviderService(store, source).put(settings)


async def test_the_resolver_routes_configured_providers_and_passes_others() -> None:
    store, source = MemorySettingsStore(), keys()
    await stored(store, source, body())
    resolver = ProviderResolver(store, source, refresh_s=5.0)
    route = await resolver.route("local/demo")
    assert route == ModelRoute("local/demo", "openai/demo", "http://127.0.0.1:9/v1", SECRET)
    assert SECRET not in repr(route)
    assert await resolver.route("openai/gpt-4o") is None
    assert await resolver.route("demo") is None
    assert await resolver.agent_models("default") == AgentModels(
        model="local/demo", fallback_models=["spare/llama3:8b"]
    )
    assert await resolver.agent_models("helper") is None


async def test_changes_are_seen_after_the_refresh_interval_with_one_cheap_check() -> None:
    store, source, clock = MemorySettingsStore(), keys(), Clock()
    await stored(store, source, body())
    resolver = ProviderResolver(store, source, refresh_s=2.0, clock=clock)
    assert (await resolver.route("local/demo")) is not None
    reads, checks = store.reads, store.version_checks
    for _ in range(50):
        await resolver.route("local/demo")
    assert (store.reads, store.version_checks) == (reads, checks)  # served from memory
    await stored(
        store, source, body(providers=[provider(name="local", kind="anthropic")], agents={})
    )
    assert (await resolver.route("local/demo")).litellm_model == "openai/demo"  # type: ignore[union-attr]
    clock.now += 2.0
    route = await resolver.route("local/demo")
    assert route is not None and route.litellm_model == "anthropic/demo" and route.api_key is None
    assert resolver.version == 2
    clock.now += 2.0
    reads = store.reads
    await resolver.route("local/demo")
    assert store.reads == reads  # same version: only the version was read


async def test_a_failed_refresh_keeps_the_last_good_settings_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store, source, clock = MemorySettingsStore(), keys(), Clock()
    await stored(store, source, body())
    resolver = ProviderResolver(store, source, refresh_s=1.0, clock=clock)
    await resolver.route("local/demo")
    store.down = True
    for _ in range(3):
        clock.now += 1.0
        assert (await resolver.route("local/demo")) is not None
    assert caplog.text.count("keeping version 1; refreshing failed") == 1
    store.down = False
    # Secrets re-encrypted under a key this process lacks: still the old version, still working.
    await stored(store, keys(), body())
    clock.now += 1.0
    route = await resolver.route("local/demo")
    assert route is not None and route.api_key == SECRET and resolver.version == 1
    assert "SA01_CRYPTO_FERNET_KEY: this key cannot decrypt" in caplog.text
    assert SECRET not in caplog.text


async def test_the_first_load_fails_loudly() -> None:
    store = MemorySettingsStore()
    store.down = True
    with pytest.raises(DependencyUnavailable):
        await ProviderResolver(store, keys()).route("local/demo")


class RecordingLLM:
    def __init__(self) -> None:
        self.requests: list[LlmRequest] = []

    async def complete(self, request: LlmRequest, on_delta: DeltaSink | None = None) -> LlmResult:
        self.requests.append(request)
        return LlmResult(model=request.model, content="ok")


async def test_an_agents_models_from_the_settings_replace_its_profiles() -> None:
    store, source = MemorySettingsStore(), keys()
    await stored(store, source, body())
    resolver = ProviderResolver(store, source)
    inner = RecordingLLM()
    request = LlmRequest(
        model="openai/demo",
        fallback_models=["openai/other"],
        messages=[ChatMessage(role="user", content="hi")],
    )
    await SettingsModels(inner, resolver, "default").complete(request)
    await SettingsModels(inner, resolver, "helper").complete(request)
    assert [(r.model, r.fallback_models) for r in inner.requests] == [
        ("local/demo", ["spare/llama3:8b"]),
        ("openai/demo", ["openai/other"]),
    ]
