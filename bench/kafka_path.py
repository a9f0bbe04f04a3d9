"""Kafka path: final produced → enriched event visible downstream, and the consumer's throughput.

``python -m bench.kafka_path`` starts an Apache Kafka broker in KRaft mode in a temporary directory
(or uses ``--bootstrap``), fresh topics, a downstream reader and a real ``python -m nlp_consumer``
process with the trained sentiment model, then measures:

1. **Throughput.** A backlog of final events waits in the input topic before the consumer starts;
   the consumer's rate is measured from its batches (``enriched_at`` of the first to the last
   batch, the first batch excluded: it carries the model's warm-up). The baseline is the bare
   pipeline: the same ``Enricher`` (sentiment, explanation, keywords) on the same batches
   in-process, without Kafka, after the consumer has stopped. Target: ratio ≥ 0.8.
2. **Latency at paced rates** (20 and 100 finals/s by default): events are produced at a steady
   rate with the decoder's own producer settings, and the time from each ``produce()`` to the
   enriched event reaching the downstream reader is taken (p50, p99). The baseline is the broker
   hop alone: the same events read back from the input topic by the same reader.

Events follow ``transcript.v1`` and carry the sentences of the sample calls of ``data/``
(``manifest.tsv``), one turn after another per call, many calls interleaved, each call keyed by
its session id like the decoder's finals.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from bench.results import (
    ROOT,
    Figure,
    Result,
    figure,
    machine_info,
    parser,
    percentile,
    publish,
    result,
    start_logging,
)
from contract.events import TranscriptEvent, rfc3339_utc
from contract.kafka import KafkaClientSettings
from decoder_api.delivery.publisher import KafkaConfig
from devtools import devstack
from devtools.evaluation import load_manifest
from devtools.processes import ServiceProcess

logger = logging.getLogger(__name__)

MANIFEST = ROOT / "data" / "manifest.tsv"
PARTITIONS = devstack.PARTITIONS
FINAL_EVERY_S = 4.5  # a caller's finals come about this far apart (the sample calls' turns)
READY_TIMEOUT_S = 180.0
TARGET_RATIO = 0.8


@dataclass(frozen=True)
class Size:
    rates: tuple[float, ...]
    duration_s: float
    backlog: int
    drain_timeout_s: float


FULL = Size(rates=(20.0, 100.0), duration_s=20.0, backlog=320, drain_timeout_s=60.0)
QUICK = Size(rates=(20.0,), duration_s=2.0, backlog=64, drain_timeout_s=30.0)


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    text: str
    start_ms: int
    end_ms: int


def sample_calls() -> list[list[Turn]]:
    """The turns of every sample call of ``data/`` (its per-turn rows of ``manifest.tsv``)."""
    calls: dict[str, list[Turn]] = {}
    for entry in load_manifest(MANIFEST):
        if entry.turn is None or not entry.path.stem.startswith("call"):
            continue
        start_ms = round(entry.start_s * 1000)
        calls.setdefault(entry.path.stem, []).append(
            Turn(entry.transcript, start_ms, start_ms + round(entry.seconds * 1000))
        )
    if not calls:
        raise RuntimeError(f"{MANIFEST} has no call turns")
    return list(calls.values())


class CallMix:
    """Finals of ``concurrent`` interleaved calls; a call that has said all its turns is replaced."""

    def __init__(self, calls: list[list[Turn]], concurrent: int, prefix: str) -> None:
        self._calls = calls
        self._prefix = prefix
        self._started = 0
        self._open = [self._new_call() for _ in range(max(1, concurrent))]
        self._next = 0

    def _new_call(self) -> tuple[str, Iterator[tuple[int, Turn]]]:
        script = self._calls[self._started % len(self._calls)]
        self._started += 1
        return f"{self._prefix}{secrets.token_urlsafe(12)}", iter(enumerate(script))

    def next_event(self) -> TranscriptEvent:
        slot = self._next % len(self._open)
        self._next += 1
        session_id, turns = self._open[slot]
        step = next(turns, None)
        if step is None:
            self._open[slot] = self._new_call()
            session_id, turns = self._open[slot]
            step = next(turns)
        utterance, turn = step
        return TranscriptEvent(
            session_id=session_id,
            user_id=f"caller-{session_id[-6:]}",
            utterance=utterance,
            text=turn.text,
            start_ms=turn.start_ms,
            end_ms=turn.end_ms,
            engine="whisper",
            model="tiny.en",
            language="en",
            produced_at=rfc3339_utc(),
        )


def concurrent_calls(rate_per_s: float) -> int:
    return math.ceil(rate_per_s * FINAL_EVERY_S)


# --- Kafka clients --------------------------------------------------------------------------------


class Sender:
    """The decoder's finals producer (idempotent, acks=all, lz4); remembers when each event left."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        config = KafkaConfig(KafkaClientSettings(bootstrap), topic, client_id="bench").producer_config() | {
            "log_level": 0
        }
        self._producer: Producer | None = Producer(config)
        self.sent_at: dict[str, float] = {}  # event_id → perf_counter at produce()
        self.documents: dict[str, dict[str, Any]] = {}

    def send(self, event: TranscriptEvent) -> None:
        value = event.to_json()
        self.documents[event.event_id] = event.to_dict()
        self.sent_at[event.event_id] = time.perf_counter()
        assert self._producer is not None, "the sender is closed"
        self._producer.produce(self.topic, key=event.key, value=value, headers=list(event.headers))
        self._producer.poll(0)

    def send_paced(self, mix: CallMix, rate_per_s: float, duration_s: float) -> list[str]:
        """``rate_per_s`` events a second for ``duration_s``, on an absolute schedule."""
        ids = []
        start = time.perf_counter()
        for i in range(round(rate_per_s * duration_s)):
            delay = start + i / rate_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing, not waiting for a condition
            event = mix.next_event()
            self.send(event)
            ids.append(event.event_id)
        self.flush()
        return ids

    def flush(self) -> None:
        remaining = self._producer.flush(30) if self._producer is not None else 0
        if remaining:
            raise RuntimeError(f"{remaining} events not acknowledged by the broker")

    def close(self) -> None:
        """Drop the producer (before the broker stops); what was sent stays readable."""
        self._producer = None


