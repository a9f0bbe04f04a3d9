"""The transcript event contract: what the decoder (and the recorder client) publish to Kafka.

Finals go to ``transcripts.v1`` (configurable), one message per utterance:

* key: the ``session_id`` (UTF-8), so one call's utterances stay in one partition, in order;
* value: a UTF-8 JSON object valid against ``schemas/transcript.v1.json``;
* headers: ``content-type: application/json`` and ``schema: transcript.v1``.

Times are integer milliseconds from the start of the session's audio stream (``start_ms``,
``end_ms`` and each word's). ``event_id`` is ``<session_id>:<utterance>``: delivery is at least
once, so consumers drop an ``event_id`` they have already seen. Empty finals are never produced.

Partials (interim hypotheses) are a different type, ``PartialTranscriptEvent`` (schema
``transcript.partial.v1``, ``"partial": true``), and go only to their own topic
``transcripts.partial.v1``; they are best effort and never mixed into the finals topic.

``python -m decoder_api.events tail`` prints a topic's events as JSON lines (the broker comes
from ``KAFKA_BOOTSTRAP_SERVERS`` and the other ``KAFKA_*`` variables).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, TextIO

import jsonschema

from decoder_api.engines.base import Final, Word
from decoder_api.errors import DecoderError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
TRANSCRIPT_SCHEMA = "transcript.v1"
PARTIAL_SCHEMA = "transcript.partial.v1"
TRANSCRIPTS_TOPIC = "transcripts.v1"
PARTIALS_TOPIC = "transcripts.partial.v1"
CONTENT_TYPE = "application/json"
SOURCE_DECODER = "decoder"
SOURCE_RECORDER = "recorder"

Headers = tuple[tuple[str, str], ...]


class InvalidEvent(DecoderError):
    """A message that does not follow its schema."""

    code = "invalid_event"
    status = 422


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema document of ``name`` (``transcript.v1`` or ``transcript.partial.v1``)."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(document: Any, name: str) -> None:
    """Raise ``InvalidEvent`` naming the first offending field when ``document`` breaks the schema."""
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "event"
        raise InvalidEvent(f"{name} {where}: {error.message}")


def rfc3339_utc(epoch_s: float | None = None) -> str:
    """A timestamp as RFC 3339 in UTC with milliseconds, e.g. ``2026-01-31T12:00:00.250Z``."""
    moment = datetime.fromtimestamp(time.time() if epoch_s is None else epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(schema: str) -> Headers:
    return (("content-type", CONTENT_TYPE), ("schema", schema))


def _dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidEvent(f"not UTF-8 JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """One final utterance of a session, as published to the finals topic."""

    session_id: str
    user_id: str
    utterance: int
    text: str
    start_ms: int
    end_ms: int
    engine: str
    model: str
    language: str
    produced_at: str
    words: tuple[Word, ...] | None = None
    source: str = SOURCE_DECODER
    metadata: Mapping[str, Any] | None = None

    schema: ClassVar[str] = TRANSCRIPT_SCHEMA

    @property
    def event_id(self) -> str:
        """Stable identity of this final: the same utterance always has the same id."""
        return f"{self.session_id}:{self.utterance}"

    @property
    def key(self) -> bytes:
        return self.session_id.encode("utf-8")

    @property
    def headers(self) -> Headers:
        return _headers(self.schema)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema": self.schema,
            "event_id": self.event_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "utterance": self.utterance,
            "text": self.text,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "engine": self.engine,
            "model": self.model,
            "language": self.language,
            "produced_at": self.produced_at,
            "source": self.source,
        }
        if self.words is not None:
            document["words"] = [
                {"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms, "conf": w.conf}
                for w in self.words
            ]
        if self.metadata is not None:
            document["metadata"] = dict(self.metadata)
        return document

    def to_json(self) -> bytes:
        """The message value (UTF-8 JSON); raises ``InvalidEvent`` if the event breaks the schema."""
        document = self.to_dict()
        validate(document, self.schema)
        return _dumps(document)

    @classmethod
    def from_dict(cls, document: Any) -> TranscriptEvent:
        validate(document, TRANSCRIPT_SCHEMA)
        event = cls(
            session_id=document["session_id"],
            user_id=document["user_id"],
            utterance=document["utterance"],
            text=document["text"],
            start_ms=document["start_ms"],
            end_ms=document["end_ms"],
            engine=document["engine"],
            model=document["model"],
            language=document["language"],
            produced_at=document["produced_at"],
            words=_words(document.get("words")),
            source=document["source"],
            metadata=document.get("metadata"),
        )
        if document["event_id"] != event.event_id:
            raise InvalidEvent(f"{TRANSCRIPT_SCHEMA} event_id: expected {event.event_id!r}")
        return event

    @classmethod
    def from_json(cls, data: bytes | str) -> TranscriptEvent:
        """Parse and validate a message value."""
        return cls.from_dict(_loads(data))


def _words(raw: Sequence[Mapping[str, Any]] | None) -> tuple[Word, ...] | None:
    if raw is None:
        return None
    return tuple(Word(w["word"], w["start_ms"], w["end_ms"], float(w["conf"])) for w in raw)


@dataclass(frozen=True, slots=True)
class PartialTranscriptEvent:
    """An interim hypothesis of the open utterance (``partial: true``); never on the finals topic."""

    session_id: str
    user_id: str
    utterance: int
    text: str
    audio_ms: int
    engine: str
    model: str
    language: str
    produced_at: str
    source: str = SOURCE_DECODER

    schema: ClassVar[str] = PARTIAL_SCHEMA

    @property
    def key(self) -> bytes:
        return self.session_id.encode("utf-8")

    @property
    def headers(self) -> Headers:
        return _headers(self.schema)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "partial": True,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "utterance": self.utterance,
            "text": self.text,
            "audio_ms": self.audio_ms,
            "engine": self.engine,
            "model": self.model,
            "language": self.language,
            "produced_at": self.produced_at,
            "source": self.source,
        }

    def to_json(self) -> bytes:
        document = self.to_dict()
        validate(document, self.schema)
        return _dumps(document)

    @classmethod
    def from_dict(cls, document: Any) -> PartialTranscriptEvent:
        validate(document, PARTIAL_SCHEMA)
        fields = {k: v for k, v in document.items() if k not in ("schema", "partial")}
        return cls(**fields)

    @classmethod
    def from_json(cls, data: bytes | str) -> PartialTranscriptEvent:
        return cls.from_dict(_loads(data))


AnyEvent = TranscriptEvent | PartialTranscriptEvent


def decode_event(data: bytes | str) -> AnyEvent:
    """A message value of either schema, chosen by its ``schema`` field."""
    document = _loads(data)
    name = document.get("schema") if isinstance(document, dict) else None
    if name == TRANSCRIPT_SCHEMA:
        return TranscriptEvent.from_dict(document)
    if name == PARTIAL_SCHEMA:
        return PartialTranscriptEvent.from_dict(document)
    raise InvalidEvent(f"unknown schema {name!r}")


@dataclass(frozen=True, slots=True)
class EventSource:
    """Who produces the events: the engine and model that decoded, and the producing component."""

    engine: str
    model: str
    language: str
    source: str = SOURCE_DECODER


def events_from_finals(
    finals: Iterable[Final],
    *,
    session_id: str,
    user_id: str,
    origin: EventSource,
    metadata: Mapping[str, Any] | None = None,
    produced_at: str | None = None,
) -> list[TranscriptEvent]:
    """One event per non-empty final, all stamped with the same ``produced_at``."""
    stamp = produced_at or rfc3339_utc()
    return [
        TranscriptEvent(
            session_id=session_id,
            user_id=user_id,
            utterance=final.utterance,
            text=final.text,
            start_ms=final.start_ms,
            end_ms=final.end_ms,
            engine=origin.engine,
            model=origin.model,
            language=origin.language,
            produced_at=stamp,
            words=_clamped(final.words),
            source=origin.source,
            metadata=dict(metadata) if metadata else None,
        )
        for final in finals
        if final.text.strip()
    ]


def _clamped(words: tuple[Word, ...] | None) -> tuple[Word, ...] | None:
    """Word confidences within 0..1 (an engine's rounding must not make a final unpublishable)."""
    if words is None:
        return None
    return tuple(
        Word(w.word, max(w.start_ms, 0), max(w.end_ms, 0), min(max(w.conf, 0.0), 1.0)) for w in words
    )


# --- python -m decoder_api.events tail -------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoder_api.events", description="Inspect event topics.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tail = commands.add_parser("tail", help="print a topic's events as JSON lines until Ctrl-C")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest event")
    tail.add_argument("--session", metavar="ID", help="only this session's events")
    tail.add_argument("--topic", help="topic to read (default: KAFKA_TOPIC or transcripts.v1)")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return tail(args, os.environ if env is None else env, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 0
    except DecoderError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def tail(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Read every partition of the topic (no consumer group, nothing committed) and print events."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

    from decoder_api.config import ConfigError, load_settings
    from decoder_api.publisher import KafkaClientError, kafka_config

    settings = load_settings(env)
    config = kafka_config(settings)
    if config is None:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
    topic = args.topic or config.topic
    reported: set[str] = set()

    def on_error(error: Any) -> None:
        if error.str() not in reported:
            reported.add(error.str())
            print(f"warning: {error.str()}", file=err, flush=True)

    consumer_config = config.client_config() | {
        "group.id": f"decoder-tail-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "error_cb": on_error,
        "log_level": 0,
    }
    try:
        consumer = Consumer(consumer_config)
    except KafkaException as exc:
        raise KafkaClientError.wrap(exc, "cannot create a Kafka consumer") from None
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            raise KafkaClientError.wrap(exc, f"cannot reach Kafka at {config.bootstrap_servers}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise KafkaClientError(f"topic {topic} does not exist")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(found.partitions)])
        while True:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                on_error(message.error())
                continue
            _print_message(message, args.session, out, err)
    finally:
        consumer.close()


def _print_message(message: Any, session: str | None, out: TextIO, err: TextIO) -> None:
    key = (message.key() or b"").decode("utf-8", "replace")
    if session is not None and key != session:
        return
    where = f"{message.topic()}/{message.partition()}@{message.offset()}"
    try:
        event = decode_event(message.value() or b"")
    except InvalidEvent as exc:
        print(f"warning: skipped {where}: {exc.message}", file=err, flush=True)
        return
    print(json.dumps(event.to_dict(), ensure_ascii=False), file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
