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

A final of a multi-channel (stereo) call carries its ``channel`` (0-based) and that channel's
``speaker`` name; a mono call's finals have neither (schema version 1.1 added both as optional
fields, so 1.0 events stay valid).

When a session ends (normally, by idle expiry, by a failover flush or at shutdown), one
``call.ended.v1`` event (``CallEndedEvent``, ``schemas/call.ended.v1.json``) follows its last final
on the same topic with the same key, hence on the same partition: consumers that read finals only
skip it by its ``schema`` (field and header). Its ``event_id`` is ``<session_id>:ended``.

When the NLP consumer reads a call's ``call.ended.v1`` event it publishes one ``call.summary.v1``
event (``CallSummaryEvent``, ``schemas/call.summary.v1.json``) to its own topic
(``calls.summary.v1``), keyed by ``session_id``, with ``event_id`` ``<session_id>:summary``: talk
time, turns and sentiment per speaker, the share of silence, the most negative moment of each
speaker, and an extractive summary (the call's own most central sentences, in call order).

Partials (interim hypotheses) are a different type, ``PartialTranscriptEvent`` (schema
``transcript.partial.v1``, ``"partial": true``), and go only to their own topic
``transcripts.partial.v1``; they are best effort and never mixed into the finals topic.

Both dataclasses validate against their schema when they are written (``to_json``, unless a producer
whose tests check every event it writes asks not to: ``check=False``) and read (``from_json``);
formats are checked the same way in every image (``format_checker``), whichever optional packages it
installs.
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
CALL_ENDED_SCHEMA = "call.ended.v1"
CALL_SUMMARY_SCHEMA = "call.summary.v1"
SCHEMA_VERSION_KEY = "x-schema-version"  # compatible revisions of a schema (minor versions)
MAX_SPEAKER_CHARS = 32
END_REASONS = ("normal", "idle", "max-duration", "failover-flush", "shutdown")
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


def schema_version(name: str) -> str:
    """The compatible revision of a schema (``"1.1"``): minor versions only add optional fields."""
    return str(load_schema(name).get(SCHEMA_VERSION_KEY, "1.0"))


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


class _SessionEvent:
    """What every event keyed by its session shares: its key, headers and validated JSON value."""

    __slots__ = ()
    session_id: str
    schema: ClassVar[str]

    @property
    def key(self) -> bytes:
        return self.session_id.encode("utf-8")

    @property
    def headers(self) -> Headers:
        return _headers(self.schema)

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, check: bool = True) -> bytes:
        """The message value (UTF-8 JSON); raises ``InvalidEvent`` if the event breaks the schema.

        ``check=False`` skips the schema check (about 0.3 ms for a final with word timings, ten
        times its serialisation): for a producer whose tests check every kind of event it writes,
        so the check does not run again for each one; a consumer still checks what it reads."""
        document = self.to_dict()
        if check:
            validate(document, self.schema)
        return _dumps(document)


