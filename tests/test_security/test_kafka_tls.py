"""Kafka over SASL_SSL with SCRAM-SHA-512, against the SASL_SSL listener of the session's Apache
Kafka broker: the decoder, the recorder and the NLP consumer log in with the SCRAM user's password
(``KAFKA_SASL_PASSWORD_FILE``) and verify the broker against ``KAFKA_SSL_CA_LOCATION``.

A wrong password or a CA that did not sign the broker's certificate makes the decoder not ready
with a reason that names the cause, and makes the recorder and the NLP consumer exit non-zero in
one ``error:`` line, soon, without a traceback and without the password.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message
from prometheus_client import CollectorRegistry

from contract.events import is_call_ended
from decoder_api.config import load_settings
from decoder_api.delivery.publisher import TranscriptPublisher, build_publisher
from devtools.processes import ROOT, DecoderServer, ServiceProcess, free_port
from nlp_consumer.config import load_consumer_settings
from nlp_consumer.events import validate_enriched
from tests.conftest import SpokenCall
from tests.kafka import consume_until, decoder_env, launch_decoder, readyz, wait_for
from tests.test_nlp_consumer.conftest import ConsumerRun
from tests.test_recorder.conftest import json_lines, recorder, write_wav
from tests.test_security.tls import SaslKafka

NOT_CONNECTED_YET = "not connected yet"  # the publisher's reason before any answer or refusal
RECORDER_DELIVERY_TIMEOUT_S = 30.0  # recorder.config.KafkaSettings.delivery_timeout_s
EXIT_TIMEOUT_S = 120.0  # a refused client that has not exited by then hangs
STEADY_S = 7.0  # more than two of the publisher's health probes (every 3 s)
REFUSALS = {"password": "authentication", "ca": "certificate verify failed"}  # what the reason names


def wrong_login(kafka: SaslKafka, refusal: str) -> dict[str, Any]:
    """``SaslKafka.env`` arguments for ``refusal``: a wrong password, or a CA that signed nothing here."""
    if refusal == "password":
        return {"password": f"wrong-{uuid.uuid4().hex}"}
    return {"ca": kafka.broker.tls.other_ca}


def password_of(kafka: SaslKafka, login: Mapping[str, Any]) -> str:
    """The password a client with ``login`` sends: the wrong one, or the SCRAM user's."""
    return str(login.get("password") or kafka.broker.password_file.read_text().strip())


def nlp_env(kafka: Mapping[str, str], topics: list[str], model: Path, metrics_port: int) -> dict[str, str]:
    """The NLP consumer's variables: ``topics`` are input, enriched output, dead letters and call
    summaries."""
    source, enriched, dead, summaries = topics
    return dict(kafka) | {
        "NLP_INPUT_TOPIC": source,
        "NLP_OUTPUT_TOPIC": enriched,
        "NLP_DLQ_TOPIC": dead,
        "NLP_SUMMARY_TOPIC": summaries,
        "NLP_GROUP_ID": f"sasl-{uuid.uuid4().hex}",
        "NLP_METRICS_PORT": str(metrics_port),
        "SENTIMENT_MODEL": str(model),
        "NLP_TORCH_THREADS": "1",
    }


def session_values(messages: list[Message], session_id: str) -> list[dict[str, Any]]:
    """The session's finals (its call.ended event left out)."""
    return [
        json.loads(m.value() or b"")
        for m in messages
        if m.key() == session_id.encode() and not is_call_ended(m.value())
    ]


def texts_by_source(values: list[dict[str, Any]]) -> dict[str, list[str]]:
    by_source: dict[str, list[str]] = {}
    for value in values:
        by_source.setdefault(value["source"], []).append(value["text"])
    return by_source


def kafka_check(decoder: DecoderServer) -> str | None:
    return readyz(decoder)[1].get("checks", {}).get("kafka")


def consume_session(consumer: Consumer, session_id: str, count: int) -> list[dict[str, Any]]:
    """The values keyed ``session_id``, once ``count`` of them were read (over SASL_SSL)."""
    try:
        messages = consume_until(consumer, lambda got: len(session_values(got, session_id)) >= count, 120)
    finally:
        consumer.close()
    return session_values(messages, session_id)


