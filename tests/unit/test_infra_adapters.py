"""The shared infrastructure seams without services: the Redis error mapping, the Kafka
connection built from the settings, and the detached workers' options and start loop."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors._workers import start_until_up, worker_options
from agentcluster.config import KafkaSettings, load_settings
from agentcluster.errors import (
    ConfigError,
    DependencyUnavailable,
    InfrastructureError,
    ValidationFailed,
)
from agentcluster.eventlog import KafkaConnection, kafka_errors
from agentcluster.redisconn import redis_error, redis_errors

# -- Redis ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc", [RedisConnectionError("refused"), RedisTimeoutError("slow"), OSError("reset")]
)
def test_unreachable_redis_is_dependency_unavailable(exc: Exception) -> None:
    error = redis_error(exc, "redis keys ns:limits:*")
    assert type(error) is DependencyUnavailable
    assert error.dependency == "redis" and error.retryable
    assert error.message == f"redis: redis keys ns:limits:*: {exc}"
    assert pickle.loads(pickle.dumps(error)).message == error.message


async def test_a_refused_command_is_an_infrastructure_error_not_unavailable() -> None:
    with pytest.raises(InfrastructureError, match=r"^redis: the store: NOSCRIPT") as raised:
        async with redis_errors("the store"):
            raise ResponseError("NOSCRIPT no such script")
    assert not isinstance(raised.value, DependencyUnavailable)
    assert isinstance(raised.value.__cause__, ResponseError)


async def test_watch_errors_and_our_own_errors_pass_through() -> None:
    with pytest.raises(WatchError):
        async with redis_errors("the store"):
            raise WatchError("changed")
    with pytest.raises(ValidationFailed):
        async with redis_errors("the store"):
            raise ValidationFailed("not redis")


# -- Kafka ------------------------------------------------------------------------------------


def test_the_kafka_connection_comes_from_the_settings() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="127.0.0.1:9092", client_id="c1", request_timeout_ms=4_000
    )
    connection = KafkaConnection.from_settings(kafka)
    assert connection == KafkaConnection("127.0.0.1:9092", "c1", 4_000)
    assert connection.timeout_s == 4.0
    with pytest.raises(ConfigError, match="SA01_KAFKA_BOOTSTRAP_SERVERS"):
        KafkaConnection.from_settings(KafkaSettings(bootstrap_servers=None))


def test_unreachable_brokers_are_named() -> None:
    error = KafkaConnection("127.0.0.1:1").unavailable(KafkaConnectionError("refused"))
    assert type(error) is DependencyUnavailable and error.dependency == "kafka"
    assert error.message.startswith("kafka: cannot reach brokers at 127.0.0.1:1: ")


async def test_a_failed_kafka_operation_says_what_failed() -> None:
    with pytest.raises(InfrastructureError, match=r"^kafka: offset commit failed: ") as raised:
        async with kafka_errors("offset commit failed"):
            raise TimeoutError()
    assert raised.value.retryable


# -- detached workers -------------------------------------------------------------------------


def test_every_worker_is_one_named_detached_actor_per_cluster() -> None:
    settings = load_settings({"runtime": {"host_prefix": "hx", "namespace": "nsx"}})
    relay, inbound = worker_options(settings, "relay"), worker_options(settings, "inbound")
    assert relay["name"] == "hx-relay" and inbound["name"] == "hx-inbound"
    for options in (relay, inbound):
        assert options["namespace"] == "nsx" and options["lifetime"] == "detached"
        assert options["get_if_exists"] and options["max_restarts"] == -1
        assert options["num_cpus"] == 0


async def test_a_worker_starts_again_until_its_dependencies_answer() -> None:
    attempts: list[int] = []

    async def start() -> str:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise DependencyUnavailable("kafka", "down")
        return "started"

    stop = asyncio.Event()
    result = await start_until_up(start, stop, role="relay", initial_s=0.001, max_s=0.002)
    assert result == "started" and attempts == [0, 1, 2]


async def test_a_stopped_worker_gives_up_and_a_bad_configuration_is_not_retried() -> None:
    stop = asyncio.Event()

    async def down() -> None:
        stop.set()
        raise DependencyUnavailable("postgresql", "down")

    assert await start_until_up(down, stop, role="inbound", initial_s=0.001) is None

    async def misconfigured() -> None:
        raise ConfigError("SA01_KAFKA_BOOTSTRAP_SERVERS: missing")

    with pytest.raises(ConfigError):
        await start_until_up(misconfigured, asyncio.Event(), role="inbound")
