"""TLS-enabled local servers for tests: Redis with TLS, and the SASL_SSL listener of the session's broker.

Certificates come from ``devtools.devstack.make_tls_files`` (the ``openssl`` command line): a
CA, a server certificate it signs (for ``127.0.0.1`` and ``localhost``), and a second, unrelated
CA to play a wrong trust anchor.

Redis speaks TLS itself (``redis-server --tls-port``, plain port disabled). Kafka is the test
session's Apache Kafka broker (``kafka_broker``), whose SASL_SSL listener has a CA of its own and a
SCRAM-SHA-512 user created when its log directory was formatted: clients really log in.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from confluent_kafka import Consumer

from devtools import devstack
from devtools.devstack import TlsFiles
from devtools.processes import free_port
from tests.kafka import Broker

READY_TIMEOUT_S = 30.0
SESSION_TIMEOUT_MS = 6000


@dataclass
class Processes:
    """Background processes in their own sessions, stopped together."""

    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.items.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.items:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with status {process.returncode}")

    def stop(self) -> None:
        for process in reversed(self.items):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@dataclass
class TlsRedis:
    """redis-server accepting TLS only, with our server certificate."""

    port: int
    processes: Processes

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, ca: Path) -> redis.Redis:
        return redis.Redis.from_url(self.url, ssl_ca_certs=str(ca), socket_timeout=5)


def start_tls_redis(files: TlsFiles, workdir: Path) -> TlsRedis:
    port = free_port()
    processes = Processes()
    argv = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key),
        "--tls-ca-cert-file", str(files.ca), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    processes.spawn(argv, workdir / f"redis-tls-{port}.log")
    server = TlsRedis(port, processes)
    deadline = time.monotonic() + READY_TIMEOUT_S
    client = server.client(files.ca)
    try:
        while True:
            processes.check_alive()
            try:
                client.ping()
                return server
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    processes.stop()
                    raise
                time.sleep(0.05)  # poll interval
    finally:
        client.close()


@dataclass(frozen=True)
class SaslKafka:
    """The SASL_SSL (SCRAM-SHA-512) listener of a broker, as its clients see it."""

    broker: Broker

    @property
    def bootstrap(self) -> str:
        return self.broker.sasl_bootstrap

    def env(self, password: str | None = None, ca: Path | None = None) -> dict[str, str]:
        """The standard ``KAFKA_*`` client variables: the user's password file, or ``password``;
        the listener's CA, or ``ca``."""
        trust = {"KAFKA_SSL_CA_LOCATION": str(ca)} if ca is not None else {}
        return self.broker.sasl_env(password) | trust

    def recorder_env(self, topic: str, password: str | None = None, ca: Path | None = None) -> dict[str, str]:
        """The recorder's variables: ``KAFKA_BROKERS`` and ``KAFKA_TOPIC`` plus the security ones."""
        security = {k: v for k, v in self.env(password, ca).items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
        return security | {"KAFKA_BROKERS": self.bootstrap, "KAFKA_TOPIC": topic}

    def create_topics(self, *prefixes: str) -> list[str]:
        """A new topic per prefix (``<prefix>-<uuid>``), created by an admin client that logs in."""
        names = [f"{prefix}-{uuid.uuid4().hex}" for prefix in prefixes]
        devstack.create_topics(self.bootstrap, names, client_config=self.broker.sasl_client_config())
        return names

    def consumer(self, topic: str) -> Consumer:
        """A consumer that logs in and reads ``topic`` from the beginning, in a group of its own."""
        consumer = Consumer(
            self.broker.sasl_client_config()
            | {
                "group.id": f"test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "log_level": 0,
            }
        )
        consumer.subscribe([topic])
        return consumer
