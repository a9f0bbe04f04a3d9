"""The recorder's own finals on Kafka, as the contract's ``transcript.v1`` events.

Each final becomes a ``contract.events.TranscriptEvent`` with ``source`` ``recorder``, validated
against the schema like the decoder's (an event that breaks it is counted as not delivered,
never produced): key the session id (a session's utterances stay in order on one partition),
value the event's UTF-8 JSON, headers ``content-type: application/json`` and ``schema:
transcript.v1``. The producer is idempotent with ``acks=all``.

The WebSocket protocol does not say which engine and model decoded a stream: such events carry
``unknown`` for both (the schema wants them non-empty). Empty finals are never published. A
stereo call's finals carry their ``channel`` and ``speaker`` (schema version 1.1).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from contract.events import SOURCE_RECORDER, InvalidEvent, TranscriptEvent, rfc3339_utc
from recorder.config import KafkaSettings
from recorder.errors import ConfigError, KafkaDeliveryError
from recorder.events import CallEvent, Final, FinalReceived, SessionInfo

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
# The broker refused this client's credentials or certificate: no retry can deliver, so ``close``
# stops waiting for acknowledgements and names the refusal.
REFUSED = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
FLUSH_STEP_S = 0.5


def transcript_event(
    session: SessionInfo, user_id: str, final: Final, produced_at: datetime
) -> TranscriptEvent:
    """The event of one final utterance."""
    return TranscriptEvent(
        session_id=session.session_id,
        user_id=user_id,
        utterance=final.utterance,
        text=final.text,
        start_ms=final.start_ms,
        end_ms=final.end_ms,
        engine=session.engine or UNKNOWN,
        model=session.model or UNKNOWN,
        language=session.language,
        produced_at=rfc3339_utc(produced_at.timestamp()),
        words=final.words,
        source=SOURCE_RECORDER,
        channel=final.channel,
        speaker=final.speaker,
    )


class TranscriptPublisher:
    """An idempotent producer of ``transcript.v1`` events; an ``Observer`` of call events.

    Delivery is asynchronous; ``close`` waits up to ``delivery_timeout_s`` for every event (no
    longer once the broker refused the login or the TLS handshake) and raises
    ``KafkaDeliveryError`` naming how many were not acknowledged and why.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        config = settings.client.client_config("recorder") | {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
            "error_cb": self._on_error,
        }
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"kafka: {kafka_reason(exc)}") from None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self._last_error = ""
        self._refusal: str | None = None

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, FinalReceived) and event.final.text:
            self.publish(event.session, event.call.user_id, event.final)

    def publish(self, session: SessionInfo, user_id: str, final: Final) -> None:
        event = transcript_event(session, user_id, final, datetime.now(UTC))
        try:
            value = event.to_json()
        except InvalidEvent as exc:
            self._failed(f"invalid event: {exc.message}")
            logger.warning("kafka_invalid_event event_id=%s error=%s", event.event_id, exc.message)
            return
        while True:
            try:
                self._producer.produce(
                    self._settings.topic,
                    key=event.key,
                    value=value,
                    headers=list(event.headers),
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                self._failed(kafka_reason(exc))
                return
        self._producer.poll(0)

    def close(self) -> None:
        """Wait for outstanding events; raise when any was not acknowledged."""
        undelivered = self._flush()
        lost = self.failed + undelivered
        if lost:
            why = self._refusal or self._last_error or "no acknowledgement in time"
            raise KafkaDeliveryError(
                f"kafka: {lost} transcript event(s) not delivered to {self._settings.topic} at "
                f"{self._settings.client.bootstrap_servers} ({why})"
            )

    def _flush(self) -> int:
        """Events still unacknowledged after waiting up to ``delivery_timeout_s``, or until a
        refusal; those left are purged, so exiting does not wait for them."""
        deadline = time.monotonic() + self._settings.delivery_timeout_s
        undelivered = self._producer.flush(0)
        while undelivered and self._refusal is None and (left := deadline - time.monotonic()) > 0:
            undelivered = self._producer.flush(min(left, FLUSH_STEP_S))
        if undelivered:
            self._producer.purge()
        return undelivered

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            with self._lock:
                self.delivered += 1
                self._refusal = None
            return
        self._failed(error.str())
        logger.info("kafka_delivery_failed key=%s error=%s", message.key(), error.str())

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client-wide errors (served by ``poll`` and ``flush``)."""
        if error.code() in REFUSED or error.fatal():
            with self._lock:
                self._refusal = error.str()
        logger.info("kafka_error code=%s error=%s", error.name(), error.str())

    def _failed(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            self._last_error = reason


def kafka_reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
