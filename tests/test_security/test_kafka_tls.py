"""Kafka over TLS: the decoder publishes and the NLP consumer enriches through a TLS-only listener,
verifying the broker against a CA from ``KAFKA_SSL_CA_LOCATION``; a wrong CA and refused SASL
credentials are reported as not ready, in one line, without the password.

The local broker has no TLS listener of its own; stunnel terminates TLS in front of it (tls.py).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message
from prometheus_client import CollectorRegistry

from decoder_api.config import load_settings
from decoder_api.events import TranscriptEvent
from decoder_api.publisher import TranscriptPublisher, build_publisher
from nlp_consumer.config import load_consumer_settings
from tests.conftest import RATE_HZ, SpokenCall
from tests.kafka import SESSION_TIMEOUT_MS, Call, consume_until, decoder_env, launch_decoder, readyz, wait_for
from tests.servers import DecoderServer, free_port
from tests.test_nlp_consumer.conftest import ConsumerRun, ServiceProcess
from tests.test_recorder.conftest import json_lines, recorder, write_wav
from tests.test_security.tls import TlsFiles, TlsKafka

CHUNK_BYTES = RATE_HZ * 2 // 5  # 200 ms


def tls_consumer(kafka: TlsKafka, topic: str) -> Consumer:
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
            }
        )
    )
    consumer.subscribe([topic])
    return consumer


def test_decoder_and_nlp_consumer_work_over_tls(
    tls_kafka: TlsKafka, tls_files: TlsFiles, trained_model: Path, korean_call: SpokenCall, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex
    source, enriched, dead = f"tls-in-{suffix}", f"tls-out-{suffix}", f"tls-dlq-{suffix}"
    tls_kafka.create_topics(source, enriched, dead)
    ssl_env = tls_files.kafka_env(tls_kafka.bootstrap)
    decoder = launch_decoder(tmp_path, decoder_env(tls_kafka.bootstrap, source, tmp_path) | ssl_env)
    metrics_port = free_port()
    consumer_env = ssl_env | {
        "NLP_INPUT_TOPIC": source,
        "NLP_OUTPUT_TOPIC": enriched,
        "NLP_DLQ_TOPIC": dead,
        "NLP_GROUP_ID": f"tls-{suffix}",
        "NLP_METRICS_PORT": str(metrics_port),
        "NLP_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "SENTIMENT_MODEL": str(trained_model),
        "NLP_TORCH_THREADS": "1",
    }
    nlp = ConsumerRun(
        ServiceProcess("nlp_consumer", consumer_env, tmp_path / "nlp.log").start(), metrics_port
    )
    output = tls_consumer(tls_kafka, enriched)
    try:
        wait_for(
            lambda: readyz(decoder)[1]["checks"]["kafka"] == "connected", 30, "the decoder's TLS connection"
        )
        nlp.wait_assigned()
        call = Call(decoder.url).open()
        call.send(korean_call.pcm, CHUNK_BYTES)
        call.end()
        assert call.texts

        def all_enriched(messages: list[Message]) -> bool:
            return len([m for m in messages if m.key() == call.session_id.encode()]) >= len(call.texts)

        consume_until(output, all_enriched, timeout_s=120)
    finally:
        output.close()
        nlp.process.stop()
        decoder.stop()
    assert "Traceback" not in nlp.process.output()


def test_the_recorder_publishes_its_finals_over_tls(
    tls_kafka: TlsKafka,
    tls_files: TlsFiles,
    vosk_server: DecoderServer,
    korean_call: SpokenCall,
    tmp_path: Path,
) -> None:
    topic = f"tls-recorder-{uuid.uuid4().hex}"
    tls_kafka.create_topics(topic)
    wav = write_wav(tmp_path / "call.wav", korean_call.pcm)
    env = {
        "KAFKA_BROKERS": tls_kafka.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(tls_files.ca),
    }
    done = recorder("-H", vosk_server.url, "-f", str(wav), "--json", env=env)
    assert done.returncode == 0, done.stderr
    finals = [e["text"] for e in json_lines(done.stdout) if e["type"] == "final" and e["text"]]
    assert finals
    output = tls_consumer(tls_kafka, topic)
    try:
        messages = consume_until(output, lambda got: len(got) >= len(finals), timeout_s=60)
    finally:
        output.close()
    assert [TranscriptEvent.from_json(m.value() or b"").text for m in messages] == finals


def publisher_for(env: dict[str, str], tmp_path: Path) -> TranscriptPublisher:
    """The decoder's real publisher (SQLite outbox), built from ``env`` as the service builds it."""
    settings = load_settings(
        env | {"DECODER_OUTBOX_DIR": str(tmp_path), "DECODER_KAFKA_UNREADY_AFTER_S": "1"}
    )
    publisher = build_publisher(settings, CollectorRegistry())
    assert publisher is not None
    return publisher


def not_ready(publisher: TranscriptPublisher) -> dict[str, Any] | None:
    checks, ready = publisher.checks()
    return None if ready or "kafka_error" not in checks else checks


def test_a_broker_certificate_from_another_ca_is_not_ready(
    tls_kafka: TlsKafka, tls_files: TlsFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    publisher = publisher_for(tls_files.kafka_env(tls_kafka.bootstrap, ca=tls_files.other_ca), tmp_path)
    try:
        checks = wait_for(lambda: not_ready(publisher), 30, "the publisher to report the TLS failure")
    finally:
        publisher.close()
    assert checks["kafka"] == "unreachable"
    assert "certificate verify failed" in checks["kafka_error"]
    assert not [r for r in caplog.records if r.exc_info], "a TLS failure is not a traceback"


def test_sasl_ssl_credentials_reach_the_broker_and_a_refusal_is_clear_and_secret(
    sasl_kafka: TlsKafka, tls_files: TlsFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SASL/SCRAM over TLS from ``KAFKA_SASL_*`` with the password from a file: the broker (which
    knows no user, see tls.py) answers the SCRAM exchange with a refusal, which is reported as
    not ready; the password appears in no log record, reported check or settings repr."""
    caplog.set_level(logging.DEBUG)
    password = f"pw-{uuid.uuid4().hex}"
    password_file = tmp_path / "password"
    password_file.write_text(f"{password}\n")
    env = tls_files.kafka_env(sasl_kafka.bootstrap) | {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "decoder",
        "KAFKA_SASL_PASSWORD_FILE": str(password_file),
    }
    publisher = publisher_for(env, tmp_path)
    try:
        assert publisher.config.client_config()["sasl.password"] == password
        checks = wait_for(lambda: not_ready(publisher), 30, "the publisher to report the refusal")
    finally:
        publisher.close()
    assert "authentication" in checks["kafka_error"].lower(), checks
    assert password not in repr(publisher.config) + repr(checks)
    assert password not in repr(load_consumer_settings(env))
    assert all(password not in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]
