"""The LLM settings section: defaults, bad values naming their variable, the offline environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentcluster.config import LlmSettings, load_settings, prepare_offline_environment
from agentcluster.errors import ConfigError

LLM_VARIABLES = [
    "SA01_LLM_API_BASE",
    "SA01_LLM_API_KEY",
    "SA01_LLM_TIMEOUT_S",
    "SA01_LLM_MAX_RETRIES",
    "SA01_LLM_RETRY_BACKOFF_S",
    "SA01_LLM_BREAKER_FAIL_MAX",
    "SA01_LLM_BREAKER_RESET_S",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    llm = load_settings().llm
    assert llm == LlmSettings()
    assert llm.api_base is None and llm.api_key is None
    assert (llm.timeout_s, llm.max_retries, llm.retry_backoff_s) == (60.0, 2, 0.5)
    assert (llm.breaker_fail_max, llm.breaker_reset_s) == (5, 30.0)


def test_good_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA01_LLM_API_BASE", "http://127.0.0.1:8089/v1/")
    monkeypatch.setenv("SA01_LLM_API_KEY", "sk-test")
    monkeypatch.setenv("SA01_LLM_MAX_RETRIES", "0")
    llm = load_settings().llm
    assert llm.api_base == "http://127.0.0.1:8089/v1"
    assert llm.api_key == "sk-test"
    assert llm.max_retries == 0
    assert "sk-test" not in repr(llm)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SA01_LLM_API_BASE", "ftp://127.0.0.1/v1"),
        ("SA01_LLM_API_BASE", "http://127.0.0.1:99999/v1"),
        ("SA01_LLM_API_BASE", "not a url"),
        ("SA01_LLM_TIMEOUT_S", "0"),
        ("SA01_LLM_TIMEOUT_S", "soon"),
        ("SA01_LLM_MAX_RETRIES", "-1"),
        ("SA01_LLM_MAX_RETRIES", "11"),
        ("SA01_LLM_RETRY_BACKOFF_S", "-0.5"),
        ("SA01_LLM_BREAKER_FAIL_MAX", "0"),
        ("SA01_LLM_BREAKER_RESET_S", "0"),
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


def test_offline_environment_points_tiktoken_at_litellm_bundle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "true")
    prepare_offline_environment()
    folder = Path(os.environ["TIKTOKEN_CACHE_DIR"])
    assert folder.parts[-3:] == ("litellm", "litellm_core_utils", "tokenizers")
    assert any(folder.iterdir())
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert os.environ["ANONYMIZED_TELEMETRY"] == "true"  # a value already set wins
