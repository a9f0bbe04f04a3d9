"""Properties of the contract, checked in-process on generated input: whatever bytes arrive as a
message value, the event dataclasses give an event or raise ``InvalidEvent``, never another
exception; environment values parse to a bool or a ``ValueError``. ``FUZZ_EXAMPLES`` sets the
number of examples per property.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from contract.env import parse_bool
from contract.events import (
    InvalidEvent,
    PartialTranscriptEvent,
    TranscriptEvent,
    Word,
    decode_event,
    rfc3339_utc,
)

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(call: Callable[[], T], *errors: type[E]) -> T | E:
    """The call's result, or the typed error it raised; any other exception fails the test."""
    try:
        return call()
    except errors as exc:
        return exc


# Session ids as producers make them: no line breaks (the event_id pattern is one line).
utf8 = st.characters(codec="utf-8")
ids = st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=128)
names = st.text(utf8, min_size=1, max_size=40)
texts = st.text(utf8, max_size=200)
millis = st.integers(0, 2**40)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4)


json_values = st.recursive(json_scalars, json_containers, max_leaves=12)
words = st.builds(Word, word=texts, start_ms=millis, end_ms=millis, conf=st.floats(0.0, 1.0))
stamps = st.floats(0, 4_102_444_800).map(rfc3339_utc)


@st.composite
def transcript_events(draw: st.DrawFn) -> TranscriptEvent:
    return TranscriptEvent(
        session_id=draw(ids),
        user_id=draw(st.text(utf8, max_size=128)),
        utterance=draw(st.integers(0, 2**31)),
        text=draw(texts.filter(bool)),
        start_ms=draw(millis),
        end_ms=draw(millis),
        engine=draw(names),
        model=draw(names),
        language=draw(st.text(max_size=8)),
        produced_at=draw(stamps),
        words=draw(st.none() | st.lists(words, max_size=6).map(tuple)),
        source=draw(st.sampled_from(["decoder", "recorder"])),
        metadata=draw(st.none() | st.dictionaries(texts, json_values, max_size=6)),
    )


partial_events = st.builds(
    PartialTranscriptEvent,
    session_id=ids,
    user_id=st.text(max_size=128),
    utterance=st.integers(0, 2**31),
    text=texts.filter(bool),
    audio_ms=millis,
    engine=names,
    model=names,
    language=st.text(max_size=8),
    produced_at=stamps,
    source=st.sampled_from(["decoder", "recorder"]),
)


@fuzz
@given(event=transcript_events())
def test_transcript_events_round_trip(event: TranscriptEvent) -> None:
    value = event.to_json()
    assert TranscriptEvent.from_json(value) == event
    assert TranscriptEvent.from_json(value.decode("utf-8")) == event
    assert decode_event(value) == event
    assert json.loads(value)["event_id"] == event.event_id


@fuzz
@given(event=partial_events)
def test_partial_events_round_trip(event: PartialTranscriptEvent) -> None:
    value = event.to_json()
    assert PartialTranscriptEvent.from_json(value) == event
    assert decode_event(value) == event


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@fuzz
@given(
    data=st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=500).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(1, 200_000).map(lambda n: b"[" * n),
        st.integers(1, 200_000).map(nested),
    )
)
def test_any_message_value_is_an_event_or_invalid_event(data: bytes) -> None:
    for parse in (TranscriptEvent.from_json, PartialTranscriptEvent.from_json, decode_event):
        parsed = outcome(partial(parse, data), InvalidEvent)
        if isinstance(parsed, InvalidEvent):
            assert parsed.code == "invalid_event" and parsed.message


@fuzz
@given(
    event=transcript_events(), key=st.sampled_from(["text", "utterance", "event_id", "schema", "start_ms"])
)
def test_a_broken_field_is_an_invalid_event(event: TranscriptEvent, key: str) -> None:
    document = event.to_dict()
    document[key] = {"text": "", "utterance": -1, "event_id": "x", "schema": "transcript.v0"}.get(key, "1")
    with pytest.raises(InvalidEvent):
        TranscriptEvent.from_dict(document)
    with pytest.raises(InvalidEvent):
        TranscriptEvent.from_json(json.dumps(document))


@fuzz
@given(event=transcript_events(), extra=st.dictionaries(texts, json_values, min_size=1, max_size=3))
def test_unknown_fields_are_an_invalid_event(event: TranscriptEvent, extra: dict[str, Any]) -> None:
    document = event.to_dict()
    assume(not extra.keys() & (document.keys() | {"words", "metadata"}))
    with pytest.raises(InvalidEvent):
        TranscriptEvent.from_dict(document | extra)


# --- environment values ---------------------------------------------------------------------------------


@fuzz
@given(value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30))
def test_parse_bool_gives_a_bool_or_value_error(value: str) -> None:
    try:
        parsed = parse_bool(value)
    except ValueError:
        assert value.strip().lower() not in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}
        return
    assert parsed is (value.strip().lower() in {"1", "true", "yes", "on"})
