"""Calls through real decoder processes into a real broker: every final arrives, in order, once.

The decoders read the standard ``KAFKA_*`` variables; each test has its own topic and its own
SQLite outbox directory. Brokers that a test pauses, stops or starts late are its own.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from contract.events import is_call_ended
from decoder_api.delivery.outbox import SqliteOutbox
from devtools import devstack
from devtools.processes import ROOT, DecoderServer, free_port
from tests.conftest import RATE_HZ, SpokenCall, split_turns
from tests.kafka import (
    Broker,
    Call,
    ConsumerFactory,
    TopicFactory,
    call_ended_messages,
    consume_until,
    decoder_env,
    dedup_by_event_id,
    event_value,
    launch_decoder,
    metric,
    murmur2_partition,
    produce_fence,
    readyz,
    session_messages,
    start_broker,
    stream_call,
    wait_for,
)
from tests.test_contract.test_events import schema_validator

CHUNK_BYTES = RATE_HZ * 2 * 200 // 1000  # 200 ms of 16-bit mono PCM
PARTITIONS = 4

StartDecoder = Callable[..., DecoderServer]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartDecoder]:
    """``start(bootstrap, topic, wait_ready=True, outbox_dir=..., **settings)``; stopped afterwards."""
    servers: list[DecoderServer] = []

    def start_decoder(
        bootstrap: str,
        topic: str,
        wait_ready: bool = True,
        outbox_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        **settings: str,
    ) -> DecoderServer:
        env = decoder_env(bootstrap, topic, outbox_dir or tmp_path / "outbox", **settings)
        server = launch_decoder(tmp_path, env | (extra_env or {}), wait_ready=wait_ready)
        servers.append(server)
        return server

    yield start_decoder
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Broker]]:
    """Brokers a test starts itself (to pause or stop them); stopped afterwards."""
    started: list[Broker] = []
    yield started
    for broker in started:
        broker.stop()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, topic_factory: TopicFactory
) -> Iterator[tuple[DecoderServer, str]]:
    """One publishing decoder and its topic for the tests that do not break anything."""
    topic = topic_factory("transcripts", PARTITIONS)
    tmp = tmp_path_factory.mktemp("shared")
    server = launch_decoder(tmp, decoder_env(kafka_bootstrap, topic, tmp / "outbox"))
    yield server, topic
    server.stop()


def expected(call: Call) -> list[tuple[int, str]]:
    """(utterance, text) of the call's non-empty finals, as the HTTP API returned them."""
    return [(f["utterance"], f["text"]) for f in call.finals if f["text"].strip()]


