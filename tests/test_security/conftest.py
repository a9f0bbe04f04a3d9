"""A throwaway CA and TLS-enabled Redis and Kafka, started once for the security tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_nlp_consumer.conftest import trained_model  # noqa: F401  (the NLP consumer's model)
from tests.test_security.tls import (
    TlsFiles,
    TlsKafka,
    TlsRedis,
    make_tls_files,
    start_tls_kafka,
    start_tls_redis,
)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_redis(tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = start_tls_redis(tls_files, tmp_path_factory.mktemp("redis-tls"))
    yield server
    server.processes.stop()


@pytest.fixture(scope="session")
def tls_kafka(tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    kafka = start_tls_kafka(tls_files, tmp_path_factory.mktemp("kafka-tls"))
    yield kafka
    kafka.processes.stop()


@pytest.fixture(scope="session")
def sasl_kafka(tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    """TLS in front of a broker that requires SASL/SCRAM and knows no user (see tls.py)."""
    kafka = start_tls_kafka(tls_files, tmp_path_factory.mktemp("kafka-sasl"), authentication=True)
    yield kafka
    kafka.processes.stop()
