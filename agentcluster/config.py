"""The one place that reads the process environment.

Every other module gets its configuration from :func:`load_settings` (a typed, validated
tree) or, for the rare raw value, from :func:`env` / :func:`flag`. A test enforces that no
other module touches ``os.environ`` or ``os.getenv``.

A missing or malformed value raises :class:`~agentcluster.errors.ConfigError` whose message is one
line that starts with the variable's name, e.g. ``SA01_DB_DSN: unsupported scheme 'mysql' ...``.

Environment prefixes, one per audience (README, "Configuration"):

* ``SA01_``: the service's settings, read here into :class:`Settings` by every process of the
  cluster (gateway, session hosts, pools, relay, CLI commands that start or check them).
* ``AGENTCLUSTER_``: the client side only, ``AGENTCLUSTER_URL`` and ``AGENTCLUSTER_API_KEY``:
  which gateway the Python client and the CLI's remote commands talk to, with which key. The
  service never reads them.
* ``AC_``: the development tooling outside the package (``make deps-up``'s service scripts,
  ``cluster/local-ssh.sh``, the Makefile, the tests): local service ports and binaries.

Settings that once had another name are still read under it when the new one is unset, with a
``FutureWarning`` naming the new one (``_RENAMED``): ``GATEWAY_HOST``/``GATEWAY_PORT`` are now
``SA01_GATEWAY_HOST``/``SA01_GATEWAY_PORT``.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentcluster.errors import ConfigError

__all__ = [
    "AuthSettings",
    "BrowserSettings",
    "CryptoSettings",
    "DbSettings",
    "GatewaySettings",
    "KafkaSettings",
    "LimitSettings",
    "LlmSettings",
    "PolicySettings",
    "RedisSettings",
    "RelaySettings",
    "RuntimeSettings",
    "Settings",
    "ToolSettings",
    "TracingSettings",
    "env",
    "environment",
    "flag",
    "load_settings",
    "normalize_dsn",
    "prepare_offline_environment",
    "project_root",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env(name: str, default: str | None = None) -> str | None:
    """Return the raw value of environment variable ``name``, or ``default`` when unset."""
    return os.environ.get(name, default)


def flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (1/true/yes/on or 0/false/no/off).

    Raises:
        ConfigError: the value is set but is not a recognised boolean.
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected a boolean (1/0/true/false/yes/no/on/off), got {raw!r}")


def environment() -> dict[str, str]:
    """A copy of the whole environment, for handing to child processes (Ray runtime_env, etc.)."""
    return dict(os.environ)


def prepare_offline_environment() -> None:
    """Set the variables that keep LiteLLM, tiktoken and browser-use off the network.

    Call it before ``litellm`` or ``tiktoken`` is imported (the LLM adapter does, at its top):
    LiteLLM reads ``LITELLM_LOCAL_MODEL_COST_MAP`` at import, or it downloads the cost map; tiktoken
    downloads its encodings unless ``TIKTOKEN_CACHE_DIR`` points at the copies LiteLLM bundles.
    Values already set win (``setdefault``), so an operator can still override each one.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "false")
    os.environ.setdefault("BROWSER_USE_CLOUD_SYNC", "false")
    os.environ.setdefault("BROWSER_USE_VERSION_CHECK", "false")
    tokenizers = _litellm_tokenizers_dir()
    if tokenizers is not None:
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tokenizers))


def _litellm_tokenizers_dir() -> Path | None:
    # find_spec locates a top-level package without importing it (importing litellm takes seconds
    # and would fetch the cost map before the variable above is set).
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