def received(values: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(utterance, text) of the finals among ``values`` (a call's call.ended event left out)."""
    return [(v["utterance"], v["text"]) for v in values if v["schema"] == "transcript.v1"]


def wait_until_delivered(server: DecoderServer, count: int) -> None:
    wait_for(
        lambda: (
            metric(server, "decoder_kafka_queued") == 0
            and metric(server, "decoder_kafka_produced_total") == count
        ),
        60,
        f"{count} events acknowledged by the broker",
    )


def test_a_call_yields_exactly_its_utterances_in_order_keyed_by_session(
    shared: tuple[DecoderServer, str],
    kafka_bootstrap: str,
    consumer_factory: ConsumerFactory,
    korean_call: SpokenCall,
) -> None:
    server, topic = shared
    produced_before = metric(server, "decoder_kafka_produced_total") or 0
    metadata = {"campaign": "spring", "queue": 3}
    call = stream_call(
        server.url, korean_call.pcm, CHUNK_BYTES, user_id="agent-7", words=True, metadata=metadata
    )
    assert len(expected(call)) >= 3
    wait_until_delivered(server, int(produced_before) + len(expected(call)) + 1)  # and call.ended
    fence = produce_fence(kafka_bootstrap, topic, call.session_id.encode())
    messages = consume_until(consumer_factory(topic), lambda ms: any(m.value() == fence for m in ms))
    mine = [m for m in session_messages(messages, call.session_id) if m.value() != fence]
    values = [event_value(m) for m in mine]
    assert received(values) == expected(call)  # exactly these, in order, no duplicate
    assert len({m.partition() for m in mine}) == 1
    assert mine[0].partition() == murmur2_partition(call.session_id.encode(), PARTITIONS)
    validator = schema_validator("transcript.v1")
    for message, value, final in zip(
        mine, values, [f for f in call.finals if f["text"].strip()], strict=True
    ):
        validator.validate(value)
        assert dict(message.headers() or []) == {
            "content-type": b"application/json",
            "schema": b"transcript.v1",
        }
        assert value["event_id"] == f"{call.session_id}:{final['utterance']}"
        assert (value["start_ms"], value["end_ms"]) == (final["start_ms"], final["end_ms"])
        assert value["words"] == final["words"]
        assert (value["user_id"], value["metadata"], value["source"]) == ("agent-7", metadata, "decoder")
        assert (value["engine"], value["language"]) == ("vosk", "ko")
    (ended,) = call_ended_messages(messages, call.session_id)  # after the last final, same partition
    assert (ended.partition(), (ended.offset() or 0) > (mine[-1].offset() or 0)) == (
        mine[0].partition(),
        True,
    )
    summary = event_value(ended)
    schema_validator("call.ended.v1").validate(summary)
    assert dict(ended.headers() or [])["schema"] == b"call.ended.v1"
    assert (summary["reason"], summary["finals"], summary["channels"], summary["speakers"]) == (
        "normal",
        len(mine),
        1,
        [],
    )
    assert (summary["event_id"], summary["metadata"]) == (f"{call.session_id}:ended", metadata)


def test_a_stereo_call_names_each_final_s_speaker_and_ends_with_call_ended(
    shared: tuple[DecoderServer, str],
    kafka_bootstrap: str,
    consumer_factory: ConsumerFactory,
    korean_call: SpokenCall,
) -> None:
    server, topic = shared
    speakers = ["상담원", "customer"]
    call = stream_call(server.url, split_turns(korean_call), CHUNK_BYTES * 2, channels=2, speakers=speakers)
    assert [f["channel"] for f in call.finals] == [t % 2 for t in range(len(korean_call.turns))]
    # call.ended follows the call's last final on its partition: once it is read, every final is
    sid = call.session_id
    messages = consume_until(consumer_factory(topic), lambda ms: bool(call_ended_messages(ms, sid)))
    values = [event_value(m) for m in session_messages(messages, call.session_id)]
    assert [(v["utterance"], v["channel"], v["speaker"]) for v in values] == [
        (f["utterance"], f["channel"], speakers[f["channel"]]) for f in call.finals
    ]
    (ended,) = call_ended_messages(messages, call.session_id)
    summary = event_value(ended)
    assert (summary["channels"], summary["speakers"], summary["finals"]) == (2, speakers, len(values))


def test_two_concurrent_calls_interleave_across_partitions_and_each_stays_ordered(
    shared: tuple[DecoderServer, str], consumer_factory: ConsumerFactory, korean_call: SpokenCall
) -> None:
    server, topic = shared
    first = Call(server.url).open()
    second = Call(server.url).open()
    partition = murmur2_partition(first.session_id.encode(), PARTITIONS)
    while murmur2_partition(second.session_id.encode(), PARTITIONS) == partition:  # 1 in 4
        second.end()
        second = Call(server.url).open()
    threads = [
        threading.Thread(target=lambda c=c: (c.send_audio(korean_call.pcm, CHUNK_BYTES), c.end()))
        for c in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = len(expected(first)) + len(expected(second))

    def both_complete(ms: list[Any]) -> bool:
        return (
            len(session_messages(ms, first.session_id)) + len(session_messages(ms, second.session_id))
            >= total
        )

    messages = consume_until(consumer_factory(topic), both_complete)
    for call in (first, second):
        mine = session_messages(messages, call.session_id)
        assert received([event_value(m) for m in mine]) == expected(call)
        assert {m.partition() for m in mine} == {murmur2_partition(call.session_id.encode(), PARTITIONS)}
    assert session_messages(messages, first.session_id)[0].partition() != (
        session_messages(messages, second.session_id)[0].partition()
    )


def test_a_broker_paused_mid_call_delays_finals_but_loses_none(
    start: StartDecoder,
    brokers: list[Broker],
    tmp_path: Path,
    consumer_factory: ConsumerFactory,
    korean_call: SpokenCall,
) -> None:
    broker = start_broker(tmp_path)
    brokers.append(broker)
    topic = TopicFactory(broker.bootstrap)("transcripts", PARTITIONS)
    server = start(broker.bootstrap, topic)
    half = len(korean_call.pcm) // 2 // 2 * 2
    call = Call(server.url).open()
    call.send_audio(korean_call.pcm[:half], CHUNK_BYTES)
    broker.pause()  # the outage lasts until the decoder has noticed it with finals journaled
    call.send_audio(korean_call.pcm[half:], CHUNK_BYTES)
    call.end()
    wait_for(
        lambda: readyz(server)[1].get("checks", {}).get("kafka") == "unreachable", 20, "kafka unreachable"
    )
    assert readyz(server)[1]["checks"]["outbox_pending"] >= 1
    broker.resume()
    consumer = ConsumerFactory(broker.bootstrap)
    try:
        messages = consume_until(
            consumer(topic),
            lambda ms: len(dedup_by_event_id([event_value(m) for m in ms])) >= len(expected(call)),
            90,
        )
    finally:
        consumer.close_all()
    assert received(dedup_by_event_id([event_value(m) for m in messages])) == expected(call)
    wait_for(lambda: readyz(server)[1]["checks"]["outbox_pending"] == 0, 30, "an empty outbox")


def test_a_broker_down_at_start_up_gets_every_final_once_it_starts(
    start: StartDecoder, brokers: list[Broker], tmp_path: Path, korean_call: SpokenCall
) -> None:
    ports, topic = devstack.KafkaPorts.free(), "transcripts-late"
    server = start(f"127.0.0.1:{ports.plaintext}", topic, kafka_unready_after_s="600")
    call = stream_call(server.url, korean_call.pcm, CHUNK_BYTES)
    checks = readyz(server)[1]["checks"]
    # its finals and the call.ended event that follows them
    assert (checks["kafka"], checks["outbox_pending"]) == ("unreachable", len(expected(call)) + 1)
    broker = start_broker(tmp_path, ports)  # the address the decoder was given
    brokers.append(broker)
    devstack.create_topics(broker.bootstrap, [topic], PARTITIONS)
    consumer = ConsumerFactory(broker.bootstrap)
    try:
        messages = consume_until(
            consumer(topic),
            lambda ms: len(dedup_by_event_id([event_value(m) for m in ms])) >= len(expected(call)),
            90,
        )
    finally:
        consumer.close_all()
    assert received(dedup_by_event_id([event_value(m) for m in messages])) == expected(call)
    wait_for(lambda: readyz(server)[1]["checks"]["kafka"] == "connected", 30, "kafka connected")
    wait_for(lambda: readyz(server)[1]["checks"]["outbox_pending"] == 0, 30, "an empty outbox")


@pytest.mark.parametrize(
    ("kafka_env", "complaint"),
    [
        ({}, ""),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": "decoder",
                "KAFKA_SASL_PASSWORD": "wrong",
            },
            "SASL",
        ),
    ],
    ids=["unreachable-bootstrap", "wrong-credentials"],
)
def test_bad_settings_give_not_ready_and_keep_every_final(
    start: StartDecoder,
    kafka_bootstrap: str,
    tmp_path: Path,
    korean_call: SpokenCall,
    kafka_env: dict[str, str],
    complaint: str,
) -> None:
    bootstrap = kafka_bootstrap if kafka_env else f"127.0.0.1:{free_port()}"
    server = start(
        bootstrap, "transcripts-bad", wait_ready=False, extra_env=kafka_env, kafka_unready_after_s="0"
    )

    def not_ready() -> dict[str, Any] | None:
        status, body = readyz(server)
        checks = body.get("checks", {})
        return (
            body if status == 503 and checks.get("model") == "loaded" and checks.get("kafka_error") else None
        )

    body = wait_for(not_ready, 60, "a not-ready answer naming the Kafka problem")
    assert body["checks"]["kafka"] == "unreachable"
    assert complaint in body["checks"]["kafka_error"]
    assert body["checks"]["model"] == "loaded"
    first_turn_ms = korean_call.spans_ms[1][0]
    call = stream_call(server.url, korean_call.pcm[: first_turn_ms * RATE_HZ // 1000 * 2], CHUNK_BYTES)
    assert len(expected(call)) >= 1
    assert readyz(server)[1]["checks"]["outbox_pending"] == len(expected(call)) + 1  # and call.ended
    assert server.stop(signal.SIGTERM) == 0  # a clean shutdown; the finals stay journaled
    outbox = SqliteOutbox.open(tmp_path / "outbox")
    records = [e.record.value for e in outbox.read(None, 100)]
    journaled = [json.loads(value)["text"] for value in records if not is_call_ended(value)]
    assert len(journaled) == len(records) - 1
    assert journaled == [t for _, t in expected(call)]
    outbox.close()


def test_an_unknown_sasl_mechanism_is_a_clear_start_up_error(
    start: StartDecoder, kafka_bootstrap: str
) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "NOPE"}
    server = start(kafka_bootstrap, "transcripts-bad", wait_ready=False, extra_env=env)
    assert server.process is not None
    returncode = server.process.wait(timeout=60)
    assert returncode != 0
    # Checked when the settings load (contract.kafka), before any Kafka client exists; an unknown
    # mechanism that reaches librdkafka anyway is test_publisher's start-up error.
    assert "KAFKA_SASL_MECHANISM 'NOPE': expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in (
        server.log.read_text()
    )


def test_the_outbox_survives_sigkill_and_the_next_process_publishes_it(
    start: StartDecoder,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    tmp_path: Path,
    korean_call: SpokenCall,
) -> None:
    topic, outbox_dir = topic_factory("transcripts", PARTITIONS), tmp_path / "journal"
    nowhere = f"127.0.0.1:{free_port()}"
    first = start(nowhere, topic, outbox_dir=outbox_dir, kafka_unready_after_s="600")
    call = stream_call(first.url, korean_call.pcm, CHUNK_BYTES)
    assert metric(first, "decoder_kafka_queued") == len(expected(call)) + 1  # and its call.ended
    first.stop(signal.SIGKILL)
    second = start(kafka_bootstrap, topic, outbox_dir=outbox_dir)
    messages = consume_until(
        consumer_factory(topic),
        lambda ms: len(dedup_by_event_id([event_value(m) for m in ms])) >= len(expected(call)),
    )
    assert received(dedup_by_event_id([event_value(m) for m in messages])) == expected(call)
    wait_until_delivered(second, len(expected(call)) + 1)
    assert len(list(outbox_dir.glob("journal-*.sqlite3"))) == 1  # the orphan was adopted, not copied


def test_devstack_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "devstack"

    def run(action: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "devtools.devstack", action, "--dir", str(state)]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)

    up = run("up")
    assert up.returncode == 0, up.stderr
    env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines())
    assert up.stdout.splitlines() == [f"{k}={v}" for k, v in env.items()]
    try:
        assert run("status").returncode == 0
        admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
        assert_apache_kafka_in_kraft_mode(admin)
        assert_topics_as_in_the_manifests(admin)
        assert env["REDIS_URL"].startswith("redis://127.0.0.1:")
    finally:
        assert run("down").returncode == 0
    assert run("status").returncode == 1
    kafka_port = int(env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", kafka_port), timeout=5),
    ):
        pass


