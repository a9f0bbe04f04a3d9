"""The poll → enrich → produce → commit loop.

Delivery is at least once:

* auto-commit is off; a batch (up to ``batch_size`` messages or ``batch_ms``) is enriched, its
  enriched events and dead letters are produced, the producer is flushed, and only when every
  one of them is acknowledged are the batch's offsets committed (synchronously);
* if a delivery fails the consumer seeks back to the start of the batch and handles it again
  after a back-off, so a broker outage delays events but loses none;
* a process that dies between produce and commit (SIGKILL, OOM, node loss) leaves the batch
  uncommitted: the next owner of the partition enriches it again. Duplicates carry the input's
  ``event_id``; downstream consumers drop an ``event_id`` they have already seen;
* poison messages (not JSON, not transcript.v1, failing enrichment) go to the dead-letter topic
  once and are committed with their batch: never retried forever;
* ``call.ended.v1`` events (the end of a call, on the same topic after its last final) are not
  transcripts: they are skipped and committed with their batch, neither enriched nor dead-lettered.

Order: one input partition is handled by one consumer at a time, in order, and the idempotent
producer keeps the order of what it sends per output partition; both topics are keyed by
``session_id``, so one call's enriched events come out in the order of its transcripts.
Scaling: start more consumers with the same ``NLP_GROUP_ID`` (up to the input partition count).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from contract.events import is_call_ended
from nlp_consumer.config import ConsumerSettings
from nlp_consumer.enrich import Enricher
from nlp_consumer.errors import KafkaClientError, NlpError
from nlp_consumer.events import DeadLetter, InvalidTranscript, encode, enriched_headers, parse_transcript
from nlp_consumer.metrics import ConsumerMetrics

logger = logging.getLogger(__name__)
librdkafka_logger = logging.getLogger("nlp_consumer.librdkafka")

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
CLOSE_TIMEOUT_S = 10.0
CHECK_STEP_S = 0.25  # the start-up metadata request is retried this often, looking for a refusal
FATAL_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.TOPIC_AUTHORIZATION_FAILED})
# The broker no longer accepts the producer's id/epoch (e.g. it lost its producer state): only a
# new producer (a new producer id) can deliver again.
PRODUCER_REJECTED = frozenset({KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


class DeliveryFailed(NlpError):
    code = "delivery_failed"


@dataclass
class _Deliveries:
    """Delivery reports of one batch."""

    failed: list[str] = field(default_factory=list)
    producer_rejected: bool = False

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.append(f"{message.topic()}: {error.str()}")
            self.producer_rejected |= error.code() in PRODUCER_REJECTED


@dataclass(frozen=True, slots=True)
class Batch:
    messages: Sequence[Message]

    def next_offsets(self) -> list[TopicPartition]:
        """Per partition, the offset after the batch's last message (what to commit)."""
        last: dict[tuple[str, int], int] = {}
        for m in self.messages:
            key = (m.topic() or "", m.partition() or 0)
            last[key] = max(last.get(key, -1), m.offset() or 0)
        return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(last.items())]

    def first_offsets(self) -> list[TopicPartition]:
        first: dict[tuple[str, int], int] = {}
        for m in self.messages:
            key = (m.topic() or "", m.partition() or 0)
            first.setdefault(key, m.offset() or 0)
        return [TopicPartition(t, p, o) for (t, p), o in sorted(first.items())]


