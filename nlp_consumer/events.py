"""The wire formats at the consumer's edges: transcript.v1 in, transcript.enriched.v1 and dead letters out.

Input events are validated by the contract every component shares (``contract.events``). The
enriched event keeps every field of the transcript unchanged except ``schema``
and adds ``sentiment``, ``explanation``, ``keywords``, ``analyzer`` and ``enriched_at``
(``schemas/enriched.v1.json``). It is keyed by ``session_id`` like its input, so one call's
events stay in one partition, in order.

A message that cannot be used (not UTF-8 JSON, not valid against transcript.v1, or failing
enrichment) goes to the dead-letter topic as it was (same key, value and headers) plus headers
``dlq.error`` (one line), ``dlq.error.code``, ``dlq.source.topic``, ``dlq.source.partition``,
``dlq.source.offset``, ``dlq.consumer.group`` and ``dlq.failed_at``; it is never retried.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from contract.events import InvalidEvent, TranscriptEvent, rfc3339_utc, schema_validator
from nlp_consumer.errors import NlpError

ENRICHED_SCHEMA = "transcript.enriched.v1"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "enriched.v1.json"
CONTENT_TYPE = "application/json"

Headers = list[tuple[str, bytes]]


class InvalidTranscript(NlpError):
    """A message that is not a valid transcript.v1 event (a poison message)."""

    code = "invalid_event"


class InvalidEnriched(NlpError):
    code = "invalid_enriched_event"


def now_rfc3339() -> str:
    return rfc3339_utc()


def parse_transcript(value: bytes | None) -> dict[str, Any]:
    """The event document of a message value; ``InvalidTranscript`` says what is wrong with it."""
    if value is None:
        raise InvalidTranscript("no value (tombstone)")
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTranscript(f"not UTF-8 JSON: {exc}") from None
    try:
        TranscriptEvent.from_dict(document)
    except InvalidEvent as exc:
        raise InvalidTranscript(exc.message) from None
    except (AttributeError, KeyError, TypeError) as exc:  # not an object at all
        raise InvalidTranscript(f"transcript.v1 event: {type(exc).__name__}") from None
    result: dict[str, Any] = document
    return result


@functools.cache
def enriched_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    return schema_validator(enriched_schema())


def validate_enriched(document: Mapping[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "event"
        raise InvalidEnriched(f"{ENRICHED_SCHEMA} {where}: {error.message}")


def encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def enriched_headers() -> Headers:
    return [("content-type", CONTENT_TYPE.encode()), ("schema", ENRICHED_SCHEMA.encode())]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that will never be enriched, with why."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    error: str
    code: str
    topic: str
    partition: int
    offset: int

    def dlq_headers(self, group_id: str) -> Headers:
        added = {
            "dlq.error": self.error.replace("\n", " ")[:1000],
            "dlq.error.code": self.code,
            "dlq.source.topic": self.topic,
            "dlq.source.partition": str(self.partition),
            "dlq.source.offset": str(self.offset),
            "dlq.consumer.group": group_id,
            "dlq.failed_at": now_rfc3339(),
        }
        kept = [(k, v or b"") for k, v in self.headers if not k.startswith("dlq.")]
        return kept + [(k, v.encode("utf-8")) for k, v in added.items()]
