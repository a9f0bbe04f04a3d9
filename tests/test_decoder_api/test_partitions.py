"""Partitions added to a live finals topic: every call stays on the partition it started on.

A subscriber reads each partition in offset order; when a call's finals moved to another
partition mid-call (the key partitioner after the count changed), it could read them out of
order. The decoder pins each call to its key's murmur2 partition at the count known when the
call opened; the pin travels in the registry (takeover) and in the outbox (restart).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewPartitions
from prometheus_client import CollectorRegistry

from contract.kafka import KafkaClientSettings
from decoder_api.delivery.outbox import (
    JOURNAL_PREFIX,
    REDIS_KEY_PREFIX,
    OutboxRecord,
    RedisOutbox,
    SqliteOutbox,
)
from decoder_api.delivery.partitioner import key_partition
from decoder_api.delivery.publisher import KafkaConfig, PublisherMetrics, TranscriptPublisher, TranscriptSink
from decoder_api.engines.vosk import VoskEngine
from decoder_api.http.auth import authorize_session
from decoder_api.metrics import DecoderMetrics
from decoder_api.sessions.registry import ChunkUpdate, RedisRegistry, SessionRecord
from decoder_api.sessions.session import Session, SessionConfig, SessionLimits
from decoder_api.sessions.store import SessionStore
from devtools.processes import DecoderServer, start_decoder
from tests.conftest import RATE_HZ, SpokenCall
from tests.kafka import (
    Call,
    ConsumerFactory,
    TopicFactory,
    consume_until,
    decoder_env,
    event_value,
    launch_decoder,
    metric,
    murmur2_partition,
    session_messages,
    wait_for,
)
from tests.reference import ReferenceEngine
from tests.test_decoder_api.test_failover import Caller, chunks_of, uninterrupted
from tests.test_decoder_api.test_kafka_pipeline import CHUNK_BYTES, expected, received
from tests.test_decoder_api.test_publisher import STUB_ENGINE, UNREACHABLE, finals_events

BEFORE, AFTER = 2, 6  # partitions of the finals topic before and after they are added
MOVING_CALLS = 3
# The journal table as the release before pinning wrote it.
OLD_SCHEMA = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    parked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
)
"""


def moves(session_id: str) -> bool:
    """Whether the key partitioner sends this call elsewhere once the topic grows (2 in 3 do)."""
    key = session_id.encode()
    return murmur2_partition(key, BEFORE) != murmur2_partition(key, AFTER)