def test_a_call_goes_through_decoder_recorder_and_nlp_consumer_with_a_scram_login(
    sasl_kafka: SaslKafka, trained_model: Path, korean_call: SpokenCall, tmp_path: Path
) -> None:
    """The recorder streams a call through the decoder; both publish its finals (``source``
    decoder and recorder) to the input topic, the NLP consumer enriches them, and a consumer
    reads them back, with the call's summary: five clients, every one logged in as the SCRAM user
    over TLS."""
    topics = sasl_kafka.create_topics("sasl-in", "sasl-out", "sasl-dlq", "sasl-summary")
    login = sasl_kafka.env()
    decoder = launch_decoder(tmp_path, decoder_env(sasl_kafka.bootstrap, topics[0], tmp_path) | login)
    port = free_port()
    env = nlp_env(login, topics, trained_model, port)
    consumer = ServiceProcess("nlp_consumer", ["-m", "nlp_consumer"], env, tmp_path / "nlp.log")
    nlp = ConsumerRun(consumer.start(), port)
    try:
        wait_for(lambda: kafka_check(decoder) == "connected", 60, "the decoder's SASL_SSL login")
        nlp.wait_assigned()
        wav = write_wav(tmp_path / "call.wav", korean_call.pcm)
        done = recorder("-H", decoder.url, "-f", str(wav), "--json", env=sasl_kafka.recorder_env(topics[0]))
        assert done.returncode == 0, done.stderr
        finals = [e for e in json_lines(done.stdout) if e["type"] == "final" and e["text"]]
        assert finals
        session_id, texts = finals[0]["session_id"], [e["text"] for e in finals]
        published = consume_session(sasl_kafka.consumer(topics[0]), session_id, 2 * len(texts))
        enriched = consume_session(sasl_kafka.consumer(topics[1]), session_id, 2 * len(texts))
        [summary] = consume_session(sasl_kafka.consumer(topics[3]), session_id, 1)
    finally:
        nlp.process.stop()
        decoder.stop()
    assert texts_by_source(published) == {"decoder": texts, "recorder": texts}
    assert texts_by_source(enriched) == {"decoder": texts, "recorder": texts}
    for value in enriched:
        validate_enriched(value)
    assert (summary["event_id"], summary["finals"]) == (f"{session_id}:summary", len(texts))
    assert "Traceback" not in nlp.process.log.read_text()


def refusal_reason(decoder: DecoderServer) -> dict[str, Any] | None:
    """``/readyz`` once it is 503 with a Kafka reason other than the one before any attempt."""
    status, body = readyz(decoder)
    reason = body.get("checks", {}).get("kafka_error")
    return body if status == 503 and reason not in (None, NOT_CONNECTED_YET) else None


def readyz_for(decoder: DecoderServer, seconds: float) -> list[tuple[int, dict[str, Any]]]:
    """Every ``/readyz`` answer for ``seconds``, two a second."""
    answers, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers.append(readyz(decoder))
        time.sleep(0.5)  # poll interval
    return answers


def test_a_wrong_password_makes_the_decoder_unready_naming_authentication(
    sasl_kafka: SaslKafka, tmp_path: Path
) -> None:
    """Not ready at once (``kafka_unready_after_s=0``), and the reason stays the refused login: the
    "all brokers are down" librdkafka reports after each refused attempt does not replace it."""
    (topic,) = sasl_kafka.create_topics("sasl-refused")
    password = wrong_login(sasl_kafka, "password")["password"]
    env = decoder_env(sasl_kafka.bootstrap, topic, tmp_path, kafka_unready_after_s="0")
    decoder = launch_decoder(tmp_path, env | sasl_kafka.env(password), wait_ready=False)
    try:
        body = wait_for(lambda: refusal_reason(decoder), 90, "the decoder to report the refused login")
        later = readyz_for(decoder, STEADY_S)
    finally:
        decoder.stop()
    assert body["checks"]["kafka"] == "unreachable"
    for status, answer in [(503, body), *later]:
        assert status == 503, answer
        assert "SASL authentication error" in answer["checks"]["kafka_error"], answer
    log = decoder.log.read_text(encoding="utf-8", errors="replace")
    unreachable = [line for line in log.splitlines() if "kafka_unreachable" in line]
    assert any("SASL authentication error" in line for line in unreachable), unreachable
    assert password not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_a_refused_recorder_exits_with_one_line(
    refusal: str, sasl_kafka: SaslKafka, vosk_server: DecoderServer, korean_call: SpokenCall, tmp_path: Path
) -> None:
    """The call itself goes through (the decoder is fine); the finals cannot be published, which
    the recorder says in one line as soon as the broker refused it, not after its delivery timeout."""
    (topic,) = sasl_kafka.create_topics("sasl-recorder-refused")
    login = wrong_login(sasl_kafka, refusal)
    wav = write_wav(tmp_path / "call.wav", korean_call.pcm)
    started = time.monotonic()
    done = recorder(
        "-H", vosk_server.url, "-f", str(wav), "--json",
        env=sasl_kafka.recorder_env(topic, **login), timeout_s=EXIT_TIMEOUT_S,
    )  # fmt: skip
    elapsed_s = time.monotonic() - started
    assert [e for e in json_lines(done.stdout) if e["type"] == "final" and e["text"]]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: kafka: ") and "not delivered" in lines[0], lines
    assert REFUSALS[refusal] in lines[0].lower(), lines
    assert elapsed_s < RECORDER_DELIVERY_TIMEOUT_S, f"waited {elapsed_s:.0f} s for a broker that refused it"
    assert password_of(sasl_kafka, login) not in done.stdout + done.stderr


