"""The OpenAPI document is a contract the real gateway keeps: schemathesis (``--checks all``, its
coverage, fuzzing and stateful phases, bounded examples) runs against a gateway of its own, once
with a tenant key and once with the admin key, and any finding fails the test.

The gateway is a second app in the e2e Serve instance with its own database, admin key, agents
and session hosts: the admin run's stateful phase revokes every key it can list and creates
tenants at will, which must touch nothing another test uses. The fake LLM answers the turns.

Left out of the runs, each for a reason that is not the contract:
- the ``use_after_free`` check on reads of a session: ``DELETE /v1/sessions/{id}`` closes the
  session, which stays readable (``status: closed``, its history kept) by design;
- the ``positive_data_acceptance`` check on ``PUT /v1/settings/providers``: its body's rules
  across fields (an agent's models name providers of the same body, known agents only, a URL a
  provider can be reached at) cannot be said in JSON Schema;
- the one stream that never ends by itself (``GET /v1/sessions/{id}/events`` follows the
  session until the client leaves): schemathesis reads a whole body;
- ``webhook`` properties: a turn's outcome is POSTed to that URL, and the host's resolver would
  look up every generated host name (tests only talk to loopback); the copy of the document
  schemathesis reads has no such property (the gateway's own document is unchanged);
- ``POST /v1/settings/providers/{name}/test`` with the admin key: it calls the provider at the
  ``api_base`` a request stored, which may be any address (tests only talk to loopback); with a
  tenant key it is a 403 like any admin route and stays in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from agentcluster.config import Settings
from deployments.gateway import build_gateway
from tests.conftest import service
from tests.e2e.conftest import PROFILE
from tests.support.postgres import fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

APP = "contract"
PREFIX = "/contract"
ADMIN_KEY = "contract-admin-" + uuid.uuid4().hex
MAX_EXAMPLES = 5
"""Per operation and phase: enough to draw each constraint's edges, bounded for CI."""
SEED = 15
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
ENDLESS_STREAMS = r"^/v1/sessions/\{session_id\}/events$"
OUTBOUND = r"^/v1/settings/providers/\{name\}/test$"
CONFIG = """
# Every check, as --checks all (named on the command line it would also override the
# per-operation exceptions below).
[checks]
enabled = true

[[operations]]
include-path-regex = '^/v1/sessions/\\{session_id\\}'
checks.use_after_free.enabled = false

[[operations]]
include-path-regex = '^/v1/settings/providers$'
checks.positive_data_acceptance.enabled = false
"""


@dataclass(frozen=True)
class ContractGateway:
    url: str
    tenant_key: str


def _contract_settings(settings: Settings, dsn: str, agents: Path) -> Settings:
    """The e2e settings with this gateway's own database, admin key, agents and Ray names."""
    suffix = uuid.uuid4().hex[:6]
    return settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"dsn": dsn}),
            "auth": settings.auth.model_copy(update={"admin_key": ADMIN_KEY}),
            "runtime": settings.runtime.model_copy(
                update={
                    "agents_dir": agents,
                    "host_prefix": f"c{suffix}",
                    "namespace": f"contract-{suffix}",
                }
            ),
        }
    )


def _tenant_key(url: str) -> str:
    created = httpx.post(
        url + "/v1/keys",
        json={"name": "contract", "tenant_name": f"contract-{uuid.uuid4().hex[:8]}"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["secret"])


@pytest.fixture(scope="module")
def contract_gateway(
    gateway_url: str, e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContractGateway]:
    agents = tmp_path_factory.mktemp("contract-agents")
    for name in ("tester", "helper"):
        profile = {**PROFILE, "name": name, "tools": ["calculator"]}
        (agents / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    with fresh_database(service("SA01_DB_DSN"), prefix="ac_contract") as dsn:
        settings = _contract_settings(e2e_settings, dsn, agents)
        autoscaling = {"min_replicas": 1, "max_replicas": 1}
        serve.run(
            build_gateway(settings, autoscaling_config=autoscaling), name=APP, route_prefix=PREFIX
        )
        try:
            url = gateway_url + PREFIX
            yield ContractGateway(url=url, tenant_key=_tenant_key(url))
        finally:
            serve.delete(APP)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schemathesis") / "schemathesis.toml"
    path.write_text(CONFIG)
    return path


def _drop_property(schema: Any, name: str) -> None:
    """Remove property ``name`` from every object schema within ``schema``."""
    if isinstance(schema, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict) and name in properties:
            del properties[name]
            if name in schema.get("required", []):
                schema["required"] = [field for field in schema["required"] if field != name]
        for value in schema.values():
            _drop_property(value, name)
    elif isinstance(schema, list):
        for value in schema:
            _drop_property(value, name)


@pytest.fixture(scope="module")
def document(contract_gateway: ContractGateway, config_file: Path) -> Path:
    """The gateway's OpenAPI document with no ``webhook`` property (see the module's doc)."""
    response = httpx.get(contract_gateway.url + "/openapi.json", timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()
    _drop_property(served, "webhook")
    path = config_file.with_name("openapi.json")
    path.write_text(json.dumps(served))
    return path


def _schemathesis(
    url: str, document: Path, key: str, config: Path, *exclude: str
) -> subprocess.CompletedProcess[str]:
    assert url.startswith("http://127.0.0.1:")  # never anything but the loopback gateway
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        str(document),
        "--url",
        url,
        "--header",
        f"Authorization: Bearer {key}",
        "--phases",
        "coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
    ]
    if exclude:
        command += ["--exclude-path-regex", "|".join(exclude)]
    environment = {**os.environ, "NO_COLOR": "1"}  # a plain report
    return subprocess.run(
        command, capture_output=True, text=True, timeout=900, env=environment, check=False
    )


def _passed(run: subprocess.CompletedProcess[str]) -> bool:
    print(run.stdout)  # the report: shown when the test fails
    print(run.stderr, file=sys.stderr)
    return run.returncode == 0


def test_the_tenant_keys_view_of_the_api_keeps_its_openapi_contract(
    contract_gateway: ContractGateway, document: Path, config_file: Path
) -> None:
    url, key = contract_gateway.url, contract_gateway.tenant_key
    run = _schemathesis(url, document, key, config_file, ENDLESS_STREAMS)
    assert _passed(run), "schemathesis found responses the OpenAPI document does not describe"


def test_the_admin_keys_view_of_the_api_keeps_its_openapi_contract(
    contract_gateway: ContractGateway, document: Path, config_file: Path
) -> None:
    url = contract_gateway.url
    run = _schemathesis(url, document, ADMIN_KEY, config_file, ENDLESS_STREAMS, OUTBOUND)
    assert _passed(run), "schemathesis found responses the OpenAPI document does not describe"
