"""The transcript event contract: JSON Schema files, the dataclasses' round trip, and ``tail``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from queue import Empty, Queue
from typing import Any

import jsonschema
import pytest
from confluent_kafka import Producer

from decoder_api.engines.base import Final, Word
from decoder_api.events import (
    PARTIAL_SCHEMA,
    TRANSCRIPT_SCHEMA,
    EventSource,
    InvalidEvent,
    PartialTranscriptEvent,
    TranscriptEvent,
    decode_event,
    events_from_finals,
    load_schema,
    rfc3339_utc,
)
from tests.kafka import TopicFactory, iter_lines
from tests.servers import ROOT

ORIGIN = EventSource(engine="vosk", model="vosk-model-small-ko-0.22", language="ko")


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
    }
    return TranscriptEvent(**(fields | changes))


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    """Validation as a consumer would do it: the schema file alone, formats checked."""
    schema = json.loads((ROOT / "decoder_api" / "schemas" / f"{name}.json").read_text())
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
    "changes", [{}, {"words": None, "metadata": None}, {"source": "recorder", "user_id": ""}]
)
def test_round_trip(changes: dict[str, Any]) -> None:
    original = event(**changes)
    assert TranscriptEvent.from_json(original.to_json()) == original
    assert decode_event(original.to_json()) == original


def test_optional_fields_are_left_out_rather_than_null() -> None:
    value = json.loads(event(words=None, metadata=None).to_json())
    assert "words" not in value
    assert "metadata" not in value


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


def test_garbage_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="JSON"):
        TranscriptEvent.from_json(b"\xff not json")
    with pytest.raises(InvalidEvent, match="unknown schema"):
        decode_event(b"{}")


def test_events_from_finals_skip_empty_finals_and_stamp_rfc3339_utc() -> None:
    finals = [
        Final(0, "안녕하세요", 300, 1200),
        Final(1, "", 1500, 1600),
        Final(2, "  ", 1700, 1800),
        Final(3, "감사합니다", 2400, 3300, (Word("감사합니다", 2400, 3300, 1.0000001),)),
    ]
    events = events_from_finals(finals, session_id="abc", user_id="u", origin=ORIGIN, metadata={"k": "v"})
    assert [e.utterance for e in events] == [0, 3]
    assert [e.event_id for e in events] == ["abc:0", "abc:3"]
    assert events[1].words == (Word("감사합니다", 2400, 3300, 1.0),)  # clamped into 0..1
    assert all(e.metadata == {"k": "v"} and e.engine == "vosk" for e in events)
    assert events[0].produced_at == events[1].produced_at
    for e in events:
        schema_validator(TRANSCRIPT_SCHEMA).validate(json.loads(e.to_json()))


def test_rfc3339_utc() -> None:
    assert rfc3339_utc(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_utc(1_780_000_000.25) == "2026-05-28T20:26:40.250Z"


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
    for name in (TRANSCRIPT_SCHEMA, PARTIAL_SCHEMA):
        schema_validator(name)
    properties = set(load_schema(TRANSCRIPT_SCHEMA)["properties"])
    assert set(event().to_dict()) == properties


# --- tail ------------------------------------------------------------------------------------


def run_tail(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DECODER_KAFKA_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "decoder_api.events", "tail", *args],
        cwd=ROOT,
        env=clean | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def produce(bootstrap: str, topic: str, events: list[TranscriptEvent]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
    for e in events:
        producer.produce(topic, key=e.key, value=e.to_json(), headers=list(e.headers))
    producer.produce(topic, key=b"other", value=b"not an event")
    assert producer.flush(30) == 0


def test_tail_prints_a_sessions_events_as_json_lines_and_stops_on_ctrl_c(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory()
    mine = [event(session_id="mine", utterance=i) for i in range(3)]
    produce(kafka_bootstrap, topic, [*mine, event(session_id="theirs", utterance=0)])
    tail = run_tail(
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        "--from-beginning",
        "--topic",
        topic,
        "--session",
        "mine",
    )
    lines: Queue[str] = Queue()
    assert tail.stdout is not None
    stdout = tail.stdout

    def pump() -> None:
        for line in iter_lines(stdout):
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    printed = []
    try:
        for _ in mine:
            printed.append(json.loads(lines.get(timeout=30)))
    except Empty:
        tail.kill()
        pytest.fail(f"tail printed {printed}; stderr: {tail.communicate()[1]}")
    tail.send_signal(signal.SIGINT)
    assert tail.wait(timeout=15) == 0
    assert printed == [e.to_dict() for e in mine]
    with pytest.raises(Empty):
        lines.get_nowait()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "error: KAFKA_BOOTSTRAP_SERVERS is not set"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "error: cannot reach Kafka at 127.0.0.1:1"),
    ],
)
def test_tail_errors_are_one_line(env: dict[str, str], message: str) -> None:
    tail = run_tail(env, "--topic", f"missing-{uuid.uuid4().hex}")
    _, stderr = tail.communicate(timeout=60)
    assert tail.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith(message), stderr
    assert "Traceback" not in stderr


def test_tail_of_a_missing_topic_is_a_one_line_error(kafka_bootstrap: str) -> None:
    topic = f"missing-{uuid.uuid4().hex}"
    tail = run_tail({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, "--topic", topic)
    _, stderr = tail.communicate(timeout=60)
    if tail.returncode == 0:  # pragma: no cover - a broker that creates topics when asked about them
        pytest.skip("the broker created the topic on a metadata request")
    assert stderr.strip() == f"error: topic {topic} does not exist"
