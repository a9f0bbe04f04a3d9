"""The transcript events every component agrees on: what the decoder and the recorder publish to
Kafka and the NLP consumer reads.

Finals go to ``transcripts.v1`` (``contract.kafka.TRANSCRIPTS_TOPIC``, or ``KAFKA_TOPIC``), one
message per utterance:

* key: the ``session_id`` (UTF-8), so one call's utterances stay in one partition, in order;
* value: a UTF-8 JSON object valid against ``schemas/transcript.v1.json``;
* headers: ``content-type: application/json`` and ``schema: transcript.v1``.

Times are integer milliseconds from the start of the session's audio stream (``start_ms``,
``end_ms`` and each word's). ``event_id`` is ``<session_id>:<utterance>``: delivery is at least
once, so consumers drop an ``event_id`` they have already seen. Empty finals are never produced.
``produced_at`` is an RFC 3339 date-time: producers write UTC with ``Z``, and any offset
(``+00:00``) is valid.

Partials (interim hypotheses) are a different type, ``PartialTranscriptEvent`` (schema
``transcript.partial.v1``, ``"partial": true``), and go only to their own topic
``transcripts.partial.v1``; they are best effort and never mixed into the finals topic.

Both dataclasses validate against their schema when they are written (``to_json``) and read
(``from_json``); formats are checked the same way in every image (``format_checker``), whichever
optional packages it installs.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import jsonschema

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
TRANSCRIPT_SCHEMA = "transcript.v1"
PARTIAL_SCHEMA = "transcript.partial.v1"
CONTENT_TYPE = "application/json"
SOURCE_DECODER = "decoder"
SOURCE_RECORDER = "recorder"
RFC3339_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})",
    re.IGNORECASE,
)

Headers = tuple[tuple[str, str], ...]


class InvalidEvent(ValueError):
    """A message that does not follow its schema; ``message`` names the first offending field."""

    code = "invalid_event"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_rfc3339_date_time(value: object) -> bool:
    """RFC 3339 section 5.6 ``date-time``: ``T`` and ``Z`` in either case, any offset, a real date
    and time (as jsonschema's optional ``rfc3339-validator`` checks it, without needing it)."""
    if not isinstance(value, str):
        return True  # the format applies to strings only
    if RFC3339_DATE_TIME.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.upper())
    except ValueError:
        return False
    return True


def format_checker() -> jsonschema.FormatChecker:
    """jsonschema's format checks, with ``date-time`` checked here (jsonschema skips it unless an
    optional package is installed, which not every image does)."""
    checker = jsonschema.FormatChecker()
    checker.checks("date-time")(is_rfc3339_date_time)
    return checker


def schema_validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of ``schema`` (any JSON Schema document) that checks formats as events do."""
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=format_checker())


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema document of ``name`` (``transcript.v1`` or ``transcript.partial.v1``)."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    return schema_validator(load_schema(name))


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
class Word:
    """One recognised word of a final; times in milliseconds from the start of the stream."""

    word: str
    start_ms: int
    end_ms: int
    conf: float


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
