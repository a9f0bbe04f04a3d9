"""``python -m devtools.events_tail``: a topic's events as JSON lines, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from queue import Empty, Queue

import pytest
from confluent_kafka import Producer

from contract.events import TranscriptEvent
from decoder_api.delivery.events import EventSource
from devtools.processes import ROOT
from tests.kafka import TopicFactory, iter_lines
from tests.test_contract.test_events import event

ORIGIN = EventSource(engine="vosk", model="vosk-model-small-ko-0.22", language="ko")


def run_tail(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DECODER_KAFKA_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "devtools.events_tail", *args],
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