class EnrichmentConsumer:
    """One member of the consumer group; ``run`` until ``stop`` is set."""

    def __init__(self, settings: ConsumerSettings, enricher: Enricher, metrics: ConsumerMetrics) -> None:
        self.settings = settings
        self.enricher = enricher
        self.metrics = metrics
        self._backoff_s = MIN_BACKOFF_S
        self._fatal: KafkaError | None = None
        client_id = f"nlp-consumer-{settings.group_id}"
        common = settings.kafka.client_config(client_id) | {
            "error_cb": self._on_error,
            "logger": librdkafka_logger,
        }
        self._consumer = _create(
            Consumer,
            common
            | {
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.session_timeout_ms,
                "statistics.interval.ms": 5000,
                "stats_cb": metrics.on_stats,
            },
        )
        self._producer_config = common | {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
            "partitioner": "murmur2_random",  # the Java client's: same key, same partition
        }
        self._producer = _create(Producer, self._producer_config)

    def run(self, stop: threading.Event) -> None:
        """Consume and enrich until ``stop``; the batch in hand is finished and committed first."""
        settings = self.settings
        self._consumer.subscribe([settings.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        logger.info(
            "consuming topic=%s group=%s output=%s dlq=%s",
            settings.input_topic,
            settings.group_id,
            settings.output_topic,
            settings.dlq_topic,
        )
        try:
            while not stop.is_set() and self._fatal is None:
                messages = self._consumer.consume(settings.batch_size, settings.batch_ms / 1000)
                batch = Batch([m for m in messages if self._usable(m)])
                if batch.messages:
                    self.handle(batch, stop)
        finally:
            self.close()
        if self._fatal is not None:
            raise KafkaClientError(f"fatal Kafka error: {self._fatal.str()}", self._fatal.name())

    def check_broker(self, timeout_s: float = 15.0) -> None:
        """Fail with one line when the brokers cannot be reached, at once when they refused the
        login or the TLS handshake (naming that); warn when the input topic is missing.

        The metadata is asked for by a silent client of its own: serving the consumer's error
        callbacks here would log every failed connection attempt.
        """
        errors: list[KafkaError] = []
        probe = _create(
            AdminClient,
            self.settings.kafka.client_config(f"nlp-consumer-{self.settings.group_id}-check")
            | {"error_cb": errors.append, "log_level": 0},
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                metadata = probe.list_topics(timeout=CHECK_STEP_S)
                break
            except KafkaException as exc:
                probe.poll(0)  # serves error_cb
                refusal = next((e for e in errors if e.fatal() or e.code() in FATAL_CODES), None)
                if refusal is not None or time.monotonic() >= deadline:
                    error = refusal or exc.args[0]
                    raise KafkaClientError(
                        f"cannot reach Kafka at {self.settings.kafka.bootstrap_servers}: {error.str()}",
                        error.name(),
                    ) from None
        if self.settings.input_topic not in metadata.topics:
            logger.warning("input_topic_missing topic=%s (waiting for it)", self.settings.input_topic)

    def handle(self, batch: Batch, stop: threading.Event) -> None:
        """Enrich, produce, flush and commit one batch; on a failed delivery rewind to its start."""
        started = time.monotonic()
        try:
            enriched, dead = self._produce(batch)
        except DeliveryFailed as exc:
            self.metrics.errors.labels("delivery").inc()
            logger.warning("delivery_failed error=%s retry_in_s=%.1f", exc.message, self._backoff_s)
            self._rewind(batch)
            stop.wait(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
            return
        self._backoff_s = MIN_BACKOFF_S
        self._commit(batch)
        self.metrics.handled(enriched, dead)
        self.metrics.batch_size.observe(len(batch.messages))
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        logger.debug("batch events=%d enriched=%d dead_lettered=%d", len(batch.messages), enriched, dead)

    def close(self) -> None:
        remaining = self._producer.flush(CLOSE_TIMEOUT_S)
        if remaining:
            logger.warning("close_undelivered messages=%d", remaining)
        self._consumer.close()
        logger.info("consumer_closed group=%s", self.settings.group_id)

    # --- one batch ----------------------------------------------------------------------------

    def _produce(self, batch: Batch) -> tuple[int, int]:
        good: list[tuple[Message, dict[str, Any]]] = []
        dead: list[DeadLetter] = []
        for message in batch.messages:
            if is_call_ended(message.value(), _header_items(message)):
                continue  # the end of a call, not a transcript to enrich
            try:
                good.append((message, parse_transcript(message.value())))
            except InvalidTranscript as exc:
                dead.append(_dead_letter(message, exc.message, exc.code))
        enriched = self._enrich(good, dead)
        deliveries = _Deliveries()
        try:
            for document in enriched:
                self._producer.produce(
                    self.settings.output_topic,
                    key=str(document["session_id"]).encode("utf-8"),
                    value=encode(document),
                    headers=enriched_headers(),
                    on_delivery=deliveries,
                )
                self._producer.poll(0)
            for letter in dead:
                logger.warning(
                    "dead_letter topic=%s partition=%d offset=%d error=%s",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    letter.error,
                )
                self._producer.produce(
                    self.settings.dlq_topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.dlq_headers(self.settings.group_id),
                    on_delivery=deliveries,
                )
        except (KafkaException, BufferError) as exc:
            self._producer.flush(self.settings.delivery_timeout_s)
            raise DeliveryFailed(f"produce: {exc}") from None
        remaining = self._producer.flush(self.settings.delivery_timeout_s + 5)
        if remaining or deliveries.failed:
            what = deliveries.failed[0] if deliveries.failed else f"{remaining} not acknowledged"
            if deliveries.producer_rejected:
                logger.warning("producer_rejected error=%s; creating a new producer", what)
                self._producer.purge()
                self._producer = _create(Producer, self._producer_config)
            raise DeliveryFailed(what)
        return len(enriched), len(dead)

    def _enrich(
        self, good: list[tuple[Message, dict[str, Any]]], dead: list[DeadLetter]
    ) -> list[dict[str, Any]]:
        """Enriched documents in input order; an event the model fails on becomes a dead letter."""
        started = time.monotonic()
        try:
            enriched = self.enricher.enrich([d for _, d in good])
        except Exception:
            logger.exception("enrich_batch_failed events=%d (retrying one by one)", len(good))
            enriched = []
            for message, document in good:
                try:
                    enriched += self.enricher.enrich([document])
                except Exception as exc:
                    self.metrics.errors.labels("enrich").inc()
                    logger.exception("enrich_failed event_id=%s", document.get("event_id"))
                    dead.append(
                        _dead_letter(message, f"enrichment failed: {type(exc).__name__}: {exc}", "enrich")
                    )
        self.metrics.enrich_seconds.observe(time.monotonic() - started)
        return enriched

    def _commit(self, batch: Batch) -> None:
        offsets = batch.next_offsets()
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # e.g. the partitions moved to another member during the batch: it handles them again
            self.metrics.errors.labels("commit").inc()
            logger.warning("commit_failed offsets=%s error=%s", _describe(offsets), exc.args[0])

    def _rewind(self, batch: Batch) -> None:
        for position in batch.first_offsets():
            try:
                self._consumer.seek(position)
            except KafkaException as exc:  # no longer assigned: its next owner starts from the commit
                logger.info("rewind_skipped partition=%s error=%s", _describe([position]), exc.args[0])

    # --- callbacks ----------------------------------------------------------------------------

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            self._on_error(error)
        return False

    def _on_error(self, error: KafkaError) -> None:
        self.metrics.errors.labels("kafka").inc()
        if error.fatal() or error.code() in FATAL_CODES:
            self._fatal = error
            logger.error("kafka_fatal code=%s error=%s", error.name(), error.str())
        else:
            logger.warning("kafka_error code=%s error=%s", error.name(), error.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.assigned.inc(len(partitions))
        logger.info("partitions_assigned partitions=%s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.assigned.dec(len(partitions))
        for p in partitions:
            self.metrics.forget_partition(p.topic, p.partition)
        logger.info("partitions_revoked partitions=%s", _describe(partitions))


def _dead_letter(message: Message, error: str, code: str) -> DeadLetter:
    return DeadLetter(
        key=message.key(),
        value=message.value(),
        headers=[
            (k, v if isinstance(v, bytes) or v is None else v.encode()) for k, v in _header_items(message)
        ],
        error=error,
        code=code,
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
    )


def _header_items(message: Message) -> list[tuple[str, Any]]:
    headers = message.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _describe(partitions: Sequence[TopicPartition]) -> str:
    return ",".join(f"{p.topic}/{p.partition}@{p.offset}" for p in partitions) or "-"


def _create(kind: Any, config: dict[str, Any]) -> Any:
    try:
        return kind(config)
    except KafkaException as exc:
        raise KafkaClientError(
            f"cannot create a Kafka {kind.__name__.lower()}: {exc.args[0].str()}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise KafkaClientError(f"invalid Kafka configuration: {exc}") from None
