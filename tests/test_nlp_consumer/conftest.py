"""The trained sentiment model, the consumer and dashboard processes, and transcript events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from confluent_kafka import Producer

from contract.events import TranscriptEvent, rfc3339_utc
from devtools.evaluation import ManifestEntry
from devtools.processes import ROOT, free_port
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


@dataclass
class ServiceProcess:
    """``python -m <module>`` with extra environment, logging to a file, in its own process group."""

    module: str
    env: Mapping[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.send(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            return self.process.wait()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


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
            assert self.process.alive(), self.process.output()[-3000:]
            return (metric(self.metrics_port, "nlp_assigned_partitions") or 0) > 0

        wait_for(assigned, READY_TIMEOUT_S, "the consumer to join its group")


class ConsumerRunner:
    """``runner(input, output, dlq, group, **env)``: an enrichment consumer process."""

    def __init__(self, bootstrap: str, model: Path, log_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.model = model
        self.log_dir = log_dir
        self.runs: list[ConsumerRun] = []

    def __call__(
        self, input_topic: str, output_topic: str, dlq_topic: str, group: str, **env: str
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
        run = ConsumerRun(ServiceProcess("nlp_consumer", settings | env, log).start(), port)
        self.runs.append(run)
        return run

    def kill_all(self) -> None:
        for run in self.runs:
            if run.process.alive():
                run.process.stop(signal.SIGKILL)


@pytest.fixture
def consumer_runner(kafka_bootstrap: str, trained_model: Path, tmp_path: Path) -> Iterator[ConsumerRunner]:
    runner = ConsumerRunner(kafka_bootstrap, trained_model, tmp_path)
    yield runner
    runner.kill_all()


def wait_http_ok(url: str, process: ServiceProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
    def ok() -> bool:
        assert process.alive(), process.output()[-3000:]
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(ok, timeout_s, url)
