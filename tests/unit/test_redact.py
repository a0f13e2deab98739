"""The secret scrubber and the settings mask, on texts shaped like the ones LiteLLM, httpx and the
drivers produce."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from agentcluster import redact
from agentcluster.config import load_settings
from agentcluster.logs import JsonFormatter

OPENAI_KEY = "sk-proj-" + "Zq9" * 20 + "Ab1Z"
ANTHROPIC_KEY = "sk-ant-api03-" + "x7Y_" * 20 + "AA"
GOOGLE_KEY = "AIzaSyD" + "k3J9" * 8
FERNET_KEY = "M0V3bVhrc2h6dWZkZ2ZkZ2ZkZ2ZkZ2ZkZ2ZkZ2ZkZ2Y="

# What the LLM adapter stores as an error (LiteLLMClient._describe of the exception LiteLLM raises).
LITELLM_ERRORS = [
    # OpenAI 401: OpenAI masks the middle itself, the end of the key is still there.
    "HTTP 401 AuthenticationError: litellm.AuthenticationError: AuthenticationError: "
    "OpenAIException - Error code: 401 - {'error': {'message': 'Incorrect API key provided: "
    "sk-proj-********************************Ab1Z. You can find your API key at "
    "https://platform.openai.com/account/api-keys.', 'type': 'invalid_request_error', "
    "'param': None, 'code': 'invalid_api_key'}}",
    # A proxy that echoes the request headers in its error body.
    "HTTP 502 APIError: litellm.APIError: APIError: OpenAIException - upstream rejected "
    f"request headers {{'Authorization': 'Bearer {OPENAI_KEY}', 'Content-Type': "
    "'application/json'}",
    # Anthropic through an OpenAI-compatible gateway quoting x-api-key.
    "HTTP 401 AuthenticationError: litellm.AuthenticationError: AnthropicException - "
    f'{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key: '
    f'{ANTHROPIC_KEY}"}}}}',
    # Gemini: the key travels in the URL's query string.
    "APIConnectionError: litellm.APIConnectionError: VertexAIException - Server disconnected "
    "for url 'https://generativelanguage.googleapis.com/v1beta/models/gemini-pro:"
    f"streamGenerateContent?key={GOOGLE_KEY}&alt=sse'",
    # LiteLLM's curl rendering of a failed request (debug mode).
    "POST Request Sent from LiteLLM: curl -X POST https://api.openai.com/v1/ "
    f"-H 'Authorization: Bearer {OPENAI_KEY}' -d '{{'model': 'gpt-4o'}}'",
    # An environment dump in a traceback.
    f"litellm.AuthenticationError: Missing key; OPENAI_API_KEY={OPENAI_KEY} was rejected",
]


@pytest.mark.parametrize("text", LITELLM_ERRORS)
def test_litellm_error_texts_lose_their_keys(text: str) -> None:
    scrubbed = redact.scrub(text)
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, "Ab1Z"):
        assert secret not in scrubbed
    assert redact.MASK in scrubbed
    assert redact.scrub(scrubbed) == scrubbed  # idempotent: events may be scrubbed twice


def test_the_rest_of_an_error_text_stays_readable() -> None:
    scrubbed = redact.scrub(LITELLM_ERRORS[0])
    assert scrubbed.startswith("HTTP 401 AuthenticationError: litellm.AuthenticationError")
    assert "https://platform.openai.com/account/api-keys" in scrubbed
    assert "'code': 'invalid_api_key'" in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "the agent used all 4 steps without a final answer",
        "max_tokens=256 exceeds the context window; prompt_tokens: 4000",
        'password authentication failed for user "agentcluster"',
        "fetch http://127.0.0.1:8080/page?id=3 failed: 404",
        "budget exceeded: 300 tokens used of 300 (resets 2026-01-02T00:00:00Z)",
    ],
)
def test_text_without_secrets_is_left_alone(text: str) -> None:
    assert redact.scrub(text) == text


def test_a_password_equal_to_the_user_name_is_not_remembered() -> None:
    # It protects nothing, and remembering it would mask the name everywhere in the logs.
    settings = load_settings({"db": {"dsn": "postgresql://svc-user-x:svc-user-x@db/app"}})
    redact.remember_settings(settings)
    assert redact.scrub("logger svc-user-x.metrics") == "logger svc-user-x.metrics"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("cannot reach redis://:hunter2hunter2@127.0.0.1:6379/0: refused", "hunter2hunter2"),
        ("postgresql+asyncpg://app:pgpass99@db:5432/app is down", "pgpass99"),
        ("connect http://proxyuser:proxypass@127.0.0.1:3128 failed", "proxypass"),
        ("dsn postgresql://app@db/app?password=qwerty123&sslmode=require", "qwerty123"),
        ('{"api_key": "plain-looking-key-9981"}', "plain-looking-key-9981"),
        ("Authorization: Token abcdef0123456789", "abcdef0123456789"),
        ("aws_secret_access_key=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMIK7MDENG"),
        ("groq said no to gsk_" + "a1B2" * 10, "a1B2a1B2"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "eyJzdWIi"),
    ],
)
def test_generic_secret_shapes_are_masked(text: str, secret: str) -> None:
    assert secret not in redact.scrub(text)


def test_known_values_are_masked_whatever_surrounds_them() -> None:
    secret = f"corp{uuid.uuid4().hex}"  # no recognisable shape: only the registry knows it
    text = f"provider answered 'unknown credential {secret}!' (x{secret}x)"
    assert secret in redact.scrub(text)
    redact.remember(secret)
    assert secret not in redact.scrub(text)
    assert redact.scrub(text).startswith("provider answered 'unknown credential ***!'")


def test_short_values_are_not_registered() -> None:
    redact.remember("none", "test", None, "")
    assert redact.scrub("none of this is a test") == "none of this is a test"


def test_remember_settings_registers_every_configured_secret() -> None:
    admin, internal = f"admin-{uuid.uuid4().hex}", f"internal-{uuid.uuid4().hex}"
    llm_key, redis_pw, db_pw = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    settings = load_settings(
        {
            "auth": {"admin_key": admin, "internal_token": internal},
            "llm": {"api_key": llm_key},
            "crypto": {"fernet_key": FERNET_KEY},
            "redis": {"url": f"redis://:{redis_pw}@127.0.0.1:6379/0"},
            "db": {"dsn": f"postgresql://app:{db_pw}@127.0.0.1:5432/app"},
        }
    )
    redact.remember_settings(settings)
    text = " ".join([admin, internal, llm_key, FERNET_KEY, redis_pw, db_pw])
    assert redact.scrub(text) == " ".join([redact.MASK] * 6)


def test_mask_url_keeps_everything_but_the_password() -> None:
    assert redact.mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert (
        redact.mask_url("postgresql+asyncpg://app:p%40ss@db:5432/app?sslmode=require")
        == "postgresql+asyncpg://app:***@db:5432/app?sslmode=require"
    )
    assert redact.mask_url("postgresql://app@db/app?password=x") == (
        "postgresql://app@db/app?password=***"
    )
    assert redact.mask_url("http://127.0.0.1:8181") == "http://127.0.0.1:8181"


def test_mask_settings_masks_every_secret_and_keeps_the_rest() -> None:
    settings = load_settings(
        {
            "auth": {"admin_key": "a" * 32, "internal_token": "i" * 32},
            "llm": {"api_key": "sk-" + "k" * 40, "api_base": "http://u:llmpw@127.0.0.1:9/v1"},
            "crypto": {"fernet_key": FERNET_KEY},
            "redis": {"url": "redis://:redispw@127.0.0.1:6379/0"},
            "db": {"dsn": "postgresql://app:dbpw@127.0.0.1:5432/app"},
        }
    )
    shown = redact.mask_settings(settings)
    dumped = json.dumps(shown)
    for secret in ("a" * 32, "i" * 32, "k" * 40, FERNET_KEY, "llmpw", "redispw", "dbpw"):
        assert secret not in dumped
    assert shown["auth"]["admin_key"] == redact.MASK
    assert shown["crypto"]["new_fernet_key"] is None  # unset stays visibly unset
    assert shown["redis"]["url"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["db"]["dsn"] == "postgresql+asyncpg://app:***@127.0.0.1:5432/app"
    assert shown["llm"]["api_base"] == "http://u:***@127.0.0.1:9/v1"
    assert shown["db"]["pool_size"] == settings.db.pool_size
    assert shown["crypto"]["key_file"] is None  # a path, not a secret: shown as it is


def test_mask_settings_masks_nested_and_sasl_style_fields() -> None:
    shown = redact.mask_settings(
        {"kafka": {"sasl_plain_password": "kpw", "sasl_plain_username": "bob"}, "n": 3}
    )
    assert shown == {"kafka": {"sasl_plain_password": "***", "sasl_plain_username": "bob"}, "n": 3}


def _capture(logger_name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(redact.ScrubFilter())
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    logger, stream = _capture(f"agentcluster.test_redact.{uuid.uuid4().hex}")
    logger.warning("llm call failed: %s", LITELLM_ERRORS[1])
    try:
        raise RuntimeError(f"Authorization: Bearer {OPENAI_KEY}")
    except RuntimeError:
        logger.exception("turn failed for key %s", OPENAI_KEY)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert OPENAI_KEY not in stream.getvalue()
    assert lines[0]["message"].startswith("llm call failed: HTTP 502 APIError")
    assert "RuntimeError: Authorization: Bearer ***" in lines[1]["error"]


def test_the_log_filter_keeps_a_malformed_record() -> None:
    logger, _ = _capture(f"agentcluster.test_redact.{uuid.uuid4().hex}")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "%d items", ("x",), None)
    assert redact.ScrubFilter().filter(record) is True
    assert record.args == ("x",)


def test_agentcluster_config_prints_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentcluster.cli import main

    secrets = {
        "SA01_AUTH_ADMIN_KEY": "admin-" + uuid.uuid4().hex,
        "SA01_AUTH_INTERNAL_TOKEN": "internal-" + uuid.uuid4().hex,
        "SA01_LLM_API_KEY": OPENAI_KEY,
        "SA01_CRYPTO_FERNET_KEY": FERNET_KEY,
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SA01_REDIS_URL", "redis://:redis-pw-77@127.0.0.1:6379/0")
    monkeypatch.setenv("SA01_DB_DSN", "postgresql://app:db-pw-77@127.0.0.1:5432/app")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in [*secrets.values(), "redis-pw-77", "db-pw-77"]:
        assert secret not in out
    shown = json.loads(out)
    assert shown["redis"]["url"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["db"]["dsn"] == "postgresql+asyncpg://app:***@127.0.0.1:5432/app"
    assert shown["auth"]["admin_key"] == shown["llm"]["api_key"] == redact.MASK


@pytest.mark.parametrize(
    "text",
    [
        "SA01_CRYPTO_FERNET_KEY: this key cannot decrypt the stored secrets",
        "SA01_AUTH_ADMIN_KEY: must be at least 16 characters",
        "use Authorization: Bearer <api key>",
        "token: 5 of 10",
    ],
)
def test_our_own_messages_naming_a_secret_setting_stay_readable(text: str) -> None:
    assert redact.scrub(text) == text
