"""End-to-end fixtures: local Ray with the Serve app on loopback, PostgreSQL, the fake LLM."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet
from ray import serve

from agentcluster.config import Settings, load_settings
from agentcluster.testing.fake_llm import FakeLLM, Reply, Rule, ToolCall
from deployments.gateway import build_gateway
from tests.conftest import service
from tests.support.opa import tenant_policy  # noqa: F401  (the e2e tests import it from here)
from tests.support.otlp_receiver import OtlpReceiver

ADMIN_KEY = "admin-" + uuid.uuid4().hex
AUTH_CACHE_S = 1.0  # short, so the revocation test waits little
PROFILE = {
    "name": "tester",
    "model": "fake-a",
    "system_prompt": "You are a test agent.",
    "tools": ["calculator", "current_time"],
    "max_steps": 4,
    "max_output_tokens": 256,
    "context_window": 4096,
}


BROWSER_PROFILE = {
    "name": "surfer",
    "model": "fake-a",
    "system_prompt": "You are a test agent with a browser.",
    "tools": [
        "browser_navigate",
        "browser_state",
        "browser_type",
        "browser_select",
        "browser_click",
        "browser_extract",
        "browser_screenshot",
    ],
    "max_steps": 10,
    "max_output_tokens": 256,
    "context_window": 16000,
}


CODER_PROFILE = {
    "name": "coder",
    "model": "fake-a",
    "system_prompt": "You are a test agent that runs code.",
    "tools": ["python_exec", "file_read", "file_write", "file_list"],
    "max_steps": 4,
    "max_output_tokens": 256,
    "context_window": 16000,
}
WORKSPACE_MAX_BYTES = 8 * 1024 * 1024
HASTY_PROFILE = {**PROFILE, "name": "hasty", "approval_timeout_s": 2}
"""The tester whose tool calls, when a policy asks a person, expire unanswered after 2 s."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """The OTLP/HTTP receiver every e2e process exports its spans to (tracing is on for the
    whole e2e session, so the shared app is the one traced)."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def e2e_settings(
    postgres_dsn: str,
    fake_llm: FakeLLM,
    otlp_receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    agents = tmp_path_factory.mktemp("agents")
    (agents / "tester.yaml").write_text(yaml.safe_dump(PROFILE))
    (agents / "surfer.yaml").write_text(yaml.safe_dump(BROWSER_PROFILE))
    (agents / "coder.yaml").write_text(yaml.safe_dump(CODER_PROFILE))
    (agents / "hasty.yaml").write_text(yaml.safe_dump(HASTY_PROFILE))
    return load_settings(
        {
            "db": {"dsn": postgres_dsn},
            "llm": {"api_base": fake_llm.base_url, "api_key": "test", "max_retries": 1},
            "auth": {"admin_key": ADMIN_KEY, "cache_s": AUTH_CACHE_S},
            "policy": {"url": service("SA01_POLICY_URL")},
            "browser": {"pool_max": 1, "action_timeout_s": 20},
            "tools": {
                "workspace_root": tmp_path_factory.mktemp("workspaces"),
                "workspace_max_bytes": WORKSPACE_MAX_BYTES,
            },
            # Its own namespace: provider settings live in Redis under it, apart from other runs.
            "runtime": {
                "agents_dir": agents,
                "host_prefix": f"e{uuid.uuid4().hex[:6]}",
                "namespace": f"e2e-{uuid.uuid4().hex[:8]}",
            },
            "crypto": {"fernet_key": Fernet.generate_key().decode()},
            "schedules": {"min_interval_s": 1},  # a schedule test ticks every 2 s
            "tracing": {
                "exporter": "otlp",
                "endpoint": otlp_receiver.url,
                "service_name": "agentcluster-e2e",
                "export_delay_s": 0.2,
            },
        }
    )


@pytest.fixture(scope="session")
def gateway_url(ray_cluster: None, e2e_settings: Settings) -> Iterator[str]:
    """The Serve app on a loopback port, shared by the e2e tests."""
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_gateway(e2e_settings, autoscaling_config={"min_replicas": 2, "max_replicas": 2}),
        name="agentcluster",
        route_prefix="/",
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as client:
        yield client


async def new_tenant(http: httpx.AsyncClient, prefix: str = "t") -> tuple[str, str]:
    """A fresh tenant and an API key for it, through the admin API: (tenant id, key)."""
    response = await http.post(
        "/v1/keys",
        json={"name": "e2e", "tenant_name": f"{prefix}-{uuid.uuid4().hex[:8]}"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["tenant_id"]), str(response.json()["secret"])


def script_tool_turn(fake_llm: FakeLLM, token: str, call: ToolCall, answer: str) -> None:
    """The fake model calls ``call`` for a message containing ``token``, then answers
    ``answer`` once the tool's result is back."""
    fake_llm.script.add_rule(
        Rule(
            when=lambda r: token in str(r.messages) and r.messages[-1]["role"] == "tool",
            reply=Reply(content=answer),
        )
    )
    fake_llm.script.add_rule(Rule(when_last_user_contains=token, reply=Reply(tool_calls=[call])))


@pytest.fixture
async def tenant_key(http: httpx.AsyncClient) -> str:
    return (await new_tenant(http))[1]
