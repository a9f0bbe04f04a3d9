"""Transcript events to Kafka: journaled first, produced by a background relay, never lost.

Flow of a final
    ``TranscriptSink`` (the session store's ``on_finals``, called under the session lock) turns
    finals into ``TranscriptEvent``\\s and appends them to the durable outbox (outbox.py). That
    is all the request thread does: it never waits for Kafka. The relay thread reads the
    outbox in order and hands messages to confluent-kafka; an entry leaves the outbox only when
    its delivery report is successful. A poll thread serves delivery reports and errors; a
    health thread probes the brokers (``/readyz`` ``checks.kafka``).

Guarantees
    * An accepted final is journaled before the HTTP reply (or WebSocket message) that carries
      it; if the journal cannot be written the request fails with 503 ``outbox_unavailable``.
    * The producer is idempotent (``acks=all``, ``enable.idempotence``) and retries without a
      time limit (``message.timeout.ms=0``), so a broker outage delays finals but keeps their
      order per session (key). Events left by a previous process are produced first.
    * A call's finals all go to one partition, even when partitions are added to the topic
      mid-call: each session is pinned, when it opens, to its key's murmur2 partition (the Java
      client's) at the partition count the producer's metadata shows then (refreshed with every
      health probe, never waited for on the request path). The pin travels with the session to
      an instance that takes it over (registry.py) and with each journaled event (outbox.py), so
      events produced again after a restart go to the same partition. Partition counts only
      grow, so a pin stays valid; while the count is not known yet (no broker answered since
      start-up) a session's finals are left to the key partitioner, as are journal entries
      written before pinning existed.
    * After a failed delivery (a non-retriable broker error, a fatal producer error) nothing
      new is produced until every outstanding report is in; then, after a back-off, the relay
      starts again from the oldest journaled entry. Delivery is therefore at least once:
      duplicates carry the same ``event_id`` and consumers drop them.
    * Bounded: at ``outbox_max_events`` journaled events ``/readyz`` answers 503
      (``checks.outbox: "full"``, metric ``decoder_outbox_full``) and new sessions are refused
      with 503 ``outbox_full``; open sessions go on, their finals still journaled, up to
      ``outbox_hard_max_events``, beyond which their audio is refused with 503 (before it is
      decoded, so no final is produced that could not be journaled). Ending a session is never
      refused: its last final is journaled even above the hard cap.

Broker settings come only from the server's configuration (``KAFKA_*``); without
``KAFKA_BOOTSTRAP_SERVERS`` publishing is disabled and the decoder works as before.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import TopicMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge

from contract.events import CallEndedEvent, PartialTranscriptEvent, TranscriptEvent, rfc3339_utc
from contract.kafka import PARTIALS_TOPIC, TRANSCRIPTS_TOPIC, KafkaClientSettings
from decoder_api.config import ConfigError, Settings
from decoder_api.delivery.events import EventSource, call_ended_event, events_from_finals
from decoder_api.delivery.outbox import Outbox, OutboxEntry, OutboxRecord, open_outbox
from decoder_api.delivery.partitioner import key_partition
from decoder_api.engines.base import Engine, Final, Recognizer, RecognizerOptions
from decoder_api.errors import DecoderError
from decoder_api.sessions.session import Session

logger = logging.getLogger(__name__)


BATCH = 500
MAX_IN_FLIGHT = 10_000
RELAY_INTERVAL_S = 0.5
POLL_INTERVAL_S = 0.1
PROBE_INTERVAL_S = 3.0
PROBE_TIMEOUT_S = 5.0
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
CLOSE_TIMEOUT_S = 5.0
# Per-message errors that no retry can fix: the entry is parked instead of blocking the relay.
UNDELIVERABLE = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)
UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL})
# The broker no longer accepts this producer's id/epoch (e.g. it lost its producer state): no
# retry with the same producer can succeed, a new one (a new producer id) is needed.
PRODUCER_REJECTED = frozenset({KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
KEY_PARTITIONER = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the configured partitioner chooses


class LibrdkafkaLog:
    """librdkafka's own log lines, at DEBUG: it repeats them on every reconnect attempt, while the
    publisher logs each change of the brokers' state once (``kafka_unreachable reason=...``)."""

    logger = logging.getLogger("decoder_api.librdkafka")

    def log(self, level: int, message: str, *args: Any) -> None:
        self.logger.debug(message, *args)


