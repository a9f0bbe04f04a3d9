"""The poll → enrich → summarise → produce → commit loop.

Delivery is at least once, and each call is summarised once:

* auto-commit is off; a batch (its first message, then what else has arrived, up to
  ``batch_size`` messages, waiting ``batch_ms`` for more) is enriched, its enriched events, dead
  letters and call summaries are produced, the producer is flushed, and only when every one of
  them is acknowledged are the batch's offsets committed (synchronously);
* a failed delivery forgets what was read since the last commit and reads every assigned partition
  again from where this consumer last committed it, after a back-off: a broker outage delays
  events but loses none;
* a process that dies between produce and commit (SIGKILL, OOM, node loss) leaves the batch
  uncommitted: the partition's next owner handles it again. Such duplicates carry the input's
  ``event_id`` (a summary's is ``<session_id>:summary``, its key the session id); downstream
  consumers drop an ``event_id`` they have already seen;
* poison messages (not JSON, not transcript.v1 or call.ended.v1, failing enrichment) go to the
  dead-letter topic once and are committed with their batch: never retried forever.

Calls: a final is held in memory (``OpenCalls``) until the call's ``call.ended.v1`` event, which
follows its last final on the same partition; then one ``call.summary.v1`` event is produced
(``summary.py``). The offset committed for a partition never passes the first message of a call
still open on it, so a restarted consumer (or the partition's next owner) reads the call's finals
again. Each commit also stores, as the offset's metadata, ``done=<offset>``: how far the partition
was really handled. Messages below that mark are read again only to rebuild the open calls: their
enriched events, dead letters and summaries were delivered before, so they are not produced again.
A consumer killed mid-call, a restart or partitions moving to another member therefore give the
call one summary, with every final; only a kill between delivering a summary and committing it
sends it twice, with the same ``event_id``.

Order: one input partition is handled by one consumer at a time, in order, and the idempotent
producer keeps the order of what it sends per output partition; every topic is keyed by
``session_id``, so one call's enriched events come out in the order of its transcripts, and
before its summary. Scaling: start more consumers with the same ``NLP_GROUP_ID`` (up to the
input partition count).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from contract.events import CallEndedEvent, CallSummaryEvent, InvalidEvent, is_call_ended
from nlp_consumer.calls import OpenCalls, Partition
from nlp_consumer.config import ConsumerSettings
from nlp_consumer.enrich import Enricher
from nlp_consumer.errors import KafkaClientError, NlpError
from nlp_consumer.events import DeadLetter, InvalidTranscript, encode, enriched_headers, parse_transcript
from nlp_consumer.metrics import ConsumerMetrics
from nlp_consumer.summary import CallSummarizer, HeardTurn

logger = logging.getLogger(__name__)
librdkafka_logger = logging.getLogger("nlp_consumer.librdkafka")

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
POLL_S = 0.5  # the longest wait for a first message (then stop and idle calls are looked at)
CHECK_STEP_S = 0.25  # the start-up metadata request is retried this often, looking for a refusal
COMMITTED_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
RECENT_SUMMARIES = 10_000  # session ids remembered to skip a redelivered call.ended
EXPIRY_STEP_S = 1.0  # how often idle calls are looked for
DONE_PREFIX = "done="  # offset metadata: how far the partition was handled
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

    def next_offsets(self) -> dict[Partition, int]:
        """Per partition, the offset after the batch's last message."""
        last: dict[Partition, int] = {}
        for m in self.messages:
            key = (m.topic() or "", m.partition() or 0)
            last[key] = max(last.get(key, -1), m.offset() or 0)
        return {key: offset + 1 for key, offset in sorted(last.items())}


