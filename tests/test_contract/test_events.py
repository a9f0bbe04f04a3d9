"""The transcript event contract: JSON Schema files and the dataclasses' round trip."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from contract.events import (
    CALL_ENDED_SCHEMA,
    PARTIAL_SCHEMA,
    SCHEMA_DIR,
    TRANSCRIPT_SCHEMA,
    CallEndedEvent,
    InvalidEvent,
    PartialTranscriptEvent,
    TranscriptEvent,
    Word,
    decode_event,
    is_call_ended,
    is_rfc3339_date_time,
    load_schema,
    rfc3339_utc,
    schema_version,
)


def event(**changes: Any) -> TranscriptEvent:
    fields: dict[str, Any] = {
        "session_id": "s-1",
        "user_id": "agent-7",
        "utterance": 2,
        "text": "네 알겠습니다",
        "start_ms": 4200,
        "end_ms": 5650,
        "engine": "vosk",
        "model": "vosk-model-small-ko-0.22",
        "language": "ko",
        "produced_at": "2026-01-31T12:00:00.250Z",
        "words": (Word("네", 4200, 4400, 0.91), Word("알겠습니다", 4450, 5650, 1.0)),
        "metadata": {"campaign": "spring", "priority": 2},
        "channel": 1,
        "speaker": "customer",
    }
    return TranscriptEvent(**(fields | changes))


def call_ended(**changes: Any) -> CallEndedEvent:
    fields: dict[str, Any] = {
        "session_id": "s-1",
        "user_id": "agent-7",
        "reason": "normal",
        "started_at": "2026-01-31T12:00:00.000Z",
        "ended_at": "2026-01-31T12:03:10.500Z",
        "audio_ms": 190_500,
        "channels": 2,
        "speakers": ("agent", "customer"),
        "finals": 14,
        "engine": "whisper",
        "model": "tiny.en",
        "language": "en",
        "produced_at": "2026-01-31T12:03:10.600Z",
        "metadata": {"campaign": "spring"},
    }
    return CallEndedEvent(**(fields | changes))


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    """Validation as another consumer would do it: the schema file alone, with jsonschema's own
    format checks."""
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_value_key_and_headers_follow_the_contract() -> None:
    original = event()
    value = json.loads(original.to_json())
    schema_validator(TRANSCRIPT_SCHEMA).validate(value)
    assert value["schema"] == "transcript.v1"
    assert value["event_id"] == "s-1:2"
    assert value["source"] == "decoder"
    assert value["words"][1] == {"word": "알겠습니다", "start_ms": 4450, "end_ms": 5650, "conf": 1.0}
    assert original.key == b"s-1"
    assert dict(original.headers) == {"content-type": "application/json", "schema": "transcript.v1"}
    assert "알겠습니다".encode() in original.to_json()  # UTF-8, not \\u escapes


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"words": None, "metadata": None},
        {"source": "recorder", "user_id": ""},
        {"channel": None, "speaker": None},
    ],
)
def test_round_trip(changes: dict[str, Any]) -> None:
    original = event(**changes)
    assert TranscriptEvent.from_json(original.to_json()) == original
    assert decode_event(original.to_json()) == original


def test_optional_fields_are_left_out_rather_than_null() -> None:
    value = json.loads(event(words=None, metadata=None, channel=None, speaker=None).to_json())
    assert "words" not in value
    assert "metadata" not in value
    assert "channel" not in value
    assert "speaker" not in value


def test_a_1_0_event_without_channel_or_speaker_stays_valid() -> None:
    value = json.loads(event().to_json())
    del value["channel"], value["speaker"]
    schema_validator(TRANSCRIPT_SCHEMA).validate(value)
    parsed = TranscriptEvent.from_dict(value)
    assert (parsed.channel, parsed.speaker) == (None, None)
    assert schema_version(TRANSCRIPT_SCHEMA) == "1.1"


@pytest.mark.parametrize("changes", [{"channel": -1}, {"speaker": ""}, {"speaker": "x" * 33}])
def test_a_bad_channel_or_speaker_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        event(**changes).to_json()


def test_call_ended_follows_its_schema_and_round_trips() -> None:
    original = call_ended()
    value = json.loads(original.to_json())
    schema_validator(CALL_ENDED_SCHEMA).validate(value)
    assert value["event_id"] == "s-1:ended"
    assert value["speakers"] == ["agent", "customer"]
    assert original.key == b"s-1"
    assert dict(original.headers)["schema"] == "call.ended.v1"
    assert CallEndedEvent.from_json(original.to_json()) == original
    assert decode_event(original.to_json()) == original
    mono = call_ended(channels=1, speakers=(), metadata=None, reason="failover-flush")
    assert decode_event(mono.to_json()) == mono
    assert set(call_ended().to_dict()) == set(load_schema(CALL_ENDED_SCHEMA)["properties"])


@pytest.mark.parametrize(
    "changes", [{"reason": "crashed"}, {"channels": 3}, {"finals": -1}, {"speakers": ("",)}]
)
def test_a_bad_call_ended_event_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        call_ended(**changes).to_json()


def test_call_ended_is_told_apart_from_finals_by_header_or_value() -> None:
    ended, final = call_ended(), event()
    assert is_call_ended(ended.to_json(), list(ended.headers))
    assert is_call_ended(ended.to_json())
    assert is_call_ended(b"x", [("schema", b"call.ended.v1")])
    assert not is_call_ended(final.to_json(), list(final.headers))
    assert not is_call_ended(final.to_json())
    assert not is_call_ended(b"not json")
    assert not is_call_ended(None)


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda v: v.pop("session_id"), "'session_id' is a required property"),
        (lambda v: v.update(schema="transcript.v2"), "schema"),
        (lambda v: v.update(text=""), "text"),
        (lambda v: v.update(utterance=-1), "utterance"),
        (lambda v: v.update(produced_at="2026-01-31 12:00:00"), "produced_at"),
        (lambda v: v.update(source="someone"), "source"),
        (lambda v: v.update(extra=1), "extra"),
        (lambda v: v.update(event_id="s-1:3"), "event_id"),
    ],
)
def test_from_json_rejects_what_breaks_the_schema(mutate: Any, complaint: str) -> None:
    value = json.loads(event().to_json())
    mutate(value)
    with pytest.raises(InvalidEvent, match=complaint):
        TranscriptEvent.from_json(json.dumps(value))


def test_to_json_refuses_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="text"):
        event(text="").to_json()


def test_to_json_unchecked_writes_the_same_bytes_and_only_skips_the_check() -> None:
    assert event().to_json(check=False) == event().to_json()
    unchecked = event(text="").to_json(check=False)  # a producer whose tests check its events
    with pytest.raises(InvalidEvent, match="text"):  # its consumers still refuse such an event
        TranscriptEvent.from_json(unchecked)


def test_garbage_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="JSON"):
        TranscriptEvent.from_json(b"\xff not json")
    with pytest.raises(InvalidEvent, match="unknown schema"):
        decode_event(b"{}")
    assert InvalidEvent("x").code == "invalid_event"


def test_rfc3339_utc() -> None:
    assert rfc3339_utc(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_utc(1_780_000_000.25) == "2026-05-28T20:26:40.250Z"


ANY_OFFSET = [
    "2026-01-31T12:00:00.250Z",
    "2026-01-31T12:00:00.250+00:00",
    "2026-01-31T21:00:00+09:00",
    "2026-01-31T07:30:00.123456789-04:30",
    "2026-01-31t12:00:00z",
]
NOT_RFC3339 = [
    "2026-01-31 12:00:00Z",
    "2026-01-31T12:00:00",  # no offset
    "2026-01-31T12:00Z",
    "2026-13-01T00:00:00+00:00",  # no 13th month
    "2026-02-30T00:00:00Z",
    "2026-01-31T24:00:00Z",
    "٢٠٢٦-01-31T12:00:00Z",  # other digits than ASCII ones
]


@pytest.mark.parametrize("stamp", ANY_OFFSET)
def test_produced_at_is_any_rfc3339_date_time(stamp: str) -> None:
    """RFC 3339 allows ``+00:00`` (or any offset) as well as ``Z``: both schemas take it."""
    final = event(produced_at=stamp)
    assert TranscriptEvent.from_json(final.to_json()) == final
    schema_validator(TRANSCRIPT_SCHEMA).validate(final.to_dict())
    partial = PartialTranscriptEvent("s-1", "", 0, "네", 200, "vosk", "m", "ko", stamp)
    assert PartialTranscriptEvent.from_json(partial.to_json()) == partial


@pytest.mark.parametrize("stamp", NOT_RFC3339)
def test_produced_at_is_nothing_else(stamp: str) -> None:
    assert not is_rfc3339_date_time(stamp)
    with pytest.raises(InvalidEvent, match="produced_at"):
        event(produced_at=stamp).to_json()


def test_partials_have_their_own_flagged_schema() -> None:
    partial = PartialTranscriptEvent(
        session_id="s-1",
        user_id="",
        utterance=3,
        text="오늘 날씨",
        audio_ms=8200,
        engine="vosk",
        model="m",
        language="ko",
        produced_at=rfc3339_utc(),
    )
    value = json.loads(partial.to_json())
    schema_validator(PARTIAL_SCHEMA).validate(value)
    assert value["partial"] is True
    assert dict(partial.headers)["schema"] == "transcript.partial.v1"
    assert PartialTranscriptEvent.from_json(partial.to_json()) == partial
    assert decode_event(partial.to_json()) == partial
    with pytest.raises(jsonschema.ValidationError):  # a partial is never a valid final
        schema_validator(TRANSCRIPT_SCHEMA).validate(value)
    with pytest.raises(InvalidEvent):
        TranscriptEvent.from_json(partial.to_json())


def test_schema_files_are_valid_and_list_every_field() -> None:
    for name in (TRANSCRIPT_SCHEMA, PARTIAL_SCHEMA, CALL_ENDED_SCHEMA):
        schema_validator(name)
    properties = set(load_schema(TRANSCRIPT_SCHEMA)["properties"])
    assert set(event().to_dict()) == properties