def test_partials_go_to_their_own_topic_only_when_asked_for(
    start: StartDecoder,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    korean_call: SpokenCall,
) -> None:
    topic, partial_topic = topic_factory("transcripts", 1), topic_factory("partials", 1)
    server = start(kafka_bootstrap, topic, kafka_partials="true", kafka_partial_topic=partial_topic)
    call = stream_call(server.url, korean_call.pcm, CHUNK_BYTES)
    fence = produce_fence(kafka_bootstrap, partial_topic, call.session_id.encode())
    messages = consume_until(consumer_factory(partial_topic), lambda ms: any(m.value() == fence for m in ms))
    partials = [event_value(m) for m in session_messages(messages, call.session_id) if m.value() != fence]
    assert partials
    assert all(p["partial"] is True and p["text"] for p in partials)
    validator = schema_validator("transcript.partial.v1")
    for value in partials:
        validator.validate(value)
    assert [p["utterance"] for p in partials] == sorted(p["utterance"] for p in partials)
    wait_until_delivered(server, len(expected(call)) + 1)
    fence = produce_fence(kafka_bootstrap, topic, call.session_id.encode())
    finals = consume_until(consumer_factory(topic), lambda ms: any(m.value() == fence for m in ms))
    values = [event_value(m) for m in session_messages(finals, call.session_id) if m.value() != fence]
    assert received(values) == expected(call)


def assert_apache_kafka_in_kraft_mode(admin: AdminClient) -> None:
    """The broker's own configuration, asked through the admin API: a KRaft broker and controller."""
    node = next(iter(admin.list_topics(timeout=10).brokers))
    resource = ConfigResource(ResourceType.BROKER, str(node))
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["process.roles"].value == "broker,controller"
    assert config["controller.listener.names"].value == "CONTROLLER"
    assert config["auto.create.topics.enable"].value == "false"


def assert_topics_as_in_the_manifests(admin: AdminClient) -> None:
    """Every topic of openshift/kafka/topics.yaml, with its partitions and configs (one replica)."""
    specs = devstack.manifest_topics()
    assert {s.name for s in specs} >= {"transcripts.v1", "transcripts.enriched.v1", "transcripts.dlq.v1"}
    metadata = admin.list_topics(timeout=10)
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    configs = {r.name: f.result(timeout=30) for r, f in admin.describe_configs(resources).items()}
    for spec in specs:
        assert len(metadata.topics[spec.name].partitions) == spec.partitions
        assert spec.config["retention.ms"] == configs[spec.name]["retention.ms"].value
        assert configs[spec.name]["min.insync.replicas"].value == "1"