@dataclass
class Arrival:
    at: float  # perf_counter when the reader got it
    enriched_at: str = ""


@dataclass
class Reader:
    """A downstream consumer of the input and enriched topics, in a thread of its own."""

    bootstrap: str
    input_topic: str
    output_topic: str
    arrivals: dict[str, dict[str, Arrival]] = field(default_factory=dict)  # topic → event_id → Arrival
    _assigned: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Reader:
        self.arrivals = {self.input_topic: {}, self.output_topic: {}}
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "log_level": 0,
            }
        )

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            if {p.topic for p in partitions} >= {self.input_topic, self.output_topic}:
                self._assigned.set()

        consumer.subscribe([self.input_topic, self.output_topic], on_assign=on_assign)
        self._thread = threading.Thread(target=self._run, args=(consumer,), name="reader", daemon=True)
        self._thread.start()
        if not self._assigned.wait(READY_TIMEOUT_S):
            raise TimeoutError("the downstream reader was never assigned its partitions")
        return self

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.1)
                if message is not None and message.error() is None:
                    self._record(message)
        finally:
            consumer.close()

    def _record(self, message: Message) -> None:
        now = time.perf_counter()
        try:
            document = json.loads(message.value() or b"")
        except ValueError:
            return
        with self._lock:
            seen = self.arrivals[message.topic() or ""]
            if document["event_id"] not in seen:  # the first copy counts; duplicates are dropped
                seen[document["event_id"]] = Arrival(now, str(document.get("enriched_at", "")))

    def count(self, topic: str, ids: Sequence[str]) -> int:
        with self._lock:
            seen = self.arrivals[topic]
            return sum(1 for i in ids if i in seen)

    def wait_for(self, topic: str, ids: Sequence[str], timeout_s: float) -> bool:
        """True once every id arrived on ``topic``; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        while self.count(topic, ids) < len(ids):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # poll interval
        return True

    def snapshot(self, topic: str) -> dict[str, Arrival]:
        with self._lock:
            return dict(self.arrivals[topic])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


# --- the consumer process ---------------------------------------------------------------------------


def consumer_metrics(port: int) -> dict[str, float]:
    """The consumer's Prometheus samples (name with labels → value); empty when unreachable."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.RequestException:
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("nlp_") and " " in line:
            name, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def consumer_process(env: Mapping[str, str], log: Path, port: int) -> ServiceProcess:
    """``python -m nlp_consumer`` as deployed; ready once it has been assigned its partitions."""
    ready = lambda: consumer_metrics(port).get("nlp_assigned_partitions", 0) > 0  # noqa: E731
    return ServiceProcess("nlp_consumer", ["-m", "nlp_consumer"], env, log, ready)


