"""The web console without Ray: its files (served with CSP, revalidation and an SPA fallback),
the static guard against HTML sinks in its scripts, and its API routes over a fake probe."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agentcluster.config import load_settings
from agentcluster.console import (
    BreakerOut,
    ClusterOut,
    ConsoleAssets,
    HostOut,
    NoClusterProbe,
    PoolOut,
    breakers_from_metrics,
    cluster_router,
    include_console,
    read_cluster,
)
from agentcluster.domain import ApiKey
from agentcluster.errors import DependencyUnavailable
from agentcluster.gateway import GatewayService
from agentcluster.gateway._problems import install_problem_handlers

STATIC = Path(__file__).resolve().parents[2] / "agentcluster" / "console" / "static"
ADMIN_KEY = "admin-key-for-console-tests"
TENANT_KEY = "ac_tenant-key-for-console-tests"


def _client(app: FastAPI, root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://console.test")


@pytest.fixture
async def ui() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(include_console(FastAPI())) as client:
        yield client


# -- files ------------------------------------------------------------------------------------


def test_the_packaged_files_include_the_page_and_every_module_it_imports() -> None:
    assets = ConsoleAssets.packaged()
    assert assets.asset("js/app.js") is not None and assets.asset("style.css") is not None
    for script in STATIC.rglob("*.js"):
        for target in re.findall(r'from "(\.{1,2}/[^"]+)"', script.read_text()):
            imported = (script.parent / target).resolve().relative_to(STATIC.resolve())
            assert assets.asset(imported.as_posix()) is not None, f"{script.name} imports {target}"


def test_no_script_writes_html_strings_into_the_page() -> None:
    # Model and tool output is untrusted: text goes in as text nodes, never through a sink that
    # parses HTML (the page's Trusted Types policy would also make such a call throw).
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
    )
    for script in STATIC.rglob("*.js"):
        assert not sinks.search(script.read_text()), script.name


async def test_the_page_is_served_with_a_strict_policy_and_revalidation(
    ui: httpx.AsyncClient,
) -> None:
    page = await ui.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "require-trusted-types-for 'script'" in policy and "'unsafe-inline'" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    assert '<base href="/ui/">' in page.text
    again = await ui.get("/ui/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    script = await ui.get("/ui/js/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "content-security-policy" in script.headers
    head = await ui.head("/ui/style.css")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len((STATIC / "style.css").read_bytes())


async def test_deep_links_get_the_page_and_missing_files_a_404(ui: httpx.AsyncClient) -> None:
    deep = await ui.get("/ui/sessions/abc")
    assert deep.status_code == 200 and '<base href="/ui/">' in deep.text
    missing = await ui.get("/ui/js/missing.js")
    assert missing.status_code == 404 and "content-security-policy" in missing.headers
    bare = await ui.get("/ui")
    assert bare.status_code == 308 and bare.headers["location"] == "/ui/"


async def test_behind_a_route_prefix_the_page_points_at_the_prefix() -> None:
    async with _client(include_console(FastAPI()), root_path="/console") as client:
        page = await client.get("/console/ui/sessions/abc")
        assert '<base href="/console/ui/">' in page.text
        bare = await client.get("/console/ui")
        assert bare.headers["location"] == "/console/ui/"


def test_assets_need_an_index() -> None:
    with pytest.raises(ValueError, match=r"index\.html"):
        ConsoleAssets({"app.js": b""})


# -- the cluster view -------------------------------------------------------------------------

RAY_METRICS = """\
# HELP ray_agentcluster_llm_breaker_state Circuit breaker state per model.
# TYPE ray_agentcluster_llm_breaker_state gauge
ray_agentcluster_llm_breaker_state{Component="core_worker",WorkerId="a",model="gpt-x"} 0.0
ray_agentcluster_llm_breaker_state{Component="core_worker",WorkerId="b",model="gpt-x"} 2.0
ray_agentcluster_llm_breaker_state{Component="core_worker",WorkerId="b",model="local/demo"} 1.0
# HELP ray_agentcluster_sessions_active Sessions activated on a host.
# TYPE ray_agentcluster_sessions_active gauge
ray_agentcluster_sessions_active{host="h-0",model="not-a-breaker"} 3.0
"""


def test_breaker_states_come_from_the_metrics_and_the_worst_process_wins() -> None:
    breakers = {b.model: b.state for b in breakers_from_metrics(RAY_METRICS)}
    assert breakers == {"gpt-x": "open", "local/demo": "half-open"}
    assert breakers_from_metrics("") == []


HOST = HostOut(
    host_id="h-0", active_sessions=2, running_turns=1, subscribers=1, activations=3, passivations=1
)
POOL = PoolOut(
    pool="p-tools",
    min_size=1,
    max_size=4,
    size=1,
    starting=0,
    idle=1,
    leased=0,
    waiters=0,
    leases_granted=5,
    exhausted=0,
    members_failed=0,
)


class FakeProbe:
    """The ClusterProbe port with canned answers; ``slow`` parts never answer."""

    def __init__(self, *, failing: str | None = None, slow: str | None = None) -> None:
        self.failing = failing
        self.slow = slow

    async def _answer(self, part: str, value: list[object]) -> list[object]:
        if part == self.failing:
            raise DependencyUnavailable("ray", f"{part} unreachable")
        if part == self.slow:
            await asyncio.sleep(60)
        return value

    async def hosts(self) -> list[HostOut]:
        return await self._answer("hosts", [HOST])  # type: ignore[return-value]

    async def pools(self) -> list[PoolOut]:
        return await self._answer("pools", [POOL])  # type: ignore[return-value]

    async def breakers(self) -> list[BreakerOut]:
        return await self._answer(  # type: ignore[return-value]
            "breakers", [BreakerOut(model="m", state="closed")]
        )


async def test_a_part_that_fails_or_hangs_is_named_and_the_rest_still_shows() -> None:
    whole = await read_cluster(FakeProbe())
    assert whole.hosts == [HOST] and whole.pools == [POOL] and whole.problems == []
    broken = await read_cluster(FakeProbe(failing="pools", slow="breakers"), timeout_s=0.05)
    assert broken.hosts == [HOST] and broken.pools == [] and broken.breakers == []
    assert len(broken.problems) == 2
    assert any(p.startswith("pools: ") and "unreachable" in p for p in broken.problems)
    assert "breakers: no answer within 0.05 s" in broken.problems


async def test_without_an_injected_probe_each_part_is_named_in_problems() -> None:
    cluster = await read_cluster(NoClusterProbe())
    assert (cluster.hosts, cluster.pools, cluster.breakers) == ([], [], [])
    assert sorted(p.partition(":")[0] for p in cluster.problems) == ["breakers", "hosts", "pools"]
    assert all("no cluster probe" in p for p in cluster.problems)


class FakeStore:
    async def authenticate(self, secret: str) -> ApiKey | None:
        if secret != TENANT_KEY:
            return None
        now = datetime.now(UTC)
        return ApiKey(key_id="k-1", tenant_id="t-1", name="ui", prefix="ac_t", created_at=now)


class FakeRuntime:
    store = FakeStore()
    router = object()


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings({"auth": {"admin_key": ADMIN_KEY}, "policy": {"url": None}})
    app = FastAPI()
    install_problem_handlers(app)
    app.state.service = GatewayService(
        runtime=FakeRuntime(), settings=settings, profiles={}  # type: ignore[arg-type]
    )
    app.include_router(cluster_router(lambda service: FakeProbe()))
    async with _client(app) as client:
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_whoami_tells_the_admin_key_from_a_tenant_key(api: httpx.AsyncClient) -> None:
    admin = await api.get("/v1/whoami", headers=_bearer(ADMIN_KEY))
    assert admin.json() == {"admin": True, "tenant_id": None, "key_id": None}
    tenant = await api.get("/v1/whoami", headers=_bearer(TENANT_KEY))
    assert tenant.json() == {"admin": False, "tenant_id": "t-1", "key_id": "k-1"}
    wrong = await api.get("/v1/whoami", headers=_bearer("ac_nope"))
    assert wrong.status_code == 401 and wrong.json()["type"].endswith("/unauthorized")
    basic = await api.get("/v1/whoami", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and basic.headers["www-authenticate"] == "Bearer"


async def test_only_the_admin_key_sees_the_cluster(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/cluster")).status_code == 401
    tenant = await api.get("/v1/cluster", headers=_bearer(TENANT_KEY))
    assert tenant.status_code == 403 and tenant.json()["type"].endswith("/forbidden")
    admin = await api.get("/v1/cluster", headers=_bearer(ADMIN_KEY))
    assert admin.status_code == 200
    cluster = ClusterOut.model_validate(admin.json())
    assert cluster.hosts == [HOST] and cluster.pools == [POOL] and cluster.problems == []
