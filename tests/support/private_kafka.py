"""A private single-node Kafka broker (KRaft) on free loopback ports, for fault injection.

The recipe is cluster/services/deps.sh's (the jars ``make deps-up`` fetched into
``.data/kafka/libs`` and its log4j2 file), with everything in the service's own temp directory.
Same API as :mod:`tests.support.private_services`: ``start()`` / ``stop()`` / ``close()`` by our
own PID, same ports and data across a restart, so a chaos run can take the broker away without
touching the shared one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Self

from tests.support.private_services import PrivateService
from tests.support.servers import free_port

__all__ = ["PrivateKafka"]

ROOT = Path(__file__).resolve().parents[2]
LOG4J = ROOT / "cluster" / "kafka" / "log4j2.properties"
START_TIMEOUT_S = 90.0


def _properties(data: Path, port: int, controller: int) -> str:
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
"""


class PrivateKafka(PrivateService):
    """One broker+controller; its storage is formatted on the first start and kept after.

    Args:
        heap_mb: the JVM's maximum heap.
    """

    name = "kafka"

    def __init__(self, heap_mb: int = 384) -> None:
        super().__init__()
        self.controller_port = free_port()
        home = Path(os.environ.get("AC_KAFKA_HOME") or ROOT / ".data" / "kafka")
        self.libs = home / "libs"
        self.heap_mb = heap_mb
        self._properties = self.workdir / "server.properties"

    @property
    def url(self) -> str:
        """The bootstrap servers (``host:port``)."""
        return f"127.0.0.1:{self.port}"

    def _java(self, heap_mb: int, log_file: str) -> list[str]:
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Kafka jars in {self.libs}: run `make deps-up` first")
        return [
            "java",
            f"-Xmx{heap_mb}m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            f"-Dkafka.log.file={log_file}",
            "-Dkafka.root.level=WARN",
            "-cp",
            f"{self.libs}/*",
        ]

    def _format(self) -> None:
        """Write the config and format the storage (once: a restart keeps the data)."""
        if self._properties.exists():
            return
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        text = _properties(self.workdir / "data", self.port, self.controller_port)
        tool = [*self._java(128, "tools.log"), "kafka.tools.StorageTool"]
        cluster_id = subprocess.run(
            [*tool, "random-uuid"], check=True, capture_output=True, text=True, timeout=60
        ).stdout.strip()
        self._properties.write_text(text)
        subprocess.run(
            [*tool, "format", "-t", cluster_id, "-c", str(self._properties)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _command(self) -> list[str]:
        return [*self._java(self.heap_mb, "server.log"), "kafka.Kafka", str(self._properties)]

    def start(self) -> Self:
        """Start the broker (formatting its storage the first time) and wait until it listens."""
        self._format()
        return super().start()