def _same_event_id(document: Mapping[str, Any], event: Any) -> None:
    """A parsed document's ``event_id`` must be the one its fields give."""
    if document["event_id"] != event.event_id:
        raise InvalidEvent(f"{event.schema} event_id: expected {event.event_id!r}")


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word of a final; times in milliseconds from the start of the stream."""

    word: str
    start_ms: int
    end_ms: int
    conf: float


@dataclass(frozen=True, slots=True)
class TranscriptEvent(_SessionEvent):
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
    channel: int | None = None  # of a multi-channel call (0-based); None for mono
    speaker: str | None = None  # the name the session gave that channel

    schema: ClassVar[str] = TRANSCRIPT_SCHEMA

    @property
    def event_id(self) -> str:
        """Stable identity of this final: the same utterance always has the same id."""
        return f"{self.session_id}:{self.utterance}"

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
        if self.channel is not None:
            document["channel"] = self.channel
        if self.speaker is not None:
            document["speaker"] = self.speaker
        return document

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
            channel=document.get("channel"),
            speaker=document.get("speaker"),
        )
        _same_event_id(document, event)
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
class PartialTranscriptEvent(_SessionEvent):
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

    @classmethod
    def from_dict(cls, document: Any) -> PartialTranscriptEvent:
        validate(document, PARTIAL_SCHEMA)
        fields = {k: v for k, v in document.items() if k not in ("schema", "partial")}
        return cls(**fields)

    @classmethod
    def from_json(cls, data: bytes | str) -> PartialTranscriptEvent:
        return cls.from_dict(_loads(data))


@dataclass(frozen=True, slots=True)
class CallEndedEvent(_SessionEvent):
    """A session ended: published after its last final, on the finals topic, with the same key.

    ``reason``: ``normal`` (the client ended or closed it), ``idle`` (expired after inactivity),
    ``max-duration``, ``failover-flush`` (its instance died and the client never came back: another
    instance flushed it) or ``shutdown`` (a lone instance stopped). ``finals`` is how many
    ``transcript.v1`` events the call has (utterances 0 to ``finals - 1``); ``audio_ms`` the audio
    decoded (per channel); ``speakers`` the channels' names (empty for a mono call).
    """

    session_id: str
    user_id: str
    reason: str
    started_at: str
    ended_at: str
    audio_ms: int
    channels: int
    speakers: tuple[str, ...]
    finals: int
    engine: str
    model: str
    language: str
    produced_at: str
    source: str = SOURCE_DECODER
    metadata: Mapping[str, Any] | None = None

    schema: ClassVar[str] = CALL_ENDED_SCHEMA

    @property
    def event_id(self) -> str:
        """One per call: ``<session_id>:ended``."""
        return f"{self.session_id}:ended"

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema": self.schema,
            "event_id": self.event_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "reason": self.reason,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "audio_ms": self.audio_ms,
            "channels": self.channels,
            "speakers": list(self.speakers),
            "finals": self.finals,
            "engine": self.engine,
            "model": self.model,
            "language": self.language,
            "produced_at": self.produced_at,
            "source": self.source,
        }
        if self.metadata is not None:
            document["metadata"] = dict(self.metadata)
        return document

    @classmethod
    def from_dict(cls, document: Any) -> CallEndedEvent:
        validate(document, CALL_ENDED_SCHEMA)
        fields = {k: v for k, v in document.items() if k not in ("schema", "event_id")}
        event = cls(**(fields | {"speakers": tuple(document["speakers"])}))
        _same_event_id(document, event)
        return event

    @classmethod
    def from_json(cls, data: bytes | str) -> CallEndedEvent:
        return cls.from_dict(_loads(data))


@dataclass(frozen=True, slots=True)
class Mood:
    """Mean polarity (-1 … +1) of a speaker's ``turns`` in a stretch of a call, and its label."""

    label: str
    polarity: float
    turns: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "polarity": round(self.polarity, 4), "turns": self.turns}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any] | None) -> Mood | None:
        if document is None:
            return None
        return cls(document["label"], float(document["polarity"]), document["turns"])


@dataclass(frozen=True, slots=True)
class ExplainingWord:
    """A word that moved a sentence's polarity by ``weight``; ``index`` in ``text.split()``."""

    word: str
    weight: float
    index: int


@dataclass(frozen=True, slots=True)
class Moment:
    """One turn of a call: the most negative one of a speaker, with the words that explain it."""

    utterance: int
    text: str
    start_ms: int
    end_ms: int
    label: str
    polarity: float
    explanation: tuple[ExplainingWord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "utterance": self.utterance,
            "text": self.text,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "label": self.label,
            "polarity": round(self.polarity, 4),
            "explanation": [
                {"word": w.word, "weight": round(w.weight, 4), "index": w.index} for w in self.explanation
            ],
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any] | None) -> Moment | None:
        if document is None:
            return None
        words = tuple(
            ExplainingWord(w["word"], float(w["weight"]), w["index"]) for w in document["explanation"]
        )
        fields = {k: v for k, v in document.items() if k != "explanation"}
        return cls(**(fields | {"polarity": float(document["polarity"]), "explanation": words}))


