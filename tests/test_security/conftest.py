"""A throwaway CA and a TLS-only Redis, started once; Kafka is the session broker's SASL_SSL listener."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.devstack import TlsFiles, make_tls_files, wait_for_kafka
from tests.kafka import Broker
from tests.test_security.tls import SaslKafka, TlsRedis, start_tls_redis


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_redis(tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = start_tls_redis(tls_files, tmp_path_factory.mktemp("redis-tls"))
    yield server
    server.processes.stop()


@pytest.fixture(scope="session")
def sasl_kafka(kafka_broker: Broker) -> SaslKafka:
    """The session's local broker (whatever ``KAFKA_BOOTSTRAP_SERVERS`` says), once a metadata
    request over its SASL_SSL listener, with the SCRAM user's password, has succeeded."""
    kafka = SaslKafka(kafka_broker)
    wait_for_kafka(kafka.bootstrap, client_config=kafka_broker.sasl_client_config())
    return kafka
