"""The trained sentiment model, the consumer and dashboard processes, and transcript events."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from confluent_kafka import Producer

from contract.events import TranscriptEvent, rfc3339_utc
from devtools.evaluation import ManifestEntry
from devtools.processes import ServiceProcess, free_port
from nlp_consumer.config import ModelSettings
from nlp_consumer.enrich import Enricher, load_enricher
from tests.kafka import wait_for

READY_TIMEOUT_S = 120


@dataclass(frozen=True)
class Turn:
    call: str  # e.g. call0
    utterance: int
    text: str
    sentiment: str  # the manifest's intended label


@pytest.fixture(scope="session")
def manifest_turns(manifest: list[ManifestEntry]) -> list[Turn]:
    """Every turn of data/call*.wav with its transcript and intended sentiment."""
    turns = [
        Turn(entry.path.stem, entry.turn, entry.transcript, entry.sentiment)
        for entry in manifest
        if entry.turn is not None and entry.path.stem.startswith("call")
    ]
    assert len(turns) > 40
    return turns


@pytest.fixture(scope="session")
def enricher(trained_model: Path) -> Enricher:
    return load_enricher(ModelSettings(model=str(trained_model)))


def transcript_event(session_id: str, utterance: int, text: str, user_id: str = "") -> TranscriptEvent:
    start_ms = utterance * 4000
    return TranscriptEvent(
        session_id=session_id,
        user_id=user_id,
        utterance=utterance,
        text=text,
        start_ms=start_ms,
        end_ms=start_ms + 3000,
        engine="vosk",
        model="test",
        language="en",
        produced_at=rfc3339_utc(),
    )


def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """Produce (key, value) records in order, keyed like the decoder (murmur2)."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "log_level": 0})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def produce_events(bootstrap: str, topic: str, events: list[TranscriptEvent]) -> None:
    produce(bootstrap, topic, [(e.key, e.to_json()) for e in events])


def metric(port: int, name: str) -> float | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.ConnectionError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values) if values else None


@dataclass
class ConsumerRun:
    process: ServiceProcess
    metrics_port: int

    def wait_assigned(self) -> None:
        def assigned() -> bool:
            self.process.check_alive()
            return (metric(self.metrics_port, "nlp_assigned_partitions") or 0) > 0

        wait_for(assigned, READY_TIMEOUT_S, "the consumer to join its group")


class ConsumerRunner:
    """``runner(input, output, dlq, group, **env)``: an enrichment consumer process (``module``:
    another entry point, e.g. one that crashes on purpose)."""

    def __init__(self, bootstrap: str, model: Path, log_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.model = model
        self.log_dir = log_dir
        self.runs: list[ConsumerRun] = []

    def __call__(
        self,
        input_topic: str,
        output_topic: str,
        dlq_topic: str,
        group: str,
        module: str = "nlp_consumer",
        **env: str,
    ) -> ConsumerRun:
        port = free_port()
        settings = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "NLP_INPUT_TOPIC": input_topic,
            "NLP_OUTPUT_TOPIC": output_topic,
            "NLP_DLQ_TOPIC": dlq_topic,
            "NLP_GROUP_ID": group,
            "NLP_METRICS_PORT": str(port),
            "SENTIMENT_MODEL": str(self.model),
            "NLP_TORCH_THREADS": "2",
        }
        log = self.log_dir / f"consumer-{uuid.uuid4().hex[:8]}.log"
        run = ConsumerRun(ServiceProcess(module, ["-m", module], settings | env, log).start(), port)
        self.runs.append(run)
        return run

    def kill_all(self) -> None:
        for run in self.runs:
            if run.process.alive:
                run.process.stop(signal.SIGKILL)


@pytest.fixture
def consumer_runner(kafka_bootstrap: str, trained_model: Path, tmp_path: Path) -> Iterator[ConsumerRunner]:
    runner = ConsumerRunner(kafka_bootstrap, trained_model, tmp_path)
    yield runner
    runner.kill_all()