@dataclass(frozen=True, slots=True)
class SpeakerSummary:
    """One speaker of a call: turns, talk time and share, sentiment over the call and in its first
    and last thirds (None: no turn there), and the most negative moment (None: no turn below 0)."""

    speaker: str
    channel: int | None
    turns: int
    talk_ms: int
    talk_share: float
    overall: Mood | None
    first_third: Mood | None
    last_third: Mood | None
    most_negative: Moment | None

    def to_dict(self) -> dict[str, Any]:
        moods = {"overall": self.overall, "first_third": self.first_third, "last_third": self.last_third}
        return {
            "speaker": self.speaker,
            "channel": self.channel,
            "turns": self.turns,
            "talk_ms": self.talk_ms,
            "talk_share": round(self.talk_share, 4),
            "sentiment": {name: None if mood is None else mood.to_dict() for name, mood in moods.items()},
            "most_negative": None if self.most_negative is None else self.most_negative.to_dict(),
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> SpeakerSummary:
        sentiment = document["sentiment"]
        return cls(
            speaker=document["speaker"],
            channel=document["channel"],
            turns=document["turns"],
            talk_ms=document["talk_ms"],
            talk_share=float(document["talk_share"]),
            overall=Mood.from_dict(sentiment["overall"]),
            first_third=Mood.from_dict(sentiment["first_third"]),
            last_third=Mood.from_dict(sentiment["last_third"]),
            most_negative=Moment.from_dict(document["most_negative"]),
        )


@dataclass(frozen=True, slots=True)
class SummarySentence:
    """A sentence of the call chosen for its extractive summary; ``centrality`` -1 … 1."""

    utterance: int
    speaker: str
    text: str
    start_ms: int
    centrality: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "utterance": self.utterance,
            "speaker": self.speaker,
            "text": self.text,
            "start_ms": self.start_ms,
            "centrality": round(self.centrality, 4),
        }


@dataclass(frozen=True, slots=True)
class CallSummaryEvent(_SessionEvent):
    """What a call was about, published once per call by the NLP consumer after its call.ended."""

    session_id: str
    user_id: str
    reason: str
    started_at: str
    ended_at: str
    duration_ms: int
    silence_share: float
    finals: int
    finals_expected: int
    speakers: tuple[SpeakerSummary, ...]
    sentences: tuple[SummarySentence, ...]
    summary_model: str
    analyzer: Mapping[str, str]
    produced_at: str

    schema: ClassVar[str] = CALL_SUMMARY_SCHEMA
    method: ClassVar[str] = "extractive"

    @property
    def event_id(self) -> str:
        """One per call: ``<session_id>:summary``."""
        return f"{self.session_id}:summary"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "event_id": self.event_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "reason": self.reason,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "silence_share": round(self.silence_share, 4),
            "finals": self.finals,
            "finals_expected": self.finals_expected,
            "speakers": [s.to_dict() for s in self.speakers],
            "summary": {
                "method": self.method,
                "model": self.summary_model,
                "sentences": [s.to_dict() for s in self.sentences],
            },
            "analyzer": dict(self.analyzer),
            "produced_at": self.produced_at,
        }

    @classmethod
    def from_dict(cls, document: Any) -> CallSummaryEvent:
        validate(document, CALL_SUMMARY_SCHEMA)
        summary = document["summary"]
        event = cls(
            session_id=document["session_id"],
            user_id=document["user_id"],
            reason=document["reason"],
            started_at=document["started_at"],
            ended_at=document["ended_at"],
            duration_ms=document["duration_ms"],
            silence_share=float(document["silence_share"]),
            finals=document["finals"],
            finals_expected=document["finals_expected"],
            speakers=tuple(SpeakerSummary.from_dict(s) for s in document["speakers"]),
            sentences=tuple(
                SummarySentence(
                    s["utterance"], s["speaker"], s["text"], s["start_ms"], float(s["centrality"])
                )
                for s in summary["sentences"]
            ),
            summary_model=summary["model"],
            analyzer=dict(document["analyzer"]),
            produced_at=document["produced_at"],
        )
        _same_event_id(document, event)
        return event

    @classmethod
    def from_json(cls, data: bytes | str) -> CallSummaryEvent:
        return cls.from_dict(_loads(data))


AnyEvent = TranscriptEvent | PartialTranscriptEvent | CallEndedEvent


def decode_event(data: bytes | str) -> AnyEvent:
    """A message value of any of the three schemas, chosen by its ``schema`` field."""
    document = _loads(data)
    name = document.get("schema") if isinstance(document, dict) else None
    if name == TRANSCRIPT_SCHEMA:
        return TranscriptEvent.from_dict(document)
    if name == PARTIAL_SCHEMA:
        return PartialTranscriptEvent.from_dict(document)
    if name == CALL_ENDED_SCHEMA:
        return CallEndedEvent.from_dict(document)
    raise InvalidEvent(f"unknown schema {name!r}")


def is_call_ended(value: bytes | None, headers: Sequence[tuple[str, Any]] | None = None) -> bool:
    """Whether a message of the finals topic is a ``call.ended.v1`` event (by its ``schema``
    header, else its value's ``schema`` field), for consumers that handle only finals."""
    for name, raw in headers or ():
        if name == "schema":
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            return text == CALL_ENDED_SCHEMA
    if value is None:
        return False
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(document, dict) and document.get("schema") == CALL_ENDED_SCHEMA
