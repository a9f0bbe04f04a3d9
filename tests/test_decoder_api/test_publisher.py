"""The outbox backends and the publisher against a real broker and a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from contract.events import PartialTranscriptEvent, TranscriptEvent
from contract.kafka import KafkaClientSettings
from decoder_api.config import load_settings
from decoder_api.delivery.events import EventSource, events_from_finals
from decoder_api.delivery.outbox import Outbox, OutboxRecord, RedisOutbox, SqliteOutbox
from decoder_api.delivery.publisher import (
    GuardedRecognizer,
    KafkaClientError,
    KafkaConfig,
    OutboxFull,
    OutboxLimits,
    PublisherMetrics,
    TranscriptPublisher,
    TranscriptSink,
    kafka_config,
)
from decoder_api.engines.base import Final, RecognizerOptions
from decoder_api.engines.vosk import VoskEngine
from decoder_api.sessions.session import Session, SessionConfig, SessionLimits
from tests.conftest import RATE_HZ, SpokenCall
from tests.kafka import ConsumerFactory, TopicFactory, consume_until, event_value, wait_for
from tests.test_contract.test_events import schema_validator
from tests.test_decoder_api.test_failover import chunks_of, uninterrupted

ORIGIN = EventSource("vosk", "vosk-model-small-ko-0.22", "ko")
UNREACHABLE = "127.0.0.1:1"


def records(n: int, key: bytes = b"k", start: int = 0) -> list[OutboxRecord]:
    return [
        OutboxRecord("t", key, f"value-{i}".encode(), (("schema", "x"),)) for i in range(start, start + n)
    ]


@pytest.fixture(params=["sqlite", "redis"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    if request.param == "sqlite":
        box: Outbox = SqliteOutbox.open(tmp_path)
    else:
        box = RedisOutbox.connect(request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex}")
    yield box
    box.close()


def test_outbox_keeps_append_order_and_removes_by_id(outbox: Outbox) -> None:
    ids = outbox.append(records(5))
    assert outbox.count() == 5
    entries = outbox.read(None, 10)
    assert [e.id for e in entries] == ids
    assert [e.record for e in entries] == records(5)
    assert [e.record.value for e in outbox.read(ids[1], 2)] == [b"value-2", b"value-3"]
    outbox.remove([ids[0], ids[2]])
    assert [e.record.value for e in outbox.read(None, 10)] == [b"value-1", b"value-3", b"value-4"]
    outbox.park([ids[3]])
    assert [e.record.value for e in outbox.read(None, 10)] == [b"value-1", b"value-4"]
    assert (outbox.count(), outbox.parked_count()) == (2, 1)
    assert outbox.read(ids[4], 10) == []


def test_sqlite_journal_is_wal_and_survives_a_restart(tmp_path: Path) -> None:
    first = SqliteOutbox.open(tmp_path)
    first.append(records(3))
    assert first._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    first.close()
    again = SqliteOutbox.open(tmp_path)
    assert [e.record.value for e in again.read(None, 10)] == [b"value-0", b"value-1", b"value-2"]
    again.close()


def test_each_process_has_its_own_journal_and_orphans_are_adopted(tmp_path: Path) -> None:
    first = SqliteOutbox.open(tmp_path)
    first.append(records(2, key=b"a"))
    second = SqliteOutbox.open(tmp_path)  # the first journal is locked: a new one
    second.append(records(2, key=b"b", start=2))
    assert (first.count(), second.count()) == (2, 2)
    first.close()
    second.close()
    third = SqliteOutbox.open(tmp_path)  # both are orphans now: one is taken, the other merged
    values = [e.record.value for e in third.read(None, 10)]
    assert sorted(values) == [b"value-0", b"value-1", b"value-2", b"value-3"]
    assert values.index(b"value-0") < values.index(b"value-1")
    assert values.index(b"value-2") < values.index(b"value-3")
    assert len(list(tmp_path.glob("journal-*.sqlite3"))) == 1
    third.close()


# --- settings --------------------------------------------------------------------------------


def test_kafka_settings_come_from_the_standard_variables(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9093,kafka-1:9093",
        "KAFKA_TOPIC": "calls.v1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "decoder",
        "KAFKA_SASL_PASSWORD_FILE": str(secret),
        "KAFKA_SSL_CA_LOCATION": str(ca),
        "DECODER_KAFKA_PARTIALS": "false",
    }
    settings = load_settings(env)
    config = kafka_config(settings)
    assert config is not None
    assert config.client_config() | {"client.id": "-"} == {
        "bootstrap.servers": "kafka-0:9093,kafka-1:9093",
        "client.id": "-",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "decoder",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(ca),
    }
    assert config.topic == "calls.v1"
    assert config.partials is False
    assert "s3cret" not in repr(config) + repr(load_settings(env | {"KAFKA_SASL_PASSWORD": "s3cret"}))
    produce = config.producer_config()
    assert (produce["acks"], produce["enable.idempotence"], produce["compression.type"]) == (
        "all",
        True,
        "lz4",
    )
    assert load_settings(env | {"DECODER_KAFKA_TOPIC": "x"}).kafka_topic == "x"  # the prefixed form wins


def test_no_bootstrap_servers_means_publishing_is_disabled() -> None:
    assert kafka_config(load_settings({})) is None


def test_an_unknown_sasl_mechanism_is_a_clear_start_up_error(tmp_path: Path) -> None:
    config = KafkaConfig(
        KafkaClientSettings(UNREACHABLE, security_protocol="SASL_PLAINTEXT", sasl_mechanism="NOPE")
    )
    with pytest.raises(KafkaClientError, match="Unsupported SASL mechanism: NOPE") as caught:
        TranscriptPublisher(config, SqliteOutbox.open(tmp_path), PublisherMetrics(CollectorRegistry()))
    assert caught.value.to_dict()["kafka_code"] == "_INVALID_ARG"


# --- publishing ------------------------------------------------------------------------------


class Harness:
    """A started publisher on a fresh registry, closed by the fixture."""

    def __init__(self) -> None:
        self.publishers: list[TranscriptPublisher] = []
        self.registry = CollectorRegistry()

    def start(self, config: KafkaConfig, outbox: Outbox, **options: Any) -> TranscriptPublisher:
        self.registry = CollectorRegistry()
        publisher = TranscriptPublisher(config, outbox, PublisherMetrics(self.registry), **options)
        publisher.start()
        self.publishers.append(publisher)
        return publisher

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    for publisher in h.publishers:
        publisher.close(timeout_s=1)


def finals_events(session_id: str, n: int, start: int = 0, **extra: Any) -> list[TranscriptEvent]:
    finals = [Final(i, f"말 {i}", i * 1000, i * 1000 + 800) for i in range(start, start + n)]
    return events_from_finals(finals, session_id=session_id, user_id="u", origin=ORIGIN, **extra)


def values_by_key(messages: list[Any]) -> dict[bytes, list[dict[str, Any]]]:
    grouped: dict[bytes, list[dict[str, Any]]] = {}
    for m in messages:
        grouped.setdefault(m.key(), []).append(event_value(m))
    return grouped


def test_events_are_delivered_keyed_in_order_and_leave_the_outbox(
    outbox: Outbox,
    harness: Harness,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    topic = topic_factory()
    publisher = harness.start(KafkaConfig(KafkaClientSettings(kafka_bootstrap), topic=topic), outbox)
    for i in range(4):  # two sessions, interleaved
        publisher.publish(finals_events("first", 1, start=i))
        publisher.publish(finals_events("second", 1, start=i))
    messages = consume_until(consumer_factory(topic), lambda m: len(m) >= 8)
    by_key = values_by_key(messages)
    for key in (b"first", b"second"):
        assert [v["utterance"] for v in by_key[key]] == [0, 1, 2, 3]
        assert len({m.partition() for m in messages if m.key() == key}) == 1
    for m in messages:
        schema_validator("transcript.v1").validate(event_value(m))
        assert dict(m.headers() or []) == {"content-type": b"application/json", "schema": b"transcript.v1"}
    wait_for(lambda: outbox.count() == 0, 10, "the outbox to empty")
    wait_for(lambda: harness.metric("decoder_kafka_produced_total") == 8, 10, "8 produced")
    assert harness.metric("decoder_kafka_queued") == 0
    assert wait_for(lambda: publisher.health().state == "connected", 10, "connected")
    checks, ready = publisher.checks()
    assert ready
    assert checks == {"kafka": "connected", "outbox": "ok", "outbox_pending": 0}


def test_events_left_by_a_previous_process_go_first(
    tmp_path: Path,
    harness: Harness,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    topic = topic_factory()
    earlier = SqliteOutbox.open(tmp_path)
    left = finals_events("call", 3)
    earlier.append([OutboxRecord(topic, e.key, e.to_json(), e.headers) for e in left])
    earlier.close()
    publisher = harness.start(
        KafkaConfig(KafkaClientSettings(kafka_bootstrap), topic=topic), SqliteOutbox.open(tmp_path)
    )
    publisher.publish(finals_events("call", 2, start=3))
    messages = consume_until(consumer_factory(topic), lambda m: len(m) >= 5)
    assert [event_value(m)["utterance"] for m in messages] == [0, 1, 2, 3, 4]


def test_an_unreachable_broker_keeps_events_journaled_and_reports_not_ready(
    tmp_path: Path, harness: Harness
) -> None:
    publisher = harness.start(
        KafkaConfig(KafkaClientSettings(UNREACHABLE)), SqliteOutbox.open(tmp_path), unready_after_s=0
    )
    publisher.publish(finals_events("call", 3))

    def failing() -> tuple[dict[str, Any], bool] | None:
        result = publisher.checks()
        return result if result[0].get("kafka_error") else None

    checks, ready = wait_for(failing, 20, "a Kafka error")
    assert not ready
    assert checks["kafka"] == "unreachable"
    assert checks["outbox_pending"] == 3
    assert harness.metric("decoder_kafka_connected") == 0
    assert harness.metric("decoder_kafka_queued") == 3
    publisher.close(timeout_s=1)
    assert SqliteOutbox.open(tmp_path).count() == 3


def test_a_full_outbox_refuses_new_sessions_then_audio_but_keeps_every_final(
    tmp_path: Path, harness: Harness
) -> None:
    publisher = harness.start(
        KafkaConfig(KafkaClientSettings(UNREACHABLE)),
        SqliteOutbox.open(tmp_path),
        limits=OutboxLimits(2, 3),
        unready_after_s=60,
    )
    opened: list[RecognizerOptions] = []

    def create(options: RecognizerOptions) -> FakeRecognizer:
        opened.append(options)
        return FakeRecognizer()

    acquire = publisher.guard(create)
    recognizer = acquire(RecognizerOptions())
    publisher.publish(finals_events("call", 2))
    checks, ready = publisher.checks()
    assert (checks["outbox"], ready) == ("full", False)
    assert harness.metric("decoder_outbox_full") == 1
    with pytest.raises(OutboxFull):
        acquire(RecognizerOptions())
    assert len(opened) == 1
    assert recognizer.accept(b"\0\0") == []  # below the hard cap: the open session goes on
    publisher.publish(finals_events("call", 1, start=2))
    with pytest.raises(OutboxFull) as caught:
        recognizer.accept(b"\0\0")
    assert caught.value.status == 503
    assert recognizer.flush() == []  # ending a session is never refused
    assert recognizer.replay(b"\0\0") == []  # nor is rebuilding one from its tail
    publisher.publish(finals_events("call", 1, start=3))  # and its last final is still journaled
    assert publisher.pending == 4


def test_a_rolled_back_session_rebuilds_its_tail_even_above_the_hard_cap(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    """The journal refuses a final (disk full) while the outbox is over its hard cap: the session
    still goes back to where it was, tail replayed, and once the outbox drains the client's retry
    gives exactly the transcript of an uninterrupted call."""
    over_cap = False

    def admit() -> None:
        if over_cap:
            raise OutboxFull("finals are waiting for Kafka", retry_after=10)

    journaled: list[Final] = []
    refusals = 0

    def journal(session: Session, finals: Sequence[Final]) -> None:
        nonlocal over_cap, refusals
        if refusals == 0:  # the first final: the disk is full, and the outbox over its hard cap
            refusals += 1
            over_cap = True
            raise OSError(28, "No space left on device")
        journaled.extend(finals)

    recognizer = GuardedRecognizer(vosk_engine.create(RecognizerOptions(RATE_HZ)), admit)
    session = Session("call", "hash", SessionConfig(), recognizer, SessionLimits(), journal)
    chunks = chunks_of(korean_call)
    seq = busy = 0
    for _ in range(len(chunks) + 10):  # every chunk once, plus the retries
        if seq == len(chunks):
            break
        try:
            with session.locked():
                session.feed_numbered(seq, chunks[seq])
            seq += 1
        except OSError:
            pass  # the client retries the same chunk
        except OutboxFull:
            busy += 1
            over_cap = False  # Kafka came back and the outbox drained; the client retries
    with session.locked():
        session.end()
    assert (seq, refusals, busy) == (len(chunks), 1, 1)
    assert [f.text for f in journaled] == uninterrupted(vosk_engine, korean_call.pcm)
    assert [f.utterance for f in journaled] == list(range(len(journaled)))


class FakeRecognizer:
    sample_rate_hz = 16000

    def accept(self, pcm: bytes) -> list[Final]:
        return []

    def partial(self) -> str:
        return ""

    def horizon_ms(self) -> int:
        return 0

    def flush(self) -> list[Final]:
        return []

    def reset(self) -> None:
        pass

    def restart(self) -> None:
        pass

    def resume(self, position_samples: int, next_utterance: int) -> None:
        pass

    def replay(self, pcm: bytes) -> list[Final]:
        return []

    def close(self) -> None:
        pass


def test_an_undeliverable_event_is_parked_and_does_not_block_the_others(
    tmp_path: Path,
    harness: Harness,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    topic = topic_factory()
    outbox = SqliteOutbox.open(tmp_path)
    publisher = harness.start(KafkaConfig(KafkaClientSettings(kafka_bootstrap), topic=topic), outbox)
    publisher.publish(finals_events("huge", 1, metadata={"blob": "x" * 2_000_000}))
    publisher.publish(finals_events("fine", 1))
    messages = consume_until(consumer_factory(topic), lambda m: len(m) >= 1)
    assert [m.key() for m in messages] == [b"fine"]
    wait_for(lambda: outbox.parked_count() == 1, 10, "the huge event to be parked")
    assert outbox.count() == 0
    assert harness.metric("decoder_outbox_parked") == 1


def stub_session(session_id: str, finals: int = 0) -> Any:
    """What the sink reads of a ``Session``."""
    config = SessionConfig(user_id="agent-7", metadata={"queue": "sales"})
    return SimpleNamespace(
        id=session_id, config=config, finals=[None] * finals, audio_ms=2400, partition=None
    )


STUB_ENGINE: Any = SimpleNamespace(name="vosk", model=SimpleNamespace(name="m", language="ko"))


def test_partials_go_only_to_their_own_topic_when_enabled(
    tmp_path: Path,
    harness: Harness,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    finals_topic, partial_topic = topic_factory(), topic_factory()
    partial = PartialTranscriptEvent(
        "call", "", 0, "안녕", 600, "vosk", "m", "ko", "2026-01-31T12:00:00.000Z"
    )
    disabled = harness.start(
        KafkaConfig(KafkaClientSettings(kafka_bootstrap), topic=finals_topic), SqliteOutbox.open(tmp_path)
    )
    disabled.publish_partial(partial)  # a no-op
    config = KafkaConfig(
        KafkaClientSettings(kafka_bootstrap), topic=finals_topic, partials=True, partial_topic=partial_topic
    )
    sink = TranscriptSink(harness.start(config, SqliteOutbox.open(tmp_path / "second")), lambda: STUB_ENGINE)
    sink.partial(stub_session("call", finals=1), "오늘 날")
    sink.partial(stub_session("call", finals=1), " ")  # nothing to say: nothing published
    sink(stub_session("call"), [Final(0, "안녕하세요", 300, 1200), Final(1, "", 1300, 1400)])
    messages = consume_until(consumer_factory(finals_topic, partial_topic), lambda m: len(m) >= 2)
    by_topic = {m.topic(): event_value(m) for m in messages}
    schema_validator("transcript.partial.v1").validate(by_topic[partial_topic])
    assert by_topic[partial_topic] | {"produced_at": "-"} == {
        "schema": "transcript.partial.v1",
        "partial": True,
        "session_id": "call",
        "user_id": "agent-7",
        "utterance": 1,
        "text": "오늘 날",
        "audio_ms": 2400,
        "engine": "vosk",
        "model": "m",
        "language": "ko",
        "produced_at": "-",
        "source": "decoder",
    }
    final = by_topic[finals_topic]
    assert (final["event_id"], final["text"], final["metadata"]) == (
        "call:0",
        "안녕하세요",
        {"queue": "sales"},
    )
    produced = {"outcome": "produced"}
    wait_for(lambda: harness.metric("decoder_kafka_partials_total", produced) == 1, 10, "a partial counted")
