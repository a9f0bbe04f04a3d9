"""The enrichment consumer against the real broker and the trained model."""

from __future__ import annotations

import dataclasses
import json
import signal
import uuid
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from nlp_consumer.events import validate_enriched
from tests.kafka import PARTITIONS, ConsumerFactory, TopicFactory, consume_until, wait_for
from tests.test_nlp_consumer.conftest import ConsumerRunner, Turn, produce, produce_events, transcript_event

pytestmark = pytest.mark.timeout(1800)  # the first test of a fresh machine trains the model
# These finals are published without a call.ended event (as the recorder publishes them): their
# calls hold the commit back until they have been idle this long.
NEVER_ENDED = {"NLP_CALL_IDLE_S": "1"}


def call_events(turns: list[Turn], suffix: str) -> list[Any]:
    return [
        transcript_event(f"{t.call}-{suffix}", t.utterance, t.text, user_id=f"user-{t.call}") for t in turns
    ]


def values(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.value() or b"") for m in messages]


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        offsets = probe.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        probe.close()
    return sum(max(o.offset, 0) for o in offsets)


def test_sample_calls_come_out_enriched_in_order_and_with_the_intended_sentiment(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    consumer_runner: ConsumerRunner,
    manifest_turns: list[Turn],
) -> None:
    source, enriched, dlq = topic_factory("in"), topic_factory("enriched"), topic_factory("dlq")
    group = f"nlp-{uuid.uuid4().hex}"
    events = call_events(manifest_turns, uuid.uuid4().hex[:6])
    produce_events(kafka_bootstrap, source, events)
    run = consumer_runner(source, enriched, dlq, group, NLP_BATCH_SIZE="16", **NEVER_ENDED)

    messages = consume_until(consumer_factory(enriched), lambda got: len(got) >= len(events), timeout_s=300)

    documents = values(messages)
    for document in documents:
        validate_enriched(document)
    by_call: dict[str, list[int]] = defaultdict(list)
    for message, document in zip(messages, documents, strict=True):
        assert message.key() == document["session_id"].encode()
        by_call[document["session_id"]].append(document["utterance"])
    assert by_call == {e.session_id: sorted(by_call[e.session_id]) for e in events}  # in order per call
    assert sorted((d["session_id"], d["utterance"]) for d in documents) == sorted(
        (e.session_id, e.utterance) for e in events
    )

    intended = {(e.session_id, e.utterance): t.sentiment for e, t in zip(events, manifest_turns, strict=True)}
    agree = [d["sentiment"]["label"] == intended[(d["session_id"], d["utterance"])] for d in documents]
    assert sum(agree) / len(agree) >= 0.8
    first = next(d for d in documents if d["text"].startswith("This is really frustrating"))
    assert first["sentiment"]["label"] == "NEGATIVE" and first["explanation"][0]["word"] == "frustrating"
    assert first["keywords"] and first["analyzer"]["version"] and first["analyzer"]["runtime"] == "onnx-int8"
    original = next(e for e in events if e.event_id == first["event_id"]).to_dict()
    assert {k: v for k, v in first.items() if k in original and k != "schema"} == {
        k: v for k, v in original.items() if k != "schema"
    }

    # SIGTERM: the batch in hand is finished and committed, the process leaves cleanly
    wait_for(lambda: committed_total(kafka_bootstrap, group, source) == len(events), 60, "the final commit")
    assert run.process.stop(signal.SIGTERM) == 0
    assert "consumer_closed" in run.process.tail()


