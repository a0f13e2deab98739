"""The CLI commands that talk to a gateway over HTTP: where it is, with which key, ``status`` and
``keys``.

A gateway URL comes from ``--url``, else ``AGENTCLUSTER_URL``, else this machine's gateway settings
(``SA01_GATEWAY_HOST``/``SA01_GATEWAY_PORT``, where ``agentcluster up`` starts it). A tenant key
comes from ``--key``, else ``AGENTCLUSTER_API_KEY``, else the demo key that demo mode keeps under
the data dir.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal, TextIO

from agentcluster.api import KeyOut
from agentcluster.client import ApiError, Client, ConnectionFailed
from agentcluster.config import Settings, env
from agentcluster.errors import ConfigError

__all__ = [
    "local_url",
    "ready_probe",
    "resolve_admin_key",
    "resolve_api_key",
    "resolve_url",
    "run_keys_create",
    "run_keys_list",
    "run_keys_revoke",
    "run_status",
]

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def local_url(settings: Settings) -> str:
    """The URL of the gateway that ``agentcluster serve`` starts with ``settings``."""
    host = settings.gateway.host
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"  # bound to every interface: loopback reaches it
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.gateway.port}"


def resolve_url(flag: str | None, settings: Settings) -> str:
    """``--url``, else ``AGENTCLUSTER_URL``, else :func:`local_url`."""
    return (flag or env("AGENTCLUSTER_URL") or local_url(settings)).rstrip("/")


def resolve_api_key(flag: str | None, settings: Settings) -> str | None:
    """``--key``, else ``AGENTCLUSTER_API_KEY``, else the demo key file when it exists."""
    key = flag or env("AGENTCLUSTER_API_KEY")
    if key:
        return key
    demo = settings.data_dir / "demo-api-key"
    if demo.is_file():
        return demo.read_text().strip() or None
    return None


def resolve_admin_key(flag: str | None, settings: Settings) -> str:
    """``--admin-key``, else ``SA01_AUTH_ADMIN_KEY``.

    Raises:
        ConfigError: neither is set.
    """
    key = flag or settings.auth.admin_key
    if not key:
        raise ConfigError("SA01_AUTH_ADMIN_KEY: not set; pass --admin-key or set the variable")
    return key


def ready_probe(url: str) -> Literal["ready", "degraded"] | None:
    """One quick ``/v1/ready``: its status, or None when the gateway does not answer (yet)."""
    try:
        with Client(url, timeout=3.0, retries=0) as client:
            return client.ready().status
    except (ConnectionFailed, ApiError):
        return None  # not listening yet, or a proxy/Serve still starting: keep waiting


def run_status(client: Client, url: str, out: TextIO) -> int:
    """Print the gateway URL, its health and each dependency's readiness; 1 unless ready."""
    print(f"gateway     {url}", file=out)
    started = time.perf_counter()
    client.health()
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"health      ok        {elapsed_ms:7.1f} ms", file=out)
    ready = client.ready()
    print(f"ready       {ready.status}", file=out)
    for dependency in ready.dependencies:
        # Latency and detail come only with the admin key (status sends it when configured).
        latency = "" if dependency.latency_ms is None else f"{dependency.latency_ms:7.1f} ms"
        line = f"  {dependency.name:<11} {dependency.state:<9} {latency:>10}"
        print(f"{line}  {dependency.detail or ''}".rstrip(), file=out)
    return 0 if ready.status == "ready" else 1


def run_keys_create(
    client: Client,
    name: str,
    tenant_id: str | None,
    tenant_name: str | None,
    out: TextIO,
    roles: Sequence[str] = (),
) -> int:
    """Create a key and print it, with its secret (shown this once)."""
    created = client.create_key(name, tenant_id=tenant_id, tenant_name=tenant_name, roles=roles)
    print(f"key_id      {created.key_id}", file=out)
    print(f"tenant_id   {created.tenant_id}", file=out)
    print(f"name        {created.name}", file=out)
    if created.roles:
        print(f"roles       {', '.join(created.roles)}", file=out)
    print(f"secret      {created.secret}", file=out)
    print("(the secret is shown only this once: store it now)", file=out)
    return 0


_KEY_COLUMNS = (("key_id", 36), ("tenant_id", 36), ("prefix", 12), ("created", 25))


def _row(*cells: str) -> str:
    widths = [width for _name, width in _KEY_COLUMNS] + [25, 0]
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _key_row(key: KeyOut) -> str:
    revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
    created = key.created_at.isoformat(timespec="seconds")
    return _row(key.key_id, key.tenant_id, key.prefix, created, revoked, key.name)


def run_keys_list(client: Client, tenant_id: str | None, out: TextIO) -> int:
    """Print the keys (of one tenant, or all) as a table."""
    keys = client.list_keys(tenant_id)
    print(_row(*(name for name, _width in _KEY_COLUMNS), "revoked", "name"), file=out)
    for key in keys.items:
        print(_key_row(key), file=out)
    return 0


def run_keys_revoke(client: Client, key_id: str, out: TextIO) -> int:
    """Revoke a key."""
    client.revoke_key(key_id)
    print(f"revoked {key_id}", file=out)
    return 0