def nlp_consumer_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Kafka settings, plus ``env``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")} | dict(env)


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_a_refused_nlp_consumer_exits_with_one_line(
    refusal: str, sasl_kafka: SaslKafka, trained_model: Path
) -> None:
    """Logging warnings and errors only, the consumer's whole stderr is the one line; it names the
    refusal, which the start-up check sees at the first refused attempt."""
    topics = sasl_kafka.create_topics("sasl-nlp-in", "sasl-nlp-out", "sasl-nlp-dlq", "sasl-nlp-summary")
    login = wrong_login(sasl_kafka, refusal)
    env = nlp_env(sasl_kafka.env(**login), topics, trained_model, free_port())
    done = subprocess.run(
        [sys.executable, "-m", "nlp_consumer"],
        cwd=ROOT,
        env=nlp_consumer_env(env | {"NLP_LOG_LEVEL": "WARNING"}),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and REFUSALS[refusal] in lines[0].lower(), lines
    assert password_of(sasl_kafka, login) not in done.stdout + done.stderr


def publisher_for(env: dict[str, str], tmp_path: Path) -> TranscriptPublisher:
    """The decoder's real publisher (SQLite outbox), built from ``env`` as the service builds it."""
    settings = load_settings(
        env | {"DECODER_OUTBOX_DIR": str(tmp_path), "DECODER_KAFKA_UNREADY_AFTER_S": "0"}
    )
    publisher = build_publisher(settings, CollectorRegistry())
    assert publisher is not None
    return publisher


def refused(publisher: TranscriptPublisher) -> dict[str, Any] | None:
    """The checks once the publisher is not ready with a reason other than the initial one."""
    checks, ready = publisher.checks()
    return None if ready or checks.get("kafka_error") in (None, NOT_CONNECTED_YET) else checks


def names(checks: dict[str, Any] | None, cause: str) -> dict[str, Any] | None:
    return checks if checks is not None and cause in checks.get("kafka_error", "") else None


def test_a_broker_certificate_from_another_ca_is_not_ready(
    sasl_kafka: SaslKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    publisher = publisher_for(sasl_kafka.env(ca=sasl_kafka.broker.tls.other_ca), tmp_path)
    try:
        # librdkafka may say "all brokers are down" before it reports the handshake's failure
        checks = wait_for(
            lambda: names(refused(publisher), "certificate verify failed"),
            30,
            "the TLS failure as the reason",
        )
        for _ in range(10):  # and it stays the reason, not replaced by the next "brokers are down"
            time.sleep(0.3)
            assert "certificate verify failed" in publisher.checks()[0]["kafka_error"]
    finally:
        publisher.close()
    assert checks["kafka"] == "unreachable"
    assert not [r for r in caplog.records if r.exc_info], "a TLS failure is not a traceback"


def test_a_refused_scram_login_is_clear_and_keeps_the_password_secret(
    sasl_kafka: SaslKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The password file reaches librdkafka; the broker refuses the SCRAM login; the refusal is the
    reported reason; the password is in no log record (librdkafka's included), check or repr."""
    caplog.set_level(logging.DEBUG)
    password = f"pw-{uuid.uuid4().hex}"
    password_file = tmp_path / "password"
    password_file.write_text(f"{password}\n")
    env = sasl_kafka.env() | {"KAFKA_SASL_PASSWORD_FILE": str(password_file)}
    publisher = publisher_for(env, tmp_path)
    try:
        assert publisher.config.client_config()["sasl.password"] == password
        checks = wait_for(lambda: refused(publisher), 30, "the publisher to report the refusal")
    finally:
        publisher.close()
    assert "SASL authentication error" in checks["kafka_error"], checks
    assert password not in repr(publisher.config) + repr(checks)
    assert password not in repr(load_consumer_settings(env))
    assert all(password not in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]