def test_poison_messages_go_to_the_dead_letter_topic_once(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    consumer_runner: ConsumerRunner,
) -> None:
    source, enriched, dlq = topic_factory("in"), topic_factory("enriched"), topic_factory("dlq")
    group = f"nlp-{uuid.uuid4().hex}"
    good = transcript_event("call-ok", 0, "Thank you, that was very helpful.")
    wrong_id = good.to_dict() | {"event_id": "call-ok:7"}
    missing = {k: v for k, v in good.to_dict().items() if k != "text"}
    records = [
        (b"call-x", b"{not json"),
        (b"call-ok", json.dumps(missing).encode()),
        (b"call-ok", json.dumps(wrong_id).encode()),
        (b"call-y", None),
        (good.key, good.to_json()),
    ]
    produce(kafka_bootstrap, source, records)
    consumer_runner(source, enriched, dlq, group, **NEVER_ENDED)

    dead = consume_until(consumer_factory(dlq), lambda got: len(got) >= 4, timeout_s=300)
    out = consume_until(consumer_factory(enriched), lambda got: len(got) >= 1, timeout_s=60)

    assert [json.loads(m.value() or b"")["event_id"] for m in out] == ["call-ok:0"]
    assert sorted((m.value() or b"") for m in dead) == sorted(v or b"" for _, v in records[:4])
    errors = {}
    for message in dead:
        headers = {
            k: v.decode() if isinstance(v, bytes) else str(v) for k, v in list(message.headers() or [])
        }
        assert headers["dlq.source.topic"] == source and headers["dlq.consumer.group"] == group
        assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.error.code"] == "invalid_event"
        errors[message.value()] = headers["dlq.error"]
    assert "not UTF-8 JSON" in errors[b"{not json"]
    assert "text" in errors[json.dumps(missing).encode()]
    assert "event_id" in errors[json.dumps(wrong_id).encode()]
    # never retried: everything is committed, and nothing more arrives in the dead-letter topic
    wait_for(lambda: committed_total(kafka_bootstrap, group, source) == len(records), 60, "the commit")
    assert len(consume_until(consumer_factory(dlq), lambda got: len(got) >= 4, timeout_s=60)) == 4


def test_an_event_stamped_with_an_offset_is_enriched_not_dead_lettered(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    consumer_runner: ConsumerRunner,
) -> None:
    """RFC 3339 writes UTC as ``Z`` or ``+00:00``: both are valid transcript.v1 events."""
    source, enriched, dlq = topic_factory("in"), topic_factory("enriched"), topic_factory("dlq")
    stamp = "2026-01-31T12:00:00.250+00:00"
    offset = dataclasses.replace(
        transcript_event("call-offset", 0, "Thank you, that was very helpful."), produced_at=stamp
    )
    zulu = transcript_event("call-offset", 1, "Thank you.")
    produce_events(kafka_bootstrap, source, [offset, zulu])
    consumer_runner(source, enriched, dlq, f"nlp-{uuid.uuid4().hex}")

    out = values(consume_until(consumer_factory(enriched), lambda got: len(got) >= 2, timeout_s=300))

    assert [(d["event_id"], d["produced_at"]) for d in out] == [
        ("call-offset:0", stamp),
        ("call-offset:1", zulu.produced_at),
    ]
    for document in out:  # each message is either enriched or dead-lettered: both were enriched
        validate_enriched(document)


def test_a_consumer_killed_mid_batch_enriches_every_event_after_restart(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    consumer_runner: ConsumerRunner,
    manifest_turns: list[Turn],
) -> None:
    source, enriched, dlq = topic_factory("in"), topic_factory("enriched"), topic_factory("dlq")
    group = f"nlp-{uuid.uuid4().hex}"
    events = [e for copy in range(3) for e in call_events(manifest_turns, f"{copy}-{uuid.uuid4().hex[:6]}")]
    produce_events(kafka_bootstrap, source, events)
    reader = consumer_factory(enriched)
    first = consumer_runner(source, enriched, dlq, group, NLP_BATCH_SIZE="8", **NEVER_ENDED)

    seen = consume_until(reader, lambda got: len(got) >= 16, timeout_s=300)
    assert first.process.stop(signal.SIGKILL) == -signal.SIGKILL  # while it works on a later batch
    assert len(seen) < len(events)

    consumer_runner(source, enriched, dlq, group, NLP_BATCH_SIZE="8", **NEVER_ENDED)
    wanted = {e.event_id for e in events}
    seen += consume_until(
        reader,
        lambda got: {json.loads(m.value() or b"")["event_id"] for m in seen + got} >= wanted,
        timeout_s=600,
    )

    ids = [json.loads(m.value() or b"")["event_id"] for m in seen]
    assert set(ids) == wanted  # at least once, and exactly once after de-duplication by event_id
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= 8 * PARTITIONS  # at most the uncommitted batch in flight
    labels: dict[str, set[str]] = defaultdict(set)
    for document in values(seen):
        labels[document["event_id"]].add(document["sentiment"]["label"])
    assert all(len(found) == 1 for found in labels.values())  # a redelivery enriches identically
    wait_for(lambda: committed_total(kafka_bootstrap, group, source) == len(events), 120, "the final commit")
