"""The stack a chaos run owns: private PostgreSQL, Redis, OPA and Kafka on free loopback ports
(tests/support), its own local Ray with the gateway deployed by Serve on a free port, the outbox
relay, and the fake LLM. Everything here may be killed or stopped: nothing else uses it.

All Ray calls of the chaos tooling live in this module (finding and killing hosts and replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from cryptography.fernet import Fernet

from agentcluster.config import Settings, load_settings, prepare_offline_environment
from agentcluster.store import SqlStateStore, open_store
from agentcluster.testing.fake_llm import FakeLLM, Script, Timing
from benchmarks._common import free_port
from tests.support.private_kafka import PrivateKafka
from tests.support.private_services import (
    PrivateOpa,
    PrivatePostgres,
    PrivateRedis,
    PrivateService,
)

__all__ = ["AGENT", "ChaosStack", "ServiceName", "StackConfig", "start_stack"]

ServiceName = Literal["postgresql", "redis", "opa", "kafka"]
AGENT = "chaos"
PROFILE = {
    "name": AGENT,
    "model": "fake-a",
    "system_prompt": "You are a chaos test agent.",
    "tools": ["calculator", "current_time"],
    "max_steps": 4,
    "max_output_tokens": 128,
    "context_window": 4096,
    "turn_retry": {"on_interrupt": "resume", "max_attempts": 3},
}


@dataclass(frozen=True)
class StackConfig:
    """What to start.

    Attributes:
        replicas: gateway replicas (fixed: min = max).
        hosts: session hosts (``SA01_RUNTIME_MIN_HOSTS``).
        llm_latency_s: the fake LLM's answer time, so that turns are in flight when faults hit.
        gateway_options: Serve deployment options over DEFAULT_OPTIONS (e.g. max_ongoing_requests).
        limits: ``SA01_LIMITS_*`` overrides.
        kafka: start a private broker and the relay (off: events stay in the store).
    """

    replicas: int = 2
    hosts: int = 2
    llm_latency_s: float = 0.2
    gateway_options: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    kafka: bool = True


@dataclass
class ChaosStack:
    """A running stack and the faults it can suffer."""

    settings: Settings
    url: str
    admin_key: str
    services: dict[ServiceName, PrivateService]
    store: SqlStateStore

    # -- dependencies -------------------------------------------------------------------------

    async def stop_service(self, name: ServiceName) -> None:
        """Stop one private dependency (by the PID we started)."""
        await asyncio.to_thread(self.services[name].stop)

    async def start_service(self, name: ServiceName) -> None:
        """Start it again on the same port with the same data; returns once it answers."""
        await asyncio.to_thread(self.services[name].start)

    # -- Ray: hosts and replicas ----------------------------------------------------------------

    async def host_of(self, tenant_id: str, session_id: str) -> str | None:
        """The name of the host actor that owns the session's activation now (the store's
        owner is the host id: the actor's name, or the name and ``~<incarnation>``)."""
        owner = (await self.store.get_session(tenant_id, session_id)).owner_host
        if owner is None:
            return None
        names = self.host_names()
        return next((name for name in names if owner.split("~", 1)[0] == name), None)

    async def kill_host(self, host_name: str, timeout_s: float = 10.0) -> int | None:
        """SIGKILL the process of host actor ``host_name``; returns the PID killed, or None when
        the host did not say its PID within ``timeout_s`` (still restarting, or gone)."""
        import ray

        try:
            handle = ray.get_actor(host_name, namespace=self.settings.runtime.namespace)
            pid = int(await asyncio.wait_for(handle.pid.remote(), timeout_s))
        except (TimeoutError, ValueError, ray.exceptions.RayError):
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    async def hosts_whole(self, timeout_s: float = 120.0) -> None:
        """Wait until every placed and standby host answers ``ready`` (replacements of killed
        hosts started and warm)."""
        from actors.session import RaySessionRouter

        await asyncio.wait_for(RaySessionRouter(self.settings).ensure_hosts(), timeout_s)

    def host_names(self) -> list[str]:
        """Named host actors of this stack (not the controller)."""
        import ray

        runtime = self.settings.runtime
        names = ray.util.list_named_actors(all_namespaces=True)
        return sorted(
            entry["name"]
            for entry in names
            if entry["namespace"] == runtime.namespace
            and entry["name"].startswith(f"{runtime.host_prefix}-")
            and not entry["name"].endswith("-controller")
        )

    def kill_gateway_replica(self) -> str:
        """``ray.kill`` one gateway replica actor (Serve starts a new one); returns its name."""
        import ray

        replicas = sorted(
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == "serve"
            and entry["name"].startswith("SERVE_REPLICA::")
            and "Gateway" in entry["name"]
        )
        if not replicas:
            raise RuntimeError("no gateway replica to kill")
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        return replicas[0]

    async def kill_tool_actor(self) -> str:
        """SIGKILL the process of one tool pool member (its pool replaces it); returns its name.

        Raises:
            RuntimeError: no tool actor runs (the pool starts its members on first use).
        """
        import ray

        runtime = self.settings.runtime
        prefix = f"pool-{runtime.host_prefix}-tools-"
        members = sorted(
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == runtime.namespace and entry["name"].startswith(prefix)
        )
        if not members:
            raise RuntimeError("no tool actor to kill")
        handle = ray.get_actor(members[0], namespace=runtime.namespace)
        health: dict[str, Any] = await asyncio.wait_for(handle.health.remote(), 30)
        os.kill(int(health["actor_pid"]), signal.SIGKILL)
        return members[0]

    # -- API ------------------------------------------------------------------------------------

    async def new_tenant(self, name: str) -> tuple[str, str]:
        """A new tenant and API key through the admin API: (tenant id, key)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            response = await client.post(
                "/v1/keys",
                json={"name": name, "tenant_name": f"{name}-{uuid.uuid4().hex[:6]}"},
                headers={"Authorization": f"Bearer {self.admin_key}"},
            )
        if response.status_code != 201:
            raise RuntimeError(f"create tenant: {response.status_code} {response.text}")
        body = response.json()
        return str(body["tenant_id"]), str(body["secret"])


def _settings(
    directory: Path, services: dict[ServiceName, PrivateService], llm: FakeLLM, config: StackConfig
) -> tuple[Settings, str]:
    agents = directory / "agents"
    agents.mkdir()
    (agents / f"{AGENT}.yaml").write_text(yaml.safe_dump(PROFILE))
    admin_key = "admin-" + uuid.uuid4().hex
    run = uuid.uuid4().hex[:6]
    overrides: dict[str, dict[str, Any]] = {
        "db": {"dsn": services["postgresql"].url},
        "redis": {"url": services["redis"].url},
        "policy": {"url": services["opa"].url},
        "kafka": {"bootstrap_servers": services["kafka"].url if "kafka" in services else None},
        "llm": {"api_base": llm.base_url, "api_key": "test", "max_retries": 1},
        "auth": {"admin_key": admin_key},
        "crypto": {"fernet_key": Fernet.generate_key().decode()},
        "runtime": {
            "agents_dir": agents,
            "host_prefix": f"chaos-{run}",
            "namespace": f"chaos-{run}",
            "min_hosts": config.hosts,
            "max_hosts": max(config.hosts, 8),
            "reconcile_interval_s": 2.0,
        },
        "tools": {"workspace_root": directory / "workspaces"},
    }
    # A request rate limit far above the load: it is never hit, but every request goes
    # through Redis's counters, so a Redis outage shows (fail closed, 503 naming redis).
    overrides["limits"] = {"requests_per_minute": 1_000_000} | config.limits
    return load_settings(overrides), admin_key


@contextlib.contextmanager
def _private_services(kafka: bool) -> Iterator[dict[ServiceName, PrivateService]]:
    started: dict[ServiceName, PrivateService] = {}
    try:
        started["postgresql"] = PrivatePostgres().start()
        started["redis"] = PrivateRedis().start()
        started["opa"] = PrivateOpa().start()
        if kafka:
            started["kafka"] = PrivateKafka().start()
        yield started
    finally:
        for service in started.values():
            service.close()


@contextlib.contextmanager
def _ray(directory: Path) -> Iterator[None]:
    import ray

    prepare_offline_environment()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(directory / "ray"),
        _system_config={"enable_worker_prestart": True},
    )
    try:
        yield
    finally:
        ray.shutdown()


def _deploy(settings: Settings, config: StackConfig) -> str:
    from ray import serve

    from actors.relay import start_relay
    from deployments.gateway import build_gateway

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = {
        "autoscaling_config": {"min_replicas": config.replicas, "max_replicas": config.replicas}
    }
    serve.run(
        build_gateway(settings, **(options | config.gateway_options)),
        name="agentcluster",
        route_prefix="/",
    )
    if settings.kafka.bootstrap_servers is not None:
        start_relay(settings)
    return f"http://127.0.0.1:{port}"


async def _wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/v1/health")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"gateway at {url} not healthy within {timeout_s} s")


@contextlib.asynccontextmanager
async def start_stack(config: StackConfig | None = None) -> AsyncIterator[ChaosStack]:
    """Start everything (about a minute on 2 cores), yield the stack, stop it all again."""
    config = config or StackConfig()
    # Ray's socket paths must stay short: a short directory under /tmp.
    directory = Path(tempfile.mkdtemp(prefix="acx-", dir="/tmp"))
    llm = FakeLLM(Script(), timing=Timing(latency_s=config.llm_latency_s)).start_in_thread()
    try:
        with _private_services(config.kafka) as services, _ray(directory):
            settings, admin_key = _settings(directory, services, llm, config)
            url = await asyncio.to_thread(_deploy, settings, config)
            await _wait_ready(url)
            store = await open_store(settings.db_dsn, migrate=False)
            try:
                yield ChaosStack(settings, url, admin_key, services, store)
            finally:
                await store.close()
                from ray import serve

                serve.shutdown()
    finally:
        llm.stop()
        if os.environ.get("CHAOS_KEEP_LOGS"):  # Ray's logs of the run, for a post-mortem
            print(f"chaos: stack directory kept: {directory}", flush=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
