"""``EnrichedFeed``: a background Kafka consumer that fills the ``CallBoard`` from the enriched topic
and the call summaries topic (``DASHBOARD_SUMMARY_TOPIC``).

Each dashboard instance has its own consumer group (``dashboard-<host>-<uuid>``), so every
instance sees every call; it commits nothing. On assignment it starts each partition at the
first message of the last ``expire_s`` (``offsets_for_times``), falling back to the beginning
where the broker cannot say; events whose ``produced_at`` is already older than ``expire_s``
are skipped, so a restart shows the live calls only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from contract.events import CallSummaryEvent, InvalidEvent
from nlp_consumer.config import DashboardSettings
from nlp_consumer.dashboard.state import CallBoard
from nlp_consumer.errors import KafkaClientError, NlpError
from nlp_consumer.events import validate_enriched

logger = logging.getLogger(__name__)
librdkafka_logger = logging.getLogger("nlp_consumer.librdkafka")

POLL_BATCH = 500
POLL_TIMEOUT_S = 0.25
OFFSETS_TIMEOUT_S = 10.0


class EnrichedFeed:
    def __init__(self, settings: DashboardSettings, board: CallBoard) -> None:
        self.settings = settings
        self.board = board
        self.stop_event = threading.Event()
        self.invalid = 0
        self._thread = threading.Thread(target=self._run, name="enriched-feed", daemon=True)
        config = settings.kafka.client_config(f"nlp-dashboard-{settings.group_id}") | {
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "error_cb": self._on_error,
            "logger": librdkafka_logger,
        }
        try:
            self._consumer = Consumer(config)
        except KafkaException as exc:
            raise KafkaClientError(f"cannot create a Kafka consumer: {exc.args[0].str()}") from None

    def check_broker(self, timeout_s: float = 15.0) -> None:
        try:
            self._consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaClientError(
                f"cannot reach Kafka at {self.settings.kafka.bootstrap_servers}: {exc.args[0].str()}"
            ) from None

    def start(self) -> EnrichedFeed:
        topics = [self.settings.topic, self.settings.summary_topic]
        self._consumer.subscribe(topics, on_assign=self._on_assign)
        self._thread.start()
        logger.info("dashboard_feed topics=%s group=%s", ",".join(topics), self.settings.group_id)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                for message in self._consumer.consume(POLL_BATCH, POLL_TIMEOUT_S):
                    self._accept(message)
                self.board.expire()
        finally:
            self._consumer.close()

    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._on_error(error)
            return
        summary = message.topic() == self.settings.summary_topic
        try:
            event: Any = json.loads(message.value() or b"")
            if summary:
                CallSummaryEvent.from_dict(event)
            else:
                validate_enriched(event)
        except (ValueError, NlpError, InvalidEvent) as exc:
            self.invalid += 1
            logger.warning("skipped_event offset=%s error=%s", message.offset(), exc)
            return
        produced_s = _epoch_s(event["produced_at"])
        now = time.time()
        if produced_s < now - self.board.expire_s:
            return
        if summary:
            self.board.add_summary(event, seen_s=min(produced_s, now))
        else:
            self.board.add(event, seen_s=min(produced_s, now))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        since_ms = int((time.time() - self.board.expire_s) * 1000)
        wanted = [TopicPartition(p.topic, p.partition, since_ms) for p in partitions]
        try:
            found = consumer.offsets_for_times(wanted, timeout=OFFSETS_TIMEOUT_S)
        except KafkaException as exc:
            logger.info("offsets_for_times_unavailable error=%s (reading from the beginning)", exc.args[0])
            found = []
        starts = {(p.topic, p.partition): p.offset for p in found if p.error is None and p.offset >= 0}
        positions = [
            TopicPartition(p.topic, p.partition, starts.get((p.topic, p.partition), OFFSET_BEGINNING))
            for p in partitions
        ]
        consumer.assign(positions)
        logger.info("dashboard_assigned partitions=%d", len(positions))

    def _on_error(self, error: KafkaError) -> None:
        logger.warning("kafka_error code=%s error=%s", error.name(), error.str())


def _epoch_s(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