# --- the sentiment model ------------------------------------------------------------------------------


def sentiment_model(env: Mapping[str, str]) -> tuple[Path, str]:
    """The model the consumer uses by default, and how it was found.

    ``SENTIMENT_MODEL`` when set, else ``default_model_dir`` (the model this checkout's training
    code builds), else the newest complete model in the cache (the model may be being rebuilt
    with another training configuration).
    """
    from nlp_consumer.errors import ModelUnavailable
    from nlp_consumer.train import COMPLETE_MARKER, default_cache_dir, default_model_dir

    if env.get("SENTIMENT_MODEL"):
        return Path(env["SENTIMENT_MODEL"]), "SENTIMENT_MODEL"
    cache = default_cache_dir(env)
    try:
        return default_model_dir(cache), "default_model_dir"
    except ModelUnavailable as exc:
        built = sorted(
            (cache / "models").glob(f"*/{COMPLETE_MARKER}"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        if not built:
            raise
        logger.warning("%s; using the newest built model %s", exc.message, built[0].parent)
        return built[0].parent, "newest model in the cache"


# --- measurements -------------------------------------------------------------------------------------


def stamp_s(enriched_at: str) -> float:
    return datetime.datetime.fromisoformat(enriched_at.replace("Z", "+00:00")).timestamp()


def consumer_batches(arrivals: Mapping[str, Arrival], ids: Sequence[str]) -> list[list[str]]:
    """The consumer's batches of ``ids``, in order: events enriched together share ``enriched_at``."""
    groups: dict[str, list[str]] = {}
    for event_id in ids:
        groups.setdefault(arrivals[event_id].enriched_at, []).append(event_id)
    return [groups[k] for k in sorted(groups, key=stamp_s)]


def consumer_throughput(arrivals: Mapping[str, Arrival], batches: list[list[str]]) -> float | None:
    """Events of batches 2…n over the time from the first batch's enrichment to the last one's."""
    if len(batches) < 2:
        return None
    first, last = (stamp_s(arrivals[b[0]].enriched_at) for b in (batches[0], batches[-1]))
    return sum(len(b) for b in batches[1:]) / (last - first) if last > first else None


def bare_throughput(model: Path, documents: Mapping[str, dict[str, Any]], batches: list[list[str]]) -> float:
    """The same batches through the same ``Enricher`` in this process (the first one warms it up)."""
    from nlp_consumer.config import ModelSettings
    from nlp_consumer.enrich import load_enricher

    if "torch" not in sys.modules:  # as the consumer's entry point: idle OpenMP threads sleep, not spin
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    enricher = load_enricher(ModelSettings(model=str(model)))
    enricher.enrich([documents[i] for i in batches[0]])
    started = time.perf_counter()
    for batch in batches[1:]:
        enricher.enrich([documents[i] for i in batch])
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - started)


@dataclass(frozen=True)
class Latencies:
    rate_per_s: float
    sent: int
    delivered: int
    enriched_ms: list[float]  # undelivered events count with the time waited (a lower bound)
    hop_ms: list[float]

    def summary(self) -> dict[str, Any]:
        return {
            "rate_per_s": self.rate_per_s,
            "sent": self.sent,
            "delivered": self.delivered,
            "complete": self.delivered == self.sent,
            "enriched_p50_ms": percentile(self.enriched_ms, 50),
            "enriched_p99_ms": percentile(self.enriched_ms, 99),
            "enriched_max_ms": max(self.enriched_ms),
            "hop_p50_ms": percentile(self.hop_ms, 50),
            "hop_p99_ms": percentile(self.hop_ms, 99),
        }


def paced_run(
    sender: Sender, reader: Reader, rate_per_s: float, size: Size, calls: list[list[Turn]]
) -> Latencies:
    mix = CallMix(calls, concurrent_calls(rate_per_s), prefix=f"r{rate_per_s:g}-")
    logger.info("producing rate_per_s=%g duration_s=%g", rate_per_s, size.duration_s)
    ids = sender.send_paced(mix, rate_per_s, size.duration_s)
    reader.wait_for(reader.output_topic, ids, size.drain_timeout_s)
    waited = time.perf_counter()
    enriched, hop = reader.snapshot(reader.output_topic), reader.snapshot(reader.input_topic)
    sent = sender.sent_at
    return Latencies(
        rate_per_s=rate_per_s,
        sent=len(ids),
        delivered=sum(1 for i in ids if i in enriched),
        enriched_ms=[((enriched[i].at if i in enriched else waited) - sent[i]) * 1000 for i in ids],
        hop_ms=[(hop[i].at - sent[i]) * 1000 for i in ids if i in hop],
    )


@dataclass
class Stack:
    """The broker (an Apache Kafka of its own in ``workdir`` unless given) and the directory of logs."""

    bootstrap: str | None
    workdir: Path
    broker: devstack.KafkaBroker | None = None

    def start(self) -> str:
        if self.bootstrap is None:
            self.broker = devstack.KafkaBroker(self.workdir / "kafka").start()
            self.broker.wait_ready()
            self.bootstrap = self.broker.bootstrap
        return self.bootstrap

    def stop(self) -> None:
        """A controlled shutdown of the broker started here (a given one is left alone)."""
        if self.broker is not None:
            self.broker.stop()


def measure(size: Size, bootstrap: str | None, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything of one run: (settings, details)."""
    model, model_source = sentiment_model(os.environ)
    calls = sample_calls()
    stack = Stack(bootstrap, workdir)
    with contextlib.ExitStack() as cleanup:  # stopped in reverse: consumer, sender, reader, broker
        cleanup.callback(stack.stop)
        broker = stack.start()
        run_id = uuid.uuid4().hex[:8]
        source, enriched, dlq = (f"bench-{name}-{run_id}" for name in ("transcripts", "enriched", "dlq"))
        devstack.create_topics(broker, [source, enriched, dlq], PARTITIONS)
        reader = Reader(broker, source, enriched).start()
        cleanup.callback(reader.stop)
        sender = Sender(broker, source)
        cleanup.callback(sender.close)
        port = devstack.free_port()
        consumer = consumer_process(
            {
                "KAFKA_BOOTSTRAP_SERVERS": broker,
                "NLP_INPUT_TOPIC": source,
                "NLP_OUTPUT_TOPIC": enriched,
                "NLP_DLQ_TOPIC": dlq,
                "NLP_GROUP_ID": f"bench-nlp-{run_id}",
                "NLP_METRICS_PORT": str(port),
                "SENTIMENT_MODEL": str(model),
                "NLP_LOG_LEVEL": "WARNING",
            },
            workdir / "nlp_consumer.log",
            port,
        )
        cleanup.callback(consumer.stop)
        backlog_mix = CallMix(calls, concurrent_calls(20), prefix="backlog-")
        backlog = []
        for _ in range(size.backlog):
            event = backlog_mix.next_event()
            sender.send(event)
            backlog.append(event.event_id)
        sender.flush()
        logger.info("backlog events=%d; starting nlp_consumer", size.backlog)
        started = time.perf_counter()
        consumer.start(READY_TIMEOUT_S)
        ready_s = time.perf_counter() - started
        if not reader.wait_for(enriched, backlog, max(READY_TIMEOUT_S, size.backlog)):
            raise TimeoutError(f"only {reader.count(enriched, backlog)} of the backlog came out enriched")
        batches = consumer_batches(reader.snapshot(enriched), backlog)
        through = consumer_throughput(reader.snapshot(enriched), batches)
        runs = [paced_run(sender, reader, rate, size, calls) for rate in size.rates]
        samples = consumer_metrics(port)
    logger.info("consumer stopped; running the bare pipeline on the same batches")
    bare = bare_throughput(model, sender.documents, batches)
    settings = {
        "rates_per_s": list(size.rates),
        "duration_s": size.duration_s,
        "backlog_events": size.backlog,
        "partitions": PARTITIONS,
        "consumer_batch_size": 32,
        "consumer_batch_ms": 500,
        "broker": "Apache Kafka (started here)" if bootstrap is None else bootstrap,
        "model": model.name,
    }
    details = {
        "model_path": str(model),
        "model_source": model_source,
        "consumer_ready_s": ready_s,
        "throughput": {
            "consumer_events_per_s": through,
            "bare_events_per_s": bare,
            "batches": len(batches),
            "mean_batch_events": size.backlog / len(batches),
        },
        "paced": [run.summary() for run in runs],
        "consumer_metrics": consumer_summary(samples),
        "load_average_1min": os.getloadavg()[0],
    }
    return settings, details


def consumer_summary(samples: Mapping[str, float]) -> dict[str, float | None]:
    """Where the consumer's time went, from its own histograms (whole run)."""
    batch_s, enrich_s = samples.get("nlp_batch_seconds_sum"), samples.get("nlp_enrich_seconds_sum")
    batches = samples.get("nlp_batch_seconds_count")
    return {
        "batches": batches,
        "batch_seconds_sum": batch_s,
        "enrich_seconds_sum": enrich_s,
        "enrich_share": enrich_s / batch_s if batch_s and enrich_s is not None else None,
        "mean_kafka_ms_per_batch": (batch_s - enrich_s) / batches * 1000
        if batch_s is not None and enrich_s is not None and batches
        else None,
    }


def figures_of(details: Mapping[str, Any]) -> list[Figure]:
    through = details["throughput"]
    ratio_ok = (
        through["consumer_events_per_s"] / through["bare_events_per_s"] >= TARGET_RATIO
        if through["consumer_events_per_s"] is not None
        else None
    )
    figures = [
        figure(
            "Consumer throughput",
            "events/s",
            through["consumer_events_per_s"],
            through["bare_events_per_s"],
            "bare pipeline, same batches",
            better="higher",
            target=f"ratio >= {TARGET_RATIO}",
            met=ratio_ok,
        )
    ]
    for run in details["paced"]:
        rate = f"{run['rate_per_s']:g}/s"
        bound = "" if run["complete"] else " (lower bound: not all delivered)"
        for q in ("p50", "p99"):
            figures.append(
                figure(
                    f"Final → enriched {q} at {rate}{bound}",
                    "ms",
                    run[f"enriched_{q}_ms"],
                    run[f"hop_{q}_ms"],
                    "broker hop alone",
                )
            )
    return figures


def notes(details: Mapping[str, Any]) -> list[str]:
    """The run's own notes; the method is in ``bench/METHOD.md``."""
    through, summary = details["throughput"], details["consumer_metrics"]
    lines = [f"- {through['batches']} batches, {through['mean_batch_events']:.1f} events each on average."]
    lines += [
        f"- {r['rate_per_s']:g} finals/s: {r['delivered']} of {r['sent']} delivered, "
        f"max {r['enriched_max_ms']:.0f} ms."
        for r in details["paced"]
    ]
    if summary.get("enrich_share") is not None:
        lines.append(
            f"- The consumer spent {summary['enrich_share'] * 100:.0f} % of its batch time in the model; "
            f"Kafka (produce, flush, commit) took {summary['mean_kafka_ms_per_batch']:.0f} ms per batch."
        )
    return [*lines, f"- Model: {details['model_path']} (found by {details['model_source']})."]


def report(
    settings: Mapping[str, Any],
    details: Mapping[str, Any],
    quick: bool,
    machine: Mapping[str, Any] | None = None,
) -> Result:
    title = "Kafka path: final → enriched"
    return result(
        "kafka_path", title, quick, settings, figures_of(details), details, (), notes(details), machine
    )


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser("kafka_path", __doc__)
    cli.add_argument("--bootstrap", help="use this Kafka instead of starting a broker here")
    cli.add_argument("--rates", type=float, nargs="+", help="finals per second (default 20 100)")
    cli.add_argument("--duration-s", type=float, help="seconds of production per rate")
    args = cli.parse_args(argv)
    start_logging()
    base = QUICK if args.quick else FULL
    size = Size(
        tuple(args.rates or base.rates),
        args.duration_s or base.duration_s,
        base.backlog,
        base.drain_timeout_s,
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        settings, details = measure(size, args.bootstrap, Path(tmp))
    return publish(report(settings, details, args.quick, machine_info(load_before)), args.out)


if __name__ == "__main__":
    sys.exit(main())