@dataclass
class _Output:
    """What one batch produces, and whether each message is read again only to rebuild calls."""

    enriched: list[dict[str, Any]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    summaries: list[CallSummaryEvent] = field(default_factory=list)
    abandoned: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    message: Message
    replay: bool  # below the partition's done mark: already produced, read to rebuild open calls
    transcript: dict[str, Any] | None = None
    ended: CallEndedEvent | None = None


class EnrichmentConsumer:
    """One member of the consumer group; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        settings: ConsumerSettings,
        enricher: Enricher,
        metrics: ConsumerMetrics,
        summarizer: CallSummarizer,
    ) -> None:
        self.settings = settings
        self.enricher = enricher
        self.metrics = metrics
        self.summarizer = summarizer
        self.calls = OpenCalls(settings.max_open_calls, settings.call_idle_s)
        self._next_expiry_s = 0.0
        self._done: dict[Partition, int] = {}  # below it: handled and committed before
        self._resume: dict[Partition, int] = {}  # where this consumer last committed each partition
        self._summarised: OrderedDict[str, None] = OrderedDict()  # recent calls, oldest first
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
            "consuming topic=%s group=%s output=%s dlq=%s summaries=%s",
            settings.input_topic,
            settings.group_id,
            settings.output_topic,
            settings.dlq_topic,
            settings.summary_topic,
        )
        try:
            while not stop.is_set() and self._fatal is None:
                messages = self._next_batch()
                batch = Batch([m for m in messages if self._usable(m)])
                if batch.messages:
                    self.handle(batch, stop)
                if time.monotonic() >= self._next_expiry_s:
                    self._next_expiry_s = time.monotonic() + EXPIRY_STEP_S
                    self.release_idle_calls()
        finally:
            self.close()
        if self._fatal is not None:
            raise KafkaClientError(f"fatal Kafka error: {self._fatal.str()}", self._fatal.name())

    def _next_batch(self) -> list[Message]:
        """Wait for one message, then take whatever else is already fetched (or arrives within
        ``batch_ms``), up to ``batch_size``: no event waits for a batch to fill."""
        first = self._consumer.consume(1, POLL_S)
        if not first or self.settings.batch_size == 1:
            return list(first)
        return [*first, *self._consumer.consume(self.settings.batch_size - 1, self.settings.batch_ms / 1000)]

    def check_broker(self, timeout_s: float = 15.0) -> None:
        """Fail with one line when the brokers cannot be reached, at once when they refused the
        login or the TLS handshake (naming that); warn when a topic it reads or writes is missing.

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
        settings = self.settings
        if settings.input_topic not in metadata.topics:
            logger.warning("input_topic_missing topic=%s (waiting for it)", settings.input_topic)
        for topic in (settings.output_topic, settings.dlq_topic, settings.summary_topic):
            if topic not in metadata.topics:  # its events wait, and hold their batch back, until it exists
                logger.warning("output_topic_missing topic=%s (deliveries to it wait for it)", topic)

    def handle(self, batch: Batch, stop: threading.Event) -> None:
        """Enrich and summarise one batch, deliver what it produces and commit it; on a failed
        delivery, read again from the last commit after a back-off."""
        started = time.monotonic()
        try:
            output = self._prepare(batch)
            self._deliver(output)
        except DeliveryFailed as exc:
            self.metrics.errors.labels("delivery").inc()
            logger.warning("delivery_failed error=%s retry_in_s=%.1f", exc.message, self._backoff_s)
            self._restart_from_committed()
            stop.wait(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
            return
        self._backoff_s = MIN_BACKOFF_S
        self._commit(self._offsets(batch))
        for summary in output.summaries:  # delivered: a redelivered call.ended is skipped
            self._summarised[summary.session_id] = None
        while len(self._summarised) > RECENT_SUMMARIES:
            self._summarised.popitem(last=False)
        self.metrics.handled(len(output.enriched), len(output.dead), len(output.summaries))
        self.metrics.errors.labels("call_abandoned").inc(output.abandoned)
        self.metrics.open_calls.set(len(self.calls))
        self.metrics.batch_size.observe(len(batch.messages))
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        for summary in output.summaries:
            logger.info("call_summarised session_id=%s finals=%d", summary.session_id, summary.finals)
        logger.debug(
            "batch events=%d enriched=%d dead_lettered=%d summaries=%d",
            len(batch.messages),
            len(output.enriched),
            len(output.dead),
            len(output.summaries),
        )

    def release_idle_calls(self) -> None:
        """Abandon the calls idle for ``call_idle_s`` and commit their partitions past them."""
        held = len(self.calls)
        partitions = self.calls.expire()
        offsets = [
            TopicPartition(
                t,
                p,
                self.calls.resume_offset((t, p), self._done[(t, p)]),
                f"{DONE_PREFIX}{self._done[(t, p)]}",
            )
            for t, p in sorted(partitions)
            if (t, p) in self._done
        ]
        if not offsets:
            return
        self.metrics.errors.labels("call_abandoned").inc(held - len(self.calls))
        self.metrics.open_calls.set(len(self.calls))
        self._commit(offsets)

    def close(self) -> None:
        remaining = self._producer.flush(CLOSE_TIMEOUT_S)
        if remaining:
            logger.warning("close_undelivered messages=%d", remaining)
        self._consumer.close()
        logger.info("consumer_closed group=%s", self.settings.group_id)

    # --- one batch ----------------------------------------------------------------------------

    def _prepare(self, batch: Batch) -> _Output:
        """Read, enrich and summarise the batch in order (open calls updated as it goes)."""
        output = _Output()
        items: list[_Item] = []
        for message in batch.messages:
            self._resume.setdefault(_partition(message), message.offset() or 0)  # where it started
            replay = (message.offset() or 0) < self._done.get(_partition(message), -1)
            try:
                if is_call_ended(message.value(), _header_items(message)):
                    items.append(
                        _Item(message, replay, ended=CallEndedEvent.from_json(message.value() or b""))
                    )
                else:
                    items.append(_Item(message, replay, transcript=parse_transcript(message.value())))
            except (InvalidTranscript, InvalidEvent) as exc:
                if not replay:
                    output.dead.append(_dead_letter(message, exc.message, exc.code))
        good = [(item.message, item.transcript) for item in items if item.transcript is not None]
        enriched = dict(zip((id(m) for m, _ in good), self._enrich(good, output.dead, items), strict=True))
        for item in items:
            session_id = None
            if item.transcript is not None and enriched.get(id(item.message)):
                document = enriched[id(item.message)]
                session_id = str(document["session_id"])
                output.abandoned += self.calls.add(
                    _partition(item.message),
                    item.message.offset() or 0,
                    session_id,
                    str(document["user_id"]),
                    HeardTurn.from_enriched(document),
                )
                if not item.replay:
                    output.enriched.append(document)
            elif item.ended is not None:
                turns = self.calls.pop(item.ended.session_id)
                if not item.replay and self._first_end(item.ended, turns is not None):
                    output.summaries.append(self.summarizer.summarize(turns, item.ended))
        return output

    def _first_end(self, ended: CallEndedEvent, heard: bool) -> bool:
        """Whether to summarise: not a redelivered call.ended (the decoder delivers at least once:
        a second one finds no finals held, or its call among the recently summarised), nor the end
        of a call whose finals were all abandoned."""
        if ended.session_id in self._summarised or (not heard and ended.finals > 0):
            logger.info("call_ended_skipped session_id=%s (a redelivery, or no final held)", ended.session_id)
            return False
        return True

    def _enrich(
        self, good: list[tuple[Message, dict[str, Any]]], dead: list[DeadLetter], items: list[_Item]
    ) -> list[dict[str, Any]]:
        """Enriched documents in input order; an event the model fails on becomes a dead letter
        (its place in the result is taken by nothing: callers match by message)."""
        started = time.monotonic()
        try:
            enriched = self.enricher.enrich([d for _, d in good])
        except Exception:
            logger.exception("enrich_batch_failed events=%d (retrying one by one)", len(good))
            replayed = {id(item.message) for item in items if item.replay}
            enriched = []
            for message, document in good:
                try:
                    enriched += self.enricher.enrich([document])
                except Exception as exc:
                    self.metrics.errors.labels("enrich").inc()
                    logger.exception("enrich_failed event_id=%s", document.get("event_id"))
                    if id(message) not in replayed:
                        dead.append(
                            _dead_letter(message, f"enrichment failed: {type(exc).__name__}: {exc}", "enrich")
                        )
                    enriched.append({})  # keeps the places of the others; skipped below
        self.metrics.enrich_seconds.observe(time.monotonic() - started)
        return enriched

    def _offsets(self, batch: Batch) -> list[TopicPartition]:
        """Per partition of the batch: where to resume (never past an open call's first message),
        with the done mark as metadata (the offset after the batch, or the mark already reached when
        the batch was read again below it)."""
        positions = []
        for key, consumed in batch.next_offsets().items():
            done = max(consumed, self._done.get(key, -1))
            resume = self.calls.resume_offset(key, consumed)
            positions.append(TopicPartition(key[0], key[1], resume, f"{DONE_PREFIX}{done}"))
        return positions

    def _deliver(self, output: _Output) -> None:
        """Produce a batch's enriched events, dead letters and summaries and wait until every one
        is acknowledged."""
        deliveries = _Deliveries()
        producer = self._producer
        try:
            for document in output.enriched:
                producer.produce(
                    self.settings.output_topic,
                    key=str(document["session_id"]).encode("utf-8"),
                    value=encode(document),
                    headers=enriched_headers(),
                    on_delivery=deliveries,
                )
                producer.poll(0)
            for letter in output.dead:
                logger.warning(
                    "dead_letter topic=%s partition=%d offset=%d error=%s",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    letter.error,
                )
                producer.produce(
                    self.settings.dlq_topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.dlq_headers(self.settings.group_id),
                    on_delivery=deliveries,
                )
            for summary in output.summaries:
                producer.produce(
                    self.settings.summary_topic,
                    key=summary.key,
                    value=summary.to_json(),
                    headers=list(summary.headers),
                    on_delivery=deliveries,
                )
        except (KafkaException, BufferError, InvalidEvent) as exc:
            producer.flush(self.settings.delivery_timeout_s)
            raise DeliveryFailed(f"produce: {exc}") from None
        remaining = producer.flush(self.settings.delivery_timeout_s + 5)
        if remaining or deliveries.failed:
            what = deliveries.failed[0] if deliveries.failed else f"{remaining} not acknowledged"
            if deliveries.producer_rejected:
                logger.warning("producer_rejected error=%s; creating a new producer", what)
                producer.purge()
                self._producer = _create(Producer, self._producer_config)
            raise DeliveryFailed(what)

    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Commit ``offsets`` (with their done marks); one that fails is handled again by the
        partition's next owner, or by this consumer after its next commit."""
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # e.g. the partitions moved to another member during the batch: it handles them again
            self.metrics.errors.labels("commit").inc()
            logger.warning("commit_failed offsets=%s error=%s", _describe(offsets), _describe_error(exc))
            return
        for position in offsets:
            key = (position.topic, position.partition)
            self._resume[key] = position.offset
            done = _done_mark(position.metadata)
            if done is not None:
                self._done[key] = max(self._done.get(key, -1), done)

    def _restart_from_committed(self) -> None:
        """Forget what was read since the last commit and read every assigned partition again from
        where it was last committed (open calls are rebuilt from there; messages below a done mark
        are not produced again)."""
        self.calls.clear()
        self.metrics.open_calls.set(0)
        try:
            assigned = self._consumer.assignment()
        except KafkaException as exc:
            logger.info("rewind_skipped error=%s", _describe_error(exc))
            return
        for tp in assigned:
            offset = self._resume.get((tp.topic, tp.partition))
            if offset is None:  # nothing read from it yet: it is where it started
                continue
            try:
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:  # no longer assigned: its next owner starts from the commit
                logger.info("rewind_skipped partition=%s error=%s", _describe([tp]), _describe_error(exc))

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
        """Learn each partition's committed offset and done mark: the messages below the mark are
        read again only to rebuild the calls still open there. Without them (the broker did not
        answer in time) the partition is handled from its committed offset as new, so at worst
        some events are delivered again, with their event ids."""
        try:
            committed = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT_S)
        except KafkaException as exc:
            committed = []
            logger.warning("committed_unavailable error=%s", _describe_error(exc))
        for tp in committed:
            key = (tp.topic, tp.partition)
            if tp.offset >= 0:
                self._resume[key] = tp.offset
            done = _done_mark(tp.metadata)
            if done is not None:
                self._done[key] = done
        self.metrics.assigned.inc(len(partitions))
        logger.info("partitions_assigned partitions=%s", _describe(committed or partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.assigned.dec(len(partitions))
        gone = [(p.topic, p.partition) for p in partitions]
        self.calls.drop_partitions(gone)
        for key in gone:
            self._done.pop(key, None)
            self._resume.pop(key, None)
        self.metrics.open_calls.set(len(self.calls))
        for p in partitions:
            self.metrics.forget_partition(p.topic, p.partition)
        logger.info("partitions_revoked partitions=%s", _describe(partitions))


def _partition(message: Message) -> Partition:
    return (message.topic() or "", message.partition() or 0)


def _done_mark(metadata: str | None) -> int | None:
    if metadata and metadata.startswith(DONE_PREFIX) and metadata[len(DONE_PREFIX) :].isdigit():
        return int(metadata[len(DONE_PREFIX) :])
    return None


def _describe_error(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


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