def project_root() -> Path:
    """The repository root when running from a checkout, else the current directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


_SECTION = SettingsConfigDict(extra="ignore", case_sensitive=False, validate_default=True)


class DbSettings(BaseSettings):
    """State store (SQLAlchemy). Unset DSN means the embedded SQLite default."""

    model_config = SettingsConfigDict(env_prefix="SA01_DB_", **_SECTION)

    dsn: str | None = None
    pool_size: int = Field(default=5, ge=1, le=200)
    max_overflow: int = Field(default=5, ge=0, le=200)
    """Connections past ``pool_size`` a process may open under a burst (closed when
    returned). Every process with a store holds at most ``pool_size + max_overflow``: keep
    (gateway replicas + session hosts + standbys + 4) x that below the server's
    ``max_connections`` (100 by default), or a burst gets 503s naming the database."""
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    command_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """PostgreSQL: the longest one statement, or the wait for a pooled connection, may take
    (a database that stops answering fails requests with 503 after it instead of hanging)."""
    echo: bool = False

    @field_validator("dsn")
    @classmethod
    def _normalise_dsn(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return normalize_dsn(value)


_DSN_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def normalize_dsn(value: str) -> str:
    """The SQLAlchemy async URL for a database DSN (postgresql:// means asyncpg).

    Raises:
        ValueError: not a URL, or a database agentcluster does not support.
    """
    scheme, sep, rest = value.strip().partition("://")
    if not sep or not rest:
        raise ValueError("expected a URL such as postgresql://user:pass@host:5432/db")
    if scheme not in _DSN_SCHEMES:
        raise ValueError(f"unsupported scheme {scheme!r}; use postgresql:// or sqlite://")
    return f"{_DSN_SCHEMES[scheme]}://{rest}"


class KafkaSettings(BaseSettings):
    """Event log. Unset bootstrap servers means the relay is off and events stay in the store."""

    model_config = SettingsConfigDict(env_prefix="SA01_KAFKA_", **_SECTION)

    bootstrap_servers: str | None = None
    topics_file: Path = Field(default_factory=lambda: project_root() / "configs" / "topics.yaml")
    client_id: str = "agentcluster"
    request_timeout_ms: int = Field(default=15_000, ge=1_000, le=300_000)

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value.strip()


class RelaySettings(BaseSettings):
    """Outbox relay tuning."""

    model_config = SettingsConfigDict(env_prefix="SA01_RELAY_", **_SECTION)

    batch_size: int = Field(default=500, ge=1, le=10_000)
    poll_interval_s: float = Field(default=0.2, gt=0, le=60)
    backoff_initial_s: float = Field(default=0.2, gt=0, le=60)
    backoff_max_s: float = Field(default=5.0, gt=0, le=600)

    @model_validator(mode="after")
    def _backoff_order(self) -> RelaySettings:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must be <= backoff_max_s")
        return self


class RedisSettings(BaseSettings):
    """Rate limits, open-stream slots, daily budgets and provider settings (with their encrypted
    keys). Unset URL: rates and open streams are counted per process, budgets and settings are kept
    in the state store."""

    model_config = SettingsConfigDict(env_prefix="SA01_REDIS_", **_SECTION)

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("expected redis://host:port/db, rediss://... or unix://...")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("the URL has no host")
        return value.strip()


class PolicySettings(BaseSettings):
    """Policy engine. Unset URL means the same Rego evaluated in-process."""

    model_config = SettingsConfigDict(env_prefix="SA01_POLICY_", **_SECTION)

    url: str | None = None
    timeout_s: float = Field(default=2.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return _http_url(value)


class AuthSettings(BaseSettings):
    """API authentication."""

    model_config = SettingsConfigDict(env_prefix="SA01_AUTH_", **_SECTION)

    internal_token: str | None = None
    admin_key: str | None = None
    cache_s: float = Field(default=5.0, ge=0, le=3600)
    """How long a replica trusts a key it checked (0: check every request). A revoked key stops
    working at once on the replica that revoked it, and within this time on the others."""

    @field_validator("internal_token", "admin_key")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class CryptoSettings(BaseSettings):
    """Encryption of provider secrets (Fernet).

    ``fernet_key`` is one key, or several separated by commas during a rotation: the first
    encrypts, every one decrypts. Unset: the embedded mode (no Redis, SQLite) keeps a generated key
    in ``key_file``; anything else refuses to store secrets.
    """

    model_config = SettingsConfigDict(env_prefix="SA01_CRYPTO_", **_SECTION)

    fernet_key: str | None = Field(default=None, repr=False)
    new_fernet_key: str | None = Field(default=None, repr=False)
    """The key ``agentcluster secrets rotate`` re-encrypts every provider secret to."""
    key_file: Path | None = None
    """The embedded mode's generated key (default ``<data dir>/fernet.key``, mode 0600)."""

    @field_validator("fernet_key")
    @classmethod
    def _check_fernet(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        keys = [part.strip() for part in value.split(",")]
        for key in keys:
            _check_fernet_key(key)
        return ",".join(keys)

    @field_validator("new_fernet_key")
    @classmethod
    def _check_new_fernet(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "," in value:
            raise ValueError("one key only (the key to rotate to)")
        _check_fernet_key(value.strip())
        return value.strip()

    @property
    def fernet_keys(self) -> list[str]:
        """The configured keys, the encrypting one first (empty when unset)."""
        return self.fernet_key.split(",") if self.fernet_key else []


def _check_fernet_key(key: str) -> None:
    try:
        raw = base64.urlsafe_b64decode(key.encode())
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not url-safe base64 (generate one with Fernet.generate_key())") from exc
    if len(raw) != 32:
        raise ValueError("a Fernet key is 32 url-safe base64-encoded bytes")


class GatewaySettings(BaseSettings):
    """HTTP gateway."""

    model_config = SettingsConfigDict(env_prefix="SA01_GATEWAY_", **_SECTION)

    host: str = "127.0.0.1"
    port: int = Field(default=21016, ge=1, le=65535)
    access_log: bool = False
    """Ray Serve's access log: a line per request from the proxy and from the replica. Off by
    default: it is a tenth of the gateway's CPU per request, and request counts, latencies and
    statuses are in the Prometheus metrics and the traces already."""


class LlmSettings(BaseSettings):
    """LLM calls through LiteLLM: endpoint, per-call timeout, retries and circuit breaking.

    ``api_base`` set means every model goes to that OpenAI-compatible endpoint (a bare model name is
    sent as ``openai/<name>``); unset means LiteLLM routes by the model's provider prefix.
    """

    model_config = SettingsConfigDict(env_prefix="SA01_LLM_", **_SECTION)

    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Connecting to the provider and each wait for data (LiteLLM's timeout)."""
    call_timeout_s: float = Field(default=300.0, gt=0, le=7200)
    """One whole call, stream included: a stream still going past it fails the attempt
    (retried like a timeout), so no LLM call, and no turn, can hang."""
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=60)
    breaker_fail_max: int = Field(default=5, ge=1, le=1000)
    breaker_reset_s: float = Field(default=30.0, gt=0, le=3600)
    settings_refresh_s: float = Field(default=2.0, gt=0, le=3600)
    """How often a process checks whether the provider settings changed (they apply within it)."""
    probe_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """The timeout of a provider's test-connection call."""
    stream: Literal["listeners", "always"] = "listeners"
    """When an LLM call streams. ``listeners``: only while someone watches the session's live
    feed (an SSE stream, a streamed turn); otherwise the call is made whole, which costs a
    third of the CPU (LiteLLM parses and rebuilds every chunk) and the answer is the same.
    ``always``: every call streams."""

    @model_validator(mode="after")
    def _call_covers_its_waits(self) -> LlmSettings:
        if self.call_timeout_s < self.timeout_s:
            raise ValueError(
                "SA01_LLM_CALL_TIMEOUT_S must be >= SA01_LLM_TIMEOUT_S (a whole call includes "
                "its waits for data)"
            )
        return self

    @field_validator("api_base")
    @classmethod
    def _check_api_base(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("api_key")
    @classmethod
    def _blank_key_is_none(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None


class LimitSettings(BaseSettings):
    """Per-tenant limits: the defaults every tenant gets (``0``: unlimited).

    An operator overrides them for one tenant with ``PUT /v1/tenants/{tenant_id}/limits`` (kept in
    the state store); a process reuses a tenant's limits for ``refresh_s`` seconds.
    """

    model_config = SettingsConfigDict(env_prefix="SA01_LIMITS_", **_SECTION)

    requests_per_minute: int = Field(default=0, ge=0, le=1_000_000)
    """API requests per tenant in any 60 seconds (HTTP 429 with Retry-After past it)."""
    tokens_per_day: int = Field(default=0, ge=0, le=10**12)
    """LLM tokens (prompt + completion) per tenant per UTC day."""
    cost_per_day_usd: float = Field(default=0.0, ge=0, le=10**7)
    """LLM cost (LiteLLM's price of the usage) per tenant per UTC day, in US dollars."""
    max_open_streams: int = Field(default=16, ge=0, le=100_000)
    """Streams and waits a tenant may hold open at once (SSE event streams, streamed turns,
    ``?wait=true``, the MCP ``send_message``): past it HTTP 429 ``too-many-streams`` at once.
    Keep it below the gateway's ``max_ongoing_requests`` so no tenant can fill a replica."""
    replica_max_open_streams: int = Field(default=48, ge=1, le=100_000)
    """Streams and waits one gateway replica serves at once, all tenants together: past it
    HTTP 503 with Retry-After at once. Keep it below the gateway's ``max_ongoing_requests`` (64):
    the rest of a replica's request slots stay free for short requests, so open streams can
    never make Serve's proxy queue requests without an answer."""
    stream_lease_s: float = Field(default=30.0, ge=3, le=3600)
    """Expiry of an open stream's slot in Redis, renewed every third of it while the stream is
    open: the slots of a replica that died are free again after at most this long."""
    refresh_s: float = Field(default=5.0, ge=0, le=3600)
    """How long a process reuses a tenant's limits before reading its overrides again."""
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """Connect and command timeout of the limit counters in Redis."""

    @model_validator(mode="after")
    def _streams_fit_a_replica(self) -> LimitSettings:
        tenant, replica = self.max_open_streams, self.replica_max_open_streams
        if tenant > replica:
            raise ValueError(
                "SA01_LIMITS_MAX_OPEN_STREAMS must not be larger than "
                "SA01_LIMITS_REPLICA_MAX_OPEN_STREAMS (one tenant could fill a replica)"
            )
        return self


class RuntimeSettings(BaseSettings):
    """Session hosts: placement, capacity and lifecycle."""

    model_config = SettingsConfigDict(env_prefix="SA01_RUNTIME_", **_SECTION)

    agents_dir: Path = Field(default_factory=lambda: project_root() / "configs" / "agents")
    namespace: str = Field(default="agentcluster", pattern=r"^[A-Za-z0-9_.-]+$")
    host_prefix: str = Field(default="ac-host", pattern=r"^[a-z0-9-]+$")
    sessions_per_host: int = Field(default=500, ge=1, le=100_000)
    target_utilization: float = Field(default=0.8, gt=0, le=1)
    min_hosts: int = Field(default=1, ge=1, le=1000)
    max_hosts: int = Field(default=8, ge=1, le=1000)
    host_num_cpus: float = Field(default=0.0, ge=0, le=64)
    idle_passivate_s: float = Field(default=300.0, gt=0, le=86_400)
    reconcile_interval_s: float = Field(default=5.0, gt=0, le=3600)
    standby_hosts: int = Field(default=1, ge=0, le=100)
    """Hosts kept running beyond the ones sessions are placed on: a dead host's sessions move to
    the next live host at once, and with a small host set that is a standby."""
    host_down_s: float = Field(default=10.0, gt=0, le=3600)
    """How long a router skips a host whose call failed because it died, before trying it again
    (its replacement is started meanwhile; the skip ends as soon as that one is ready)."""
    drain_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long a host that is drained (scale-in, ``agentcluster down``, SIGTERM) waits for its
    sessions to stop and hand over their running turns before it exits anyway."""
    notify_timeout_s: float = Field(default=2.0, gt=0, le=600)
    """How long accepting a message waits to wake its session's host; past it (or with no live
    host) the message is still accepted and the host controller wakes the session later."""

    @model_validator(mode="after")
    def _bounds(self) -> RuntimeSettings:
        if self.min_hosts > self.max_hosts:
            raise ValueError("min_hosts must be <= max_hosts")
        return self


class ToolSettings(BaseSettings):
    """Tool actors: session workspaces, sandbox limits, fetch limits, MCP servers, pool sizes."""

    model_config = SettingsConfigDict(env_prefix="SA01_TOOLS_", **_SECTION)

    workspace_root: Path | None = None
    mcp_config: Path = Field(default_factory=lambda: project_root() / "configs" / "mcp.yaml")
    call_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    python_cpu_s: int = Field(default=10, ge=1, le=3600)
    python_memory_mb: int = Field(default=512, ge=16, le=65_536)
    python_wall_s: float = Field(default=30.0, gt=0, le=3600)
    python_max_processes: int = Field(default=64, ge=4, le=4096)
    python_tmp_mb: int = Field(default=64, ge=1, le=65_536)
    python_sandbox: Literal["bwrap", "unsafe-single-tenant"] = "bwrap"
    """``bwrap``: every python_exec in a bubblewrap sandbox, refused where it cannot be built.
    ``unsafe-single-tenant``: a plain subprocess of the actor's user that can read what that
    user can (development on a single-tenant machine only; warned about at every start)."""
    sandbox_bwrap: Path = Path("/usr/bin/bwrap")
    sandbox_python: Path = Path("/usr/bin/python3")
    sandbox_packages: list[Path] = Field(default_factory=list)
    """Directories of Python packages offered read-only to sandboxed code (on its sys.path)."""
    sandbox_uid: int = Field(default=65532, ge=1, le=2**32 - 2)
    sandbox_gid: int = Field(default=65532, ge=1, le=2**32 - 2)
    """The sandbox's user outside when the tool actor is root: its own, not Chromium's (the
    owner of a user namespace holds every capability in it, so no other process may share it)."""
    workspace_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024, le=2**40)
    workspace_max_files: int = Field(default=10_000, ge=1, le=10_000_000)
    workspace_retention_s: float = Field(default=7 * 86_400.0, gt=0, le=10 * 365 * 86_400)
    """How long a closed session's workspace is kept before it is removed."""
    fetch_max_bytes: int = Field(default=2_000_000, ge=1024, le=100_000_000)
    fetch_timeout_s: float = Field(default=20.0, gt=0, le=600)
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    pool_min: int = Field(default=1, ge=0, le=1000)
    pool_max: int = Field(default=4, ge=1, le=1000)
    lease_timeout_s: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _bounds(self) -> ToolSettings:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must be <= pool_max")
        return self


class BrowserSettings(BaseSettings):
    """Browser actors: Chromium binary, pool sizes, idle release of sticky leases."""

    model_config = SettingsConfigDict(env_prefix="SA01_BROWSER_", **_SECTION)

    chromium_path: Path = Path("/usr/bin/chromium")
    headless: bool = True
    pool_min: int = Field(default=0, ge=0, le=1000)
    pool_max: int = Field(default=2, ge=1, le=1000)
    lease_timeout_s: float = Field(default=10.0, gt=0, le=600)
    idle_release_s: float = Field(default=120.0, gt=0, le=86_400)
    action_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    task_max_steps: int = Field(default=10, ge=1, le=200)
    num_cpus: float = Field(default=0.0, ge=0, le=64)
    resource: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """A custom Ray resource each browser actor needs (one unit), e.g. ``browser`` on clusters
    whose browser nodes offer it (cluster/*.yaml); unset: any node."""
    run_as_uid: int = Field(default=65534, ge=1, le=2**31 - 1)
    """The unprivileged uid Chromium runs as when the actor runs as root (``nobody``); an actor
    that is not root runs Chromium as itself."""
    run_as_gid: int = Field(default=65534, ge=1, le=2**31 - 1)
    evaluate: Literal["never", "policy"] = "never"
    """browser_task's ``evaluate`` action (arbitrary JavaScript): ``never`` removes it;
    ``policy`` offers it when the tenant's policy allows the tool ``browser_evaluate``."""
    unsafe_no_sandbox: bool = False
    """UNSAFE for multiple tenants: run Chromium without its sandbox where the kernel refuses
    it (no user namespaces); without this setting such a browser does not start."""
    unsafe_no_egress_proxy: bool = False
    """UNSAFE for multiple tenants: Chromium connects directly, only the URL given to
    browser_navigate is checked (benchmark baselines only)."""

    @model_validator(mode="after")
    def _bounds(self) -> BrowserSettings:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must be <= pool_max")
        return self


class TracingSettings(BaseSettings):
    """OpenTelemetry traces: where each process sends its spans (``none``: nothing recorded).

    ``otlp`` batches spans to an OTLP/HTTP collector at ``endpoint`` (``/v1/traces`` is added
    when the URL has no path); ``memory`` keeps them in the process (tests).
    """

    model_config = SettingsConfigDict(env_prefix="SA01_TRACING_", **_SECTION)

    exporter: Literal["none", "otlp", "memory"] = "none"
    endpoint: str | None = None
    service_name: str = Field(default="agentcluster", min_length=1, max_length=200)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """The share of new traces recorded; a trace started elsewhere follows its caller's choice."""
    export_delay_s: float = Field(default=5.0, gt=0, le=300)
    """How long spans wait in the batch before they are sent."""
    export_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("exporter", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = _http_url(value)
        if url is None and info.data.get("exporter") == "otlp":
            raise ValueError(
                "required when SA01_TRACING_EXPORTER=otlp (the collector's OTLP/HTTP URL, "
                "e.g. http://127.0.0.1:4318)"
            )
        return url

    @property
    def traces_url(self) -> str | None:
        """Where the OTLP exporter posts: the endpoint, with ``/v1/traces`` when it has no path."""
        if self.endpoint is None:
            return None
        if urlsplit(self.endpoint).path.strip("/"):
            return self.endpoint
        return f"{self.endpoint}/v1/traces"


class ScheduleSettings(BaseSettings):
    """Schedules: messages a session gets on a cron schedule."""

    model_config = SettingsConfigDict(env_prefix="SA01_SCHEDULES_", **_SECTION)

    tick_s: float = Field(default=1.0, gt=0, le=60)
    """How often the elected ticker looks for schedules that are due."""
    lease_s: float = Field(default=10.0, gt=0, le=600)
    """How long the ticker's lease lasts unless renewed: another host controller takes over
    this long after the ticker died."""
    min_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    """The shortest time a schedule may leave between two of its messages."""
    max_per_session: int = Field(default=20, ge=1, le=1000)


class WebhookSettings(BaseSettings):
    """Webhooks: turn outcomes POSTed to the URL a session or a message names."""

    model_config = SettingsConfigDict(env_prefix="SA01_WEBHOOKS_", **_SECTION)

    tick_s: float = Field(default=1.0, gt=0, le=60)
    """How often the elected dispatcher looks for deliveries that are due."""
    lease_s: float = Field(default=10.0, gt=0, le=600)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    """The longest one delivery attempt may take."""
    retry_for_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    """How long a delivery is retried (exponential backoff) before it is given up."""
    backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    """The longest wait between two attempts (the first retry comes after 1 s, then doubling)."""


class Settings(BaseModel):
    """The whole settings tree. Build it with :func:`load_settings`."""

    data_dir: Path
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    db: DbSettings
    kafka: KafkaSettings
    relay: RelaySettings
    redis: RedisSettings
    policy: PolicySettings
    auth: AuthSettings
    crypto: CryptoSettings
    gateway: GatewaySettings
    llm: LlmSettings
    limits: LimitSettings
    runtime: RuntimeSettings
    tools: ToolSettings
    browser: BrowserSettings
    tracing: TracingSettings
    schedules: ScheduleSettings
    webhooks: WebhookSettings

    @property
    def db_dsn(self) -> str:
        """The effective DSN: the configured one, or SQLite under the data dir."""
        if self.db.dsn:
            return self.db.dsn
        return f"sqlite+aiosqlite:///{self.data_dir / 'agentcluster.db'}"

    @property
    def workspace_root(self) -> Path:
        """Where session workspaces live: the configured root, or ``workspaces`` in the data dir."""
        return self.tools.workspace_root or self.data_dir / "workspaces"


def _http_url(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("expected an http(s)://host[:port] URL")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError("the port is not a number in 1..65535") from exc
    return value.strip().rstrip("/")


_SECTIONS: dict[str, type[BaseSettings]] = {
    "db": DbSettings,
    "kafka": KafkaSettings,
    "relay": RelaySettings,
    "redis": RedisSettings,
    "policy": PolicySettings,
    "auth": AuthSettings,
    "crypto": CryptoSettings,
    "gateway": GatewaySettings,
    "llm": LlmSettings,
    "limits": LimitSettings,
    "runtime": RuntimeSettings,
    "tools": ToolSettings,
    "browser": BrowserSettings,
    "tracing": TracingSettings,
    "schedules": ScheduleSettings,
    "webhooks": WebhookSettings,
}


# New name -> old name of settings renamed to the SA01_ prefix.
_RENAMED: dict[str, str] = {
    "SA01_GATEWAY_HOST": "GATEWAY_HOST",
    "SA01_GATEWAY_PORT": "GATEWAY_PORT",
}


def _variable(section: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    prefix = str(section.model_config.get("env_prefix", ""))
    field = str(loc[0]) if loc else ""
    return f"{prefix}{field}".upper()


def _renamed_values(section: type[BaseSettings], given: Mapping[str, Any]) -> dict[str, str]:
    """Field -> old variable name, for the fields of ``section`` set only under their old name
    (neither overridden nor set under the new one); warns once per field."""
    found: dict[str, str] = {}
    for field in section.model_fields:
        new = _variable(section, (field,))
        old = _RENAMED.get(new)
        if old is None or field in given or env(new) is not None or env(old) is None:
            continue
        warnings.warn(f"{old} is deprecated: set {new} instead", FutureWarning, stacklevel=4)
        found[field] = old
    return found


def _build_section(section: type[BaseSettings], overrides: Mapping[str, Any] | None) -> Any:
    given = dict(overrides or {})
    renamed = _renamed_values(section, given)
    values: dict[str, Any] = {field: env(old) for field, old in renamed.items()}
    try:
        return section(**{**values, **given})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error.get("loc", ()))
        name = renamed.get(str(loc[0]) if loc else "") or _variable(section, loc)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None


def load_settings(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """Read and validate the environment into a :class:`Settings` tree.

    Args:
        overrides: per-section field values that win over the environment (tests, CLI flags),
            e.g. ``{"db": {"dsn": "sqlite://..."}}``.

    Raises:
        ConfigError: one line naming the first bad variable.
    """
    overrides = overrides or {}
    sections = {key: _build_section(cls, overrides.get(key)) for key, cls in _SECTIONS.items()}
    data_dir = Path(env("SA01_DATA_DIR") or project_root() / ".data")
    level = (env("SA01_LOG_LEVEL") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"SA01_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    log_format = (env("SA01_LOG_FORMAT") or "json").lower()
    if log_format not in {"json", "text"}:
        raise ConfigError(f"SA01_LOG_FORMAT: expected json or text, got {log_format!r}")
    return Settings(data_dir=data_dir, log_level=level, log_format=log_format, **sections)