def add_partitions(bootstrap: str, topic: str, total: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_partitions([NewPartitions(topic, total)]).values():
        future.result(timeout=30)


def partitions_seen(server: DecoderServer, count: int) -> None:
    wait_for(
        lambda: metric(server, "decoder_kafka_partitions") == count,
        30,
        f"the decoder to see {count} partitions of its topic",
    )


def open_call(base: str, wanted: Callable[[str], bool]) -> Call:
    """A call whose server-chosen id satisfies ``wanted``; the others end with no audio (no final)."""
    for _ in range(100):
        call = Call(base).open()
        if wanted(call.session_id):
            return call
        call.end()
    raise AssertionError("no session id as wanted in 100 tries")


def in_parallel(*actions: Callable[[], object]) -> None:
    """Run ``actions`` at the same time; the first failure is raised here."""
    with ThreadPoolExecutor(len(actions)) as pool:
        for future in [pool.submit(action) for action in actions]:
            future.result()


def finish(call: Call, pcm: bytes) -> None:
    call.send_audio(pcm, CHUNK_BYTES)
    call.end()


def by_partition_order(messages: list[Message], session_id: str) -> list[Message]:
    """What a subscriber reads of one call: its messages, each partition in offset order."""
    mine = session_messages(messages, session_id)
    return sorted(mine, key=lambda m: (m.partition(), m.offset()))


def pcm_until(call: SpokenCall, turn: int) -> int:
    """Bytes of the call before its turn ``turn`` starts."""
    return call.spans_ms[turn][0] * RATE_HZ // 1000 * 2


@pytest.fixture
def decoders() -> Iterator[list[DecoderServer]]:
    started: list[DecoderServer] = []
    yield started
    for server in started:
        server.stop(signal.SIGKILL)


# --- the partitioner -------------------------------------------------------------------------


def test_the_pin_is_the_java_clients_partition_of_the_key(
    kafka_bootstrap: str, topic_factory: TopicFactory, consumer_factory: ConsumerFactory
) -> None:
    """While the count is unchanged a pinned call lands where every other client puts its key."""
    topic = topic_factory("keys", AFTER)
    keys = [f"call-{i}{'x' * (i % 4)}".encode() for i in range(60)]  # every tail length
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    for key in keys:
        producer.produce(topic, key=key, value=b"x")
    assert producer.flush(30) == 0
    messages = consume_until(consumer_factory(topic), lambda ms: len(ms) >= len(keys))
    assert {m.key(): m.partition() for m in messages} == {k: key_partition(k, AFTER) for k in keys}
    assert {key_partition(k, AFTER) for k in keys} == set(range(AFTER))


# --- end to end ------------------------------------------------------------------------------


def test_calls_keep_their_partition_when_partitions_are_added_mid_call(
    decoders: list[DecoderServer],
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    korean_call: SpokenCall,
) -> None:
    topic = topic_factory("transcripts", BEFORE)
    server = launch_decoder(tmp_path, decoder_env(kafka_bootstrap, topic, tmp_path / "outbox"))
    decoders.append(server)
    partitions_seen(server, BEFORE)
    calls = [open_call(server.url, moves) for _ in range(MOVING_CALLS)]  # each would move unpinned
    cut = pcm_until(korean_call, 2)
    in_parallel(*(lambda c=c: c.send_audio(korean_call.pcm[:cut], CHUNK_BYTES) for c in calls))
    assert all(expected(call) for call in calls)  # every call has finals before the topic grows
    produced = sum(len(expected(call)) for call in calls)
    # Delivered: nothing left in the outbox, and at least these finals produced (the sessions
    # open_call ended unused each add a call.ended event).
    wait_for(
        lambda: (
            metric(server, "decoder_kafka_queued") == 0
            and (metric(server, "decoder_kafka_produced_total") or 0) >= produced
        ),
        30,
        "first finals delivered",
    )
    add_partitions(kafka_bootstrap, topic, AFTER)
    partitions_seen(server, AFTER)  # the producer's key partitioner now spreads keys over 6
    late = open_call(server.url, lambda sid: murmur2_partition(sid.encode(), AFTER) >= BEFORE)
    in_parallel(
        *(lambda c=c: finish(c, korean_call.pcm[cut:]) for c in calls),
        lambda: finish(late, korean_call.pcm),
    )
    everyone = [*calls, late]
    total = sum(len(expected(call)) for call in everyone)
    messages = consume_until(
        consumer_factory(topic),
        lambda ms: sum(len(session_messages(ms, c.session_id)) for c in everyone) >= total,
    )
    for call in calls:
        mine = by_partition_order(messages, call.session_id)
        assert {m.partition() for m in mine} == {murmur2_partition(call.session_id.encode(), BEFORE)}
        assert received([event_value(m) for m in mine]) == expected(call)  # in order, none lost
    late_messages = by_partition_order(messages, late.session_id)
    assert {m.partition() for m in late_messages} == {murmur2_partition(late.session_id.encode(), AFTER)}
    assert received([event_value(m) for m in late_messages]) == expected(late)


def test_a_takeover_keeps_publishing_to_the_first_owners_partition(
    decoders: list[DecoderServer],
    tmp_path: Path,
    redis_url: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    reference_engine: ReferenceEngine,
    korean_call: SpokenCall,
) -> None:
    topic = topic_factory("transcripts", BEFORE)
    for role in ("owner", "successor"):
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        decoders.append(
            start_decoder(
                tmp_path,
                {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic},
                engine="vosk",
                model="ko",
                redis_url=redis_url,
                instance_id=name,
                outbox_name=name,
                registry_heartbeat_ttl_s="1.5",
                pool_warm="1",
            )
        )
    owner, successor = decoders
    partitions_seen(owner, BEFORE)
    caller = Caller([owner.url, successor.url])
    caller.open()
    while not moves(caller.sid):
        caller.end()
        caller = Caller([owner.url, successor.url])
        caller.open()
    chunks = chunks_of(korean_call)
    cut = len(chunks) // 2
    for seq, chunk in enumerate(chunks[:cut]):
        caller.send(seq, chunk)
    assert caller.finals
    wait_for(lambda: metric(owner, "decoder_kafka_queued") == 0, 30, "the owner's finals delivered")
    add_partitions(kafka_bootstrap, topic, AFTER)
    partitions_seen(successor, AFTER)
    owner.stop(signal.SIGKILL)
    for seq, chunk in enumerate(chunks[cut:], start=cut):
        caller.send(seq, chunk)
    caller.end()
    texts = uninterrupted(reference_engine, korean_call.pcm)
    messages = consume_until(
        consumer_factory(topic), lambda ms: len(session_messages(ms, caller.sid)) >= len(texts)
    )
    mine = by_partition_order(messages, caller.sid)
    assert {m.partition() for m in mine} == {murmur2_partition(caller.sid.encode(), BEFORE)}
    assert [event_value(m)["text"] for m in mine] == texts
    assert [event_value(m)["utterance"] for m in mine] == list(range(len(texts)))


# --- the publisher ---------------------------------------------------------------------------


@pytest.fixture
def publishers() -> Iterator[list[TranscriptPublisher]]:
    started: list[TranscriptPublisher] = []
    yield started
    for publisher in started:
        publisher.close(timeout_s=1)


def start_publisher(
    publishers: list[TranscriptPublisher], config: KafkaConfig, outbox: SqliteOutbox
) -> TranscriptPublisher:
    publisher = TranscriptPublisher(config, outbox, PublisherMetrics(CollectorRegistry()))
    publisher.start()
    publishers.append(publisher)
    return publisher


def test_the_publisher_pins_new_calls_by_the_partition_count_it_last_saw(
    publishers: list[TranscriptPublisher],
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
) -> None:
    key = next(k for k in (uuid.uuid4().hex.encode() for _ in range(100)) if moves(k.decode()))
    offline = start_publisher(
        publishers, KafkaConfig(KafkaClientSettings(UNREACHABLE)), SqliteOutbox.open(tmp_path / "a")
    )
    wait_for(lambda: offline.checks()[0].get("kafka_error"), 20, "the broker found unreachable")
    assert offline.partition_for(key) is None  # unknown: the key partitioner, as before pinning
    topic = topic_factory("transcripts", BEFORE)
    online = start_publisher(
        publishers,
        KafkaConfig(KafkaClientSettings(kafka_bootstrap), topic=topic),
        SqliteOutbox.open(tmp_path / "b"),
    )
    wait_for(lambda: online.partition_for(key) == key_partition(key, BEFORE), 30, "the count of 2")
    sink = TranscriptSink(online, lambda: STUB_ENGINE)
    assert sink.pin(key.decode()) == key_partition(key, BEFORE)
    add_partitions(kafka_bootstrap, topic, AFTER)
    wait_for(lambda: online.partition_for(key) == key_partition(key, AFTER), 30, "the count of 6")


def test_journaled_finals_go_to_their_pinned_partition_after_a_restart(
    publishers: list[TranscriptPublisher],
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
) -> None:
    """Finals journaled by a decoder that could not reach Kafka, pinned at 2 partitions, are
    produced by the next process to the pinned partition although the topic has 6 by then;
    an entry of the release before pinning (no partition) goes where its key goes now."""
    topic = topic_factory("transcripts", BEFORE)
    session, legacy = (next(s for s in (uuid.uuid4().hex for _ in range(100)) if moves(s)) for _ in "ab")
    pinned = key_partition(session.encode(), BEFORE)
    old = finals_events(legacy, 1)
    write_old_journal(tmp_path, [OutboxRecord(topic, e.key, e.to_json(), e.headers) for e in old])
    first = start_publisher(
        publishers, KafkaConfig(KafkaClientSettings(UNREACHABLE), topic=topic), SqliteOutbox.open(tmp_path)
    )
    first.publish(finals_events(session, 3), partition=pinned)
    first.close(timeout_s=0.5)
    journal = SqliteOutbox.open(tmp_path)
    assert [e.record.partition for e in journal.read(None, 10)] == [None, pinned, pinned, pinned]
    journal.close()
    add_partitions(kafka_bootstrap, topic, AFTER)
    second = start_publisher(
        publishers,
        KafkaConfig(KafkaClientSettings(kafka_bootstrap), topic=topic),
        SqliteOutbox.open(tmp_path),
    )
    messages = consume_until(consumer_factory(topic), lambda ms: len(ms) >= 4)
    assert [(m.partition(), event_value(m)["utterance"]) for m in session_messages(messages, session)] == [
        (pinned, 0),
        (pinned, 1),
        (pinned, 2),
    ]
    assert pinned != key_partition(session.encode(), AFTER)  # where the key alone would go now
    assert [m.partition() for m in session_messages(messages, legacy)] == [
        key_partition(legacy.encode(), AFTER)
    ]
    wait_for(lambda: second.pending == 0, 30, "an empty outbox")


# --- the outbox ------------------------------------------------------------------------------


def write_old_journal(directory: Path, records: list[OutboxRecord]) -> Path:
    """A journal (and its lock file) as the release before pinning left it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{JOURNAL_PREFIX}{uuid.uuid4().hex}.sqlite3"
    path.with_suffix(".lock").touch()
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    db.executemany(
        "INSERT INTO outbox (topic, key, value, headers, created_at) VALUES (?, ?, ?, ?, 0)",
        [(r.topic, r.key, r.value, json.dumps(r.headers)) for r in records],
    )
    db.commit()
    db.close()
    return path


def old_records(key: bytes, n: int) -> list[OutboxRecord]:
    return [OutboxRecord("t", key, f"{key.decode()}-{i}".encode(), (("schema", "x"),)) for i in range(n)]


def test_a_journal_of_the_release_before_pinning_is_migrated_in_place(tmp_path: Path) -> None:
    write_old_journal(tmp_path, old_records(b"a", 2))
    outbox = SqliteOutbox.open(tmp_path)  # the old journal is unlocked: taken over and migrated
    outbox.append([OutboxRecord("t", b"c", b"c-0", (), partition=4)])
    pinned = [(e.record.value, e.record.partition) for e in outbox.read(None, 10)]
    assert pinned == [(b"a-0", None), (b"a-1", None), (b"c-0", 4)]
    outbox.close()
    again = SqliteOutbox.open(tmp_path)  # already migrated: opened as it is
    assert [(e.record.value, e.record.partition) for e in again.read(None, 10)] == pinned
    again.close()
    assert len(list(tmp_path.glob(f"{JOURNAL_PREFIX}*.sqlite3"))) == 1


@pytest.mark.parametrize("orphan_release", ["before-pinning", "current"])
def test_an_adopted_journal_keeps_its_pins(tmp_path: Path, orphan_release: str) -> None:
    """A dead process's journal of either release is adopted in order; its pins stay."""
    adopted: list[tuple[bytes, int | None]]
    if orphan_release == "before-pinning":
        orphan = write_old_journal(tmp_path / "orphan", old_records(b"o", 2))
        adopted = [(b"o-0", None), (b"o-1", None)]
    else:
        dead = SqliteOutbox.open(tmp_path / "orphan")
        dead.append([OutboxRecord("t", b"o", b"o-0", (), partition=1), *old_records(b"o", 2)[1:]])
        dead.close()
        orphan = Path(dead.location)
        adopted = [(b"o-0", 1), (b"o-1", None)]
    outbox = SqliteOutbox.open(tmp_path / "own")
    outbox.append([OutboxRecord("t", b"c", b"c-0", (), partition=4)])
    assert outbox.adopt(orphan) == 2
    assert [(e.record.value, e.record.partition) for e in outbox.read(None, 10)] == [(b"c-0", 4), *adopted]
    outbox.close()


def test_the_redis_outbox_keeps_the_partition_and_reads_older_entries(redis_url: str) -> None:
    name = f"test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    outbox = RedisOutbox.connect(redis_url, name)
    try:
        client.xadd(  # an entry of the release before pinning
            f"{REDIS_KEY_PREFIX}{name}", {"topic": "t", "key": b"k", "value": b"old", "headers": "[]"}
        )
        outbox.append([OutboxRecord("t", b"k", b"new", (("schema", "x"),), partition=5)])
        assert [(e.record.value, e.record.partition) for e in outbox.read(None, 10)] == [
            (b"old", None),
            (b"new", 5),
        ]
    finally:
        client.delete(f"{REDIS_KEY_PREFIX}{name}")
        client.close()
        outbox.close()


# --- sessions and the registry ---------------------------------------------------------------


def test_the_registry_carries_the_pin_to_whoever_continues_the_call(redis_url: str) -> None:
    registry = RedisRegistry(redis_url, f"test-{uuid.uuid4().hex[:8]}", 5.0, 60.0)
    session_id = uuid.uuid4().hex
    record = SessionRecord(
        session_id, "a", {"sample_rate_hz": 16000, "words": False}, "h", None, 0, 0, 0, 0, (), ()
    )
    try:
        registry.save(record)
        loaded = registry.load(session_id)
        assert loaded is not None and loaded.partition is None  # not pinned yet
        registry.record_chunk(session_id, ChunkUpdate(b"\0\0", False, 1, 1, 0, 0, partition=3))
        registry.record_chunk(session_id, ChunkUpdate(b"\0\0", False, 2, 2, 0, 0))  # no pin: kept
        loaded = registry.load(session_id)
        assert loaded is not None and loaded.partition == 3
    finally:
        registry.remove(session_id)
        registry.close()


def test_a_session_is_pinned_at_open_or_else_at_its_first_final_and_a_takeover_keeps_the_pin(
    redis_url: str, vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    """Store A knows no partition count when the call opens and pins it at its first final;
    store B, which would pin it elsewhere, takes the call over and keeps A's pin."""
    counts: dict[str, int | None] = {"a": None, "b": AFTER}
    published: list[tuple[str, int | None]] = []

    def store(name: str) -> SessionStore:
        def pin(session_id: str) -> int | None:
            count = counts[name]
            return None if count is None else key_partition(session_id.encode(), count)

        def on_finals(session: Session, finals: Any) -> None:
            published.extend((name, session.partition) for _ in finals)

        registry = RedisRegistry(redis_url, f"{name}-{uuid.uuid4().hex[:8]}", 5.0, 60.0)
        return SessionStore(
            vosk_engine.create,
            SessionLimits(),
            DecoderMetrics(),
            on_finals=on_finals,
            registry=registry,
            instance_id=registry.instance_id,
            pin_partition=pin,
        )

    first, second = store("a"), store("b")
    try:
        session, token = first.open(SessionConfig(RATE_HZ))
        while not moves(session.id):  # B's own pin would differ from A's
            first.delete(session)
            session, token = first.open(SessionConfig(RATE_HZ))
        assert session.partition is None
        counts["a"] = BEFORE  # the first metadata answer arrives
        chunks = chunks_of(korean_call)
        for chunk in chunks[: len(chunks) // 2]:
            with session.locked():
                session.feed(chunk)
        pinned = key_partition(session.id.encode(), BEFORE)
        assert published and set(published) == {("a", pinned)}
        # A never heartbeat: its lease is over
        taken = second.get(session.id, partial(authorize_session, token=token, key_hash=None))
        assert taken is not session and taken.partition == pinned
        for chunk in chunks[len(chunks) // 2 :]:
            with taken.locked():
                taken.feed(chunk)
        second.end(taken)
        assert "b" in {name for name, _ in published}
        assert [p for _, p in published] == [pinned] * len(uninterrupted(vosk_engine, korean_call.pcm))
    finally:
        first.close()
        second.close()