class KafkaClientError(DecoderError):
    """A Kafka client failure; ``kafka_code`` is the ``KafkaError`` name (e.g. ``_INVALID_ARG``)."""

    code = "kafka_error"

    def __init__(self, message: str, error: KafkaError | None = None) -> None:
        super().__init__(message, **({"kafka_code": error.name()} if error is not None else {}))
        self.error = error

    @classmethod
    def wrap(cls, exc: KafkaException, context: str) -> KafkaClientError:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        return cls(f"{context}: {error.str() if error is not None else exc}", error)


class OutboxFull(DecoderError):
    code = "outbox_full"


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Where and how to produce: the brokers (the contract's client settings) and the decoder's
    topics and tuning; built from settings at the entry point, never from the environment."""

    client: KafkaClientSettings
    topic: str = TRANSCRIPTS_TOPIC
    partials: bool = False
    partial_topic: str = PARTIALS_TOPIC
    compression: str = "lz4"
    client_id: str = "decoder_api"

    @property
    def bootstrap_servers(self) -> str:
        return self.client.bootstrap_servers

    def client_config(self) -> dict[str, Any]:
        """Connection and security properties, common to producers, consumers and admin clients."""
        return self.client.client_config(self.client_id)

    def producer_config(self) -> dict[str, Any]:
        """The finals producer: idempotent, every replica, unbounded retries, compressed."""
        return self.client_config() | {
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.compression,
            "message.timeout.ms": 0,
            "linger.ms": 20,
            "partitioner": "murmur2_random",  # the Java client's partitioner: same key, same partition
            "reconnect.backoff.max.ms": 5000,
        }

    def partials_config(self) -> dict[str, Any]:
        """Partials are best effort: dropped after a few seconds rather than queued in memory."""
        return self.client_config() | {
            "acks": "1",
            "compression.type": self.compression,
            "message.timeout.ms": 5000,
            "linger.ms": 50,
            "queue.buffering.max.messages": 10_000,
            "partitioner": "murmur2_random",
        }


def kafka_config(settings: Settings) -> KafkaConfig | None:
    """The Kafka settings, or None when no bootstrap servers are configured (publishing disabled)."""
    if settings.kafka is None:
        return None
    return KafkaConfig(
        client=settings.kafka,
        topic=settings.kafka_topic,
        partials=settings.kafka_partials,
        partial_topic=settings.kafka_partial_topic,
        compression=settings.kafka_compression,
        client_id=f"decoder_api-{settings.instance_id}",
    )


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """``max_events``: not ready and no new sessions; ``hard_max_events``: audio refused too."""

    max_events: int = 10_000
    hard_max_events: int = 20_000

    def __post_init__(self) -> None:
        if not 0 < self.max_events <= self.hard_max_events:
            raise ConfigError("need 0 < DECODER_OUTBOX_MAX_EVENTS <= DECODER_OUTBOX_HARD_MAX_EVENTS")


@dataclass(frozen=True, slots=True)
class KafkaHealth:
    """``state`` is connected or unreachable, since ``since`` (monotonic seconds)."""

    state: str
    since: float
    error: str | None = None


class PublisherMetrics:
    """Delivery metrics, registered on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.produced = Counter("decoder_kafka_produced", "Events acknowledged by Kafka", registry=r)
        self.failed = Counter(
            "decoder_kafka_failed", "Failed deliveries (the events are retried)", registry=r
        )
        self.queued = Gauge("decoder_kafka_queued", "Events journaled and not yet acknowledged", registry=r)
        self.parked = Gauge("decoder_outbox_parked", "Journaled events Kafka refused for good", registry=r)
        self.outbox_full = Gauge("decoder_outbox_full", "1 while the outbox is at its limit", registry=r)
        self.connected = Gauge("decoder_kafka_connected", "1 while the brokers answer", registry=r)
        self.partitions = Gauge(
            "decoder_kafka_partitions",
            "Partitions of the finals topic new calls are pinned by (0: unknown)",
            registry=r,
        )
        self.partials = Counter(
            "decoder_kafka_partials", "Partial events by outcome", ["outcome"], registry=r
        )  # produced, dropped


class TranscriptPublisher:
    """Thin wrapper over a confluent-kafka ``Producer`` that relays a durable outbox."""

    def __init__(
        self,
        config: KafkaConfig,
        outbox: Outbox,
        metrics: PublisherMetrics,
        limits: OutboxLimits | None = None,
        unready_after_s: float = 30.0,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._outbox = outbox
        self._metrics = metrics
        self._limits = limits or OutboxLimits()
        self._unready_after_s = unready_after_s
        self._factory = producer_factory
        self._clock = clock
        self._lock = threading.Lock()  # relay state, shared with the delivery callbacks
        self._journal = threading.Lock()  # outbox writes and the pending count
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_flight: set[str] = set()
        self._delivered: list[str] = []
        self._undeliverable: list[str] = []
        self._cursor: str | None = None
        self._retry_at: float | None = None
        self._backoff_s = MIN_BACKOFF_S
        self._fatal: KafkaError | None = None
        self._last_error: str | None = None
        self._refusal: str | None = None  # the broker refused our TLS or SASL (until it answers)
        self._health = KafkaHealth("unreachable", clock(), "not connected yet")
        self._announced: str | None = None  # the state last logged
        self._partitions: int | None = None  # of config.topic, from the last metadata that had it
        self._pending = outbox.count()
        self._producer = self._create(config.producer_config(), "the Kafka producer")
        self._partials = (
            self._create(config.partials_config(), "the partials producer") if config.partials else None
        )
        self._metrics.parked.set(outbox.parked_count())
        self._update_gauges()

    # --- what the service calls ----------------------------------------------------------

    def start(self) -> None:
        for name, target in (
            ("kafka-poll", self._poll_loop),
            ("outbox-relay", self._relay_loop),
            ("kafka-health", self._health_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "publisher_started bootstrap=%s topic=%s outbox=%s pending=%d",
            self.config.bootstrap_servers,
            self.config.topic,
            self._outbox.location,
            self._pending,
        )

    def publish(
        self, events: Sequence[TranscriptEvent | CallEndedEvent], partition: int | None = None
    ) -> None:
        """Journal ``events`` (durably, in order) for the relay; never waits for Kafka.

        ``partition``: the one their call is pinned to (``partition_for``); None leaves them to
        the key partitioner.
        """
        if not events:
            return
        # not checked against the schema per event: the Kafka tests check every event read back
        records = [
            OutboxRecord(self.config.topic, e.key, e.to_json(check=False), e.headers, partition)
            for e in events
        ]
        with self._journal:
            self._outbox.append(records)
            self._pending += len(records)
        self._update_gauges()
        self._wake.set()

    def publish_partial(self, event: PartialTranscriptEvent) -> None:
        """Best effort, only when partials are enabled: produced directly, never journaled."""
        if self._partials is None:
            return
        try:
            self._partials.produce(
                self.config.partial_topic,
                value=event.to_json(check=False),
                key=event.key,
                headers=list(event.headers),
                on_delivery=self._on_partial_delivery,
            )
        except (BufferError, KafkaException):
            self._metrics.partials.labels("dropped").inc()

    def partition_for(self, key: bytes) -> int | None:
        """The partition to pin a new call with ``key`` to: the key's murmur2 partition at the
        finals topic's partition count known now; None while that count is unknown. Never blocks."""
        partitions = self._partitions
        return None if partitions is None else key_partition(key, partitions)

    def admit_session(self) -> None:
        """Refuse a new session (503) while the outbox is at ``max_events``."""
        if self._pending >= self._limits.max_events:
            raise OutboxFull(
                "finals are waiting for Kafka; this instance takes no new sessions", retry_after=10
            )

    def admit_audio(self) -> None:
        """Refuse audio (503) once the outbox reaches ``hard_max_events``."""
        if self._pending >= self._limits.hard_max_events:
            raise OutboxFull("finals are waiting for Kafka; send this audio again later", retry_after=10)

    def guard(
        self, acquire: Callable[[RecognizerOptions], Recognizer]
    ) -> Callable[[RecognizerOptions], Recognizer]:
        """Wrap a recognizer factory so sessions and audio are refused when the outbox is full."""

        def acquire_guarded(options: RecognizerOptions) -> Recognizer:
            self.admit_session()
            return GuardedRecognizer(acquire(options), self.admit_audio)

        return acquire_guarded

    def health(self) -> KafkaHealth:
        with self._lock:
            return self._health

    @property
    def pending(self) -> int:
        return self._pending

    def checks(self) -> tuple[dict[str, Any], bool]:
        """``/readyz`` checks and whether they allow readiness.

        Not ready when the outbox is full, or when the brokers have been unreachable for more
        than ``unready_after_s`` (a short outage is absorbed by the outbox).
        """
        health = self.health()
        full = self._pending >= self._limits.max_events
        checks: dict[str, Any] = {
            "kafka": health.state,
            "outbox": "full" if full else "ok",
            "outbox_pending": self._pending,
        }
        if health.error:
            checks["kafka_error"] = health.error
        kafka_ok = health.state == "connected" or self._clock() - health.since < self._unready_after_s
        return checks, kafka_ok and not full

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop relaying, wait up to ``timeout_s`` for outstanding deliveries; the rest stays journaled."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=1.0)
        if self.health().state != "connected":
            timeout_s = min(timeout_s, 0.5)  # no broker to wait for: the outbox keeps the rest
        remaining = self._producer.flush(timeout_s)
        if remaining:
            self._producer.purge()
            self._producer.poll(0)
        if self._partials is not None:
            self._partials.flush(1.0)
        self._settle()
        logger.info("publisher_closed pending=%d", self._pending)
        self._outbox.close()

    # --- relay ---------------------------------------------------------------------------

    def _relay_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RELAY_INTERVAL_S)
            self._wake.clear()
            try:
                self._relay_once()
            except Exception:
                logger.exception("outbox_relay_failed")
                self._stop.wait(MAX_BACKOFF_S / 10)

    def _relay_once(self) -> None:
        self._settle()
        if self._fatal is not None:
            self._replace_producer()
        if not self._may_produce():
            return
        with self._lock:
            room = MAX_IN_FLIGHT - len(self._in_flight)
        entries = self._outbox.read(self._cursor, min(room, BATCH)) if room > 0 else []
        for entry in entries:
            if not self._produce(entry):
                return
            self._cursor = entry.id
        if len(entries) == BATCH:
            self._wake.set()

    def _may_produce(self) -> bool:
        """After a failure: produce again only once every report is in and the back-off is over."""
        with self._lock:
            if self._retry_at is None:
                return True
            if self._in_flight or self._delivered or self._undeliverable or self._clock() < self._retry_at:
                return False
            self._retry_at = None
        self._cursor = None  # everything still journaled is undelivered: start from the oldest
        return True

    def _produce(self, entry: OutboxEntry) -> bool:
        record = entry.record
        with self._lock:
            self._in_flight.add(entry.id)
        try:
            self._producer.produce(
                record.topic,
                value=record.value,
                key=record.key,
                partition=KEY_PARTITIONER if record.partition is None else record.partition,
                headers=list(record.headers),
                on_delivery=functools.partial(self._on_delivery, entry.id),
            )
            return True
        except BufferError:  # librdkafka's queue is full; deliveries will make room
            with self._lock:
                self._in_flight.discard(entry.id)
            return False
        except KafkaException as exc:
            error = exc.args[0]
            with self._lock:
                self._in_flight.discard(entry.id)
            if error.code() in UNDELIVERABLE:
                self._reject(entry.id, error)
                return True
            self._failed(error)
            return False

    def _on_delivery(self, entry_id: str, error: KafkaError | None, message: Message) -> None:
        if error is None:
            with self._lock:
                self._in_flight.discard(entry_id)
                self._delivered.append(entry_id)
                self._backoff_s = MIN_BACKOFF_S
            self._metrics.produced.inc()
            self._set_health("connected", None)
        else:
            with self._lock:
                self._in_flight.discard(entry_id)
            if error.code() in UNDELIVERABLE:
                self._reject(entry_id, error)
            else:
                if error.code() in PRODUCER_REJECTED:
                    self._fatal = error  # the relay replaces the producer
                self._failed(error)
        self._wake.set()

    def _reject(self, entry_id: str, error: KafkaError) -> None:
        logger.error(
            "kafka_event_undeliverable entry=%s code=%s reason=%s", entry_id, error.name(), error.str()
        )
        with self._lock:
            self._undeliverable.append(entry_id)
        self._wake.set()

    def _failed(self, error: KafkaError) -> None:
        self._metrics.failed.inc()
        with self._lock:
            first = self._retry_at is None
            self._retry_at = self._clock() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
        if first and not self._stop.is_set():
            logger.warning("kafka_delivery_failed code=%s reason=%s; will retry", error.name(), error.str())

    def _settle(self) -> None:
        """Remove delivered entries from the outbox; park undeliverable ones."""
        with self._lock:
            delivered, self._delivered = self._delivered, []
            rejected, self._undeliverable = self._undeliverable, []
        if not delivered and not rejected:
            return
        try:
            with self._journal:
                if delivered:
                    self._outbox.remove(delivered)
                if rejected:
                    self._outbox.park(rejected)
                self._pending = self._outbox.count()
        except Exception:
            with self._lock:
                self._delivered[:0] = delivered
                self._undeliverable[:0] = rejected
            raise
        if rejected:
            self._metrics.parked.set(self._outbox.parked_count())
        self._update_gauges()

    def _replace_producer(self) -> None:
        """A fatal error (e.g. the idempotence state was lost) makes a producer unusable: start anew."""
        old, error = self._producer, self._fatal
        logger.error("kafka_producer_fatal reason=%s; creating a new producer", error.str() if error else "")
        old.purge()
        old.flush(1.0)
        with self._lock:
            self._in_flight.clear()
            self._retry_at = self._clock() + self._backoff_s
        self._producer = self._create(self.config.producer_config(), "the Kafka producer")
        self._fatal = None

    # --- poll and health -----------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(POLL_INTERVAL_S)
            if self._partials is not None:
                self._partials.poll(0)

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            self._probe()
            self._stop.wait(PROBE_INTERVAL_S)

    def _probe(self) -> None:
        try:
            metadata = self._producer.list_topics(timeout=PROBE_TIMEOUT_S)
        except KafkaException as exc:
            self._set_health("unreachable", self._last_error or exc.args[0].str())
            return
        self._last_error = self._refusal = None
        topic = metadata.topics.get(self.config.topic)
        self._learn_partitions(topic)
        missing = topic is None
        self._set_health("connected", f"topic {self.config.topic} does not exist yet" if missing else None)

    def _learn_partitions(self, topic: TopicMetadata | None) -> None:
        """Keep the finals topic's partition count for new pins: unknown while the topic is not
        there; an error in its metadata (e.g. a leader election) keeps the last count."""
        if topic is not None and topic.error is not None:
            return
        known = len(topic.partitions) or None if topic is not None else None
        if known != self._partitions:
            logger.info("kafka_partitions topic=%s partitions=%s", self.config.topic, known)
        self._partitions = known
        self._metrics.partitions.set(known or 0)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
            self._wake.set()
            return
        if error.code() not in UNREACHABLE:
            logger.debug("kafka_error code=%s reason=%s", error.name(), error.str())
            return
        # A refused login or certificate says why the brokers are down: the "all brokers are
        # down" that follows each refused attempt does not replace it as the reason.
        refused = error.code() != KafkaError._ALL_BROKERS_DOWN
        first_refusal = refused and self._refusal is None
        if refused:
            self._refusal = error.str()
        self._last_error = self._refusal or error.str()
        self._set_health("unreachable", self._last_error, announce=first_refusal)

    def _set_health(self, state: str, error: str | None, announce: bool = False) -> None:
        """Record the brokers' state; log it when it changed (or, ``announce``, anyway)."""
        with self._lock:
            changed = state != self._health.state
            since = self._clock() if changed else self._health.since
            self._health = KafkaHealth(state, since, error)
            announce, self._announced = announce or state != self._announced, state
        if announce:
            log = logger.info if state == "connected" else logger.warning
            log("kafka_%s bootstrap=%s reason=%s", state, self.config.bootstrap_servers, error)
            self._metrics.connected.set(1 if state == "connected" else 0)

    def _on_partial_delivery(self, error: KafkaError | None, message: Message) -> None:
        self._metrics.partials.labels("dropped" if error is not None else "produced").inc()

    def _update_gauges(self) -> None:
        self._metrics.queued.set(self._pending)
        self._metrics.outbox_full.set(1 if self._pending >= self._limits.max_events else 0)

    def _create(self, properties: dict[str, Any], what: str) -> Producer:
        properties = properties | {"error_cb": self._on_error, "logger": LibrdkafkaLog()}
        try:
            return self._factory(properties)
        except KafkaException as exc:
            raise KafkaClientError.wrap(exc, f"cannot create {what}") from exc


class GuardedRecognizer:
    """A recognizer that asks ``admit`` before decoding new audio (flushing and replaying are never
    refused)."""

    def __init__(self, inner: Recognizer, admit: Callable[[], None]) -> None:
        self._inner = inner
        self._admit = admit

    @property
    def sample_rate_hz(self) -> int:
        return self._inner.sample_rate_hz

    def accept(self, pcm: bytes) -> list[Final]:
        self._admit()
        return self._inner.accept(pcm)

    def partial(self) -> str:
        return self._inner.partial()

    def horizon_ms(self) -> int:
        return self._inner.horizon_ms()

    def flush(self) -> list[Final]:
        return self._inner.flush()

    def reset(self) -> None:
        self._inner.reset()

    def restart(self) -> None:
        self._inner.restart()

    def resume(self, position_samples: int, next_utterance: int) -> None:
        self._inner.resume(position_samples, next_utterance)

    def replay(self, pcm: bytes) -> list[Final]:
        """Not admitted again: a session rolled back or taken over must be able to rebuild its
        state while the outbox is full, or it would be left half replayed."""
        return self._inner.replay(pcm)

    def close(self) -> None:
        self._inner.close()


class TranscriptSink:
    """The session store's ``on_finals``: non-empty finals become journaled events; ``ended`` (its
    ``on_ended``) journals a ``call.ended`` event after a session's last final.

    ``partial(session, text)`` is the matching hook for interim hypotheses (best effort, only
    when ``DECODER_KAFKA_PARTIALS`` is on); it needs a caller in ``Session.feed``.
    """

    def __init__(self, publisher: TranscriptPublisher, engine: Callable[[], Engine]) -> None:
        self._publisher = publisher
        self._engine = engine

    def __call__(self, session: Session, finals: Sequence[Final]) -> None:
        events = events_from_finals(
            finals,
            session_id=session.id,
            user_id=session.config.user_id,
            origin=self._origin(),
            metadata=session.config.metadata or None,
        )
        self._publisher.publish(events, session.partition)

    def ended(self, session: Session, reason: str) -> None:
        """The session store's ``on_ended``: the call's ``call.ended`` event, journaled after its
        last final, to the same partition."""
        layout = session.config.layout
        event = call_ended_event(
            session_id=session.id,
            user_id=session.config.user_id,
            reason=reason,
            started_at_s=session.created_at,
            audio_ms=session.audio_ms,
            channels=layout.channels,
            speakers=layout.speakers,
            finals=session.finals,
            origin=self._origin(),
            metadata=session.config.metadata or None,
        )
        self._publisher.publish([event], session.partition)

    def pin(self, session_id: str) -> int | None:
        """The session store's ``pin_partition``: where this call's finals go for the whole call."""
        return self._publisher.partition_for(session_id.encode("utf-8"))  # the events' key

    def partial(self, session: Session, text: str) -> None:
        """Publish the open utterance's hypothesis (caller holds the session lock)."""
        if not text.strip():
            return
        origin = self._origin()
        event = PartialTranscriptEvent(
            session_id=session.id,
            user_id=session.config.user_id,
            utterance=len(session.finals),
            text=text,
            audio_ms=session.audio_ms,
            engine=origin.engine,
            model=origin.model,
            language=origin.language,
            produced_at=rfc3339_utc(),
        )
        self._publisher.publish_partial(event)

    def _origin(self) -> EventSource:
        engine = self._engine()
        return EventSource(engine.name, engine.model.name, engine.model.language)


def build_publisher(settings: Settings, registry: CollectorRegistry) -> TranscriptPublisher | None:
    """The started publisher, or None (logged once) when no Kafka bootstrap servers are configured."""
    config = kafka_config(settings)
    if config is None:
        logger.warning("kafka_publishing_disabled reason=KAFKA_BOOTSTRAP_SERVERS is not set")
        return None
    limits = OutboxLimits(settings.outbox_max_events, settings.outbox_hard_max_events)
    outbox = open_outbox(
        settings.redis_url, settings.outbox_dir, settings.outbox_name, settings.redis_ssl_ca_certs
    )
    try:
        publisher = TranscriptPublisher(
            config, outbox, PublisherMetrics(registry), limits, settings.kafka_unready_after_s
        )
    except BaseException:
        outbox.close()
        raise
    publisher.start()
    return publisher
