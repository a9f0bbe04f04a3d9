"""Kafka and Redis for tests: a real Apache Kafka broker and redis-server, topics, consumers, decoders.

Every test gets fresh topic names (uuid) and consumer group ids; waits poll a condition
against a deadline.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from confluent_kafka import Consumer, Message, Producer

from contract.events import is_call_ended, validate
from decoder_api.delivery.partitioner import key_partition
from devtools import devstack
from devtools.clients import HttpSession
from devtools.processes import DecoderServer, free_port

T = TypeVar("T")
PARTITIONS = 4


def wait_for(condition: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


Broker = devstack.KafkaBroker


def start_broker(log_dir: Path, ports: devstack.KafkaPorts | None = None) -> Broker:
    """An Apache Kafka broker of its own (log directory under ``log_dir``), ready to use."""
    broker = Broker(log_dir / f"kafka-{uuid.uuid4().hex[:8]}", ports or devstack.KafkaPorts.free())
    return broker.start().wait_ready()


class TopicFactory:
    """New topics with unique names on one broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def __call__(self, prefix: str = "test", partitions: int = PARTITIONS) -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        devstack.create_topics(self.bootstrap, [name], partitions)
        return name


class ConsumerFactory:
    """Consumers with random group ids that read from the beginning; closed by ``close_all``."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._consumers: list[Consumer] = []

    def __call__(self, *topics: str, **overrides: Any) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",  # a fresh topic of this test: all of it
                "enable.auto.commit": False,
                "log_level": 0,
            }
            | overrides
        )
        consumer.subscribe(list(topics))
        self._consumers.append(consumer)
        return consumer

    def close_all(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers.clear()


def consume_until(
    consumer: Consumer, done: Callable[[list[Message]], bool], timeout_s: float = 60.0
) -> list[Message]:
    """Messages polled until ``done(messages)`` holds; fails at the deadline."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while not done(messages):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s with {len(messages)} messages")
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        messages.append(message)
    return messages


def produce_fence(bootstrap: str, topic: str, key: bytes) -> bytes:
    """A marker with ``key`` (so in that key's partition, after everything produced before it)."""
    marker = f"fence-{uuid.uuid4().hex}".encode()
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "log_level": 0})
    producer.produce(topic, key=key, value=marker)
    assert producer.flush(30) == 0
    return marker


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partition of ``key`` (murmur2, as librdkafka's murmur2_random)."""
    return key_partition(key, partitions)


# --- decoders that publish -------------------------------------------------------------------


def decoder_env(bootstrap: str, topic: str, outbox_dir: Path, **settings: str) -> dict[str, str]:
    """Environment of a Korean Vosk decoder publishing to ``topic`` with its own SQLite outbox.

    Kafka settings use the standard unprefixed names; Redis is switched off explicitly so a
    ``REDIS_URL`` of the surrounding environment does not change the outbox backend.
    """
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "REDIS_URL": "",
        "DECODER_REDIS_URL": "",
        "DECODER_ENGINE": "vosk",
        "DECODER_MODEL": "ko",
        "DECODER_POOL_WARM": "1",
        "DECODER_SESSION_RATE_PER_MIN": "0",
        "DECODER_OUTBOX_DIR": str(outbox_dir),
    }
    return env | {f"DECODER_{k.upper()}": v for k, v in settings.items()}


def launch_decoder(log_dir: Path, env: Mapping[str, str], wait_ready: bool = True) -> DecoderServer:
    """A decoder with ``env`` added to this process's; without ``wait_ready`` it may never be ready."""
    server = DecoderServer(free_port(), dict(env), log_dir / f"decoder-{uuid.uuid4().hex[:8]}.log")
    return server.start() if wait_ready else server.launch()


def readyz(server: DecoderServer) -> tuple[int, dict[str, Any]]:
    return server.readyz()


def metric(server: DecoderServer, name: str) -> float | None:
    return server.metric(name)


class Call(HttpSession):
    """One call over the native HTTP API (``devtools.clients.HttpSession``) with the server's
    default options unless ``open`` is given some; ``finals`` as the HTTP replies gave them."""

    def __init__(self, base: str) -> None:
        super().__init__(base, options={})

    def open(self, **options: Any) -> Self:
        self.options = dict(options)
        return super().open()

    def send_audio(self, pcm: bytes, chunk_bytes: int) -> None:
        """Send ``pcm`` in chunks of ``chunk_bytes``, numbered."""
        for start in range(0, len(pcm), chunk_bytes):
            self.send(pcm[start : start + chunk_bytes])


def stream_call(base: str, pcm: bytes, chunk_bytes: int, **options: Any) -> Call:
    call = Call(base).open(**options)
    call.send_audio(pcm, chunk_bytes)
    call.end()
    return call


def event_value(message: Message) -> dict[str, Any]:
    """A decoder event read back, checked against the schema it names: the decoder writes its events
    without checking each one (``to_json(check=False)``), so these tests are where they are checked."""
    value: dict[str, Any] = json.loads(message.value() or b"")
    validate(value, value["schema"])
    return value


def session_messages(messages: list[Message], session_id: str) -> list[Message]:
    """The session's finals (its call.ended event, which follows them, left out)."""
    return [m for m in messages if m.key() == session_id.encode() and not is_call_ended(m.value())]


def call_ended_messages(messages: list[Message], session_id: str) -> list[Message]:
    return [m for m in messages if m.key() == session_id.encode() and is_call_ended(m.value())]


def dedup_by_event_id(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first of each ``event_id``, as a consumer does."""
    seen: set[str] = set()
    unique = []
    for value in values:
        if value["event_id"] not in seen:
            seen.add(value["event_id"])
            unique.append(value)
    return unique


def iter_lines(stream: Any) -> Iterator[str]:
    for line in iter(stream.readline, ""):
        yield line.rstrip("\n")
