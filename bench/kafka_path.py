"""Kafka path: final produced → enriched event visible downstream, and the consumer's throughput.

``python -m bench.kafka_path`` starts an Apache Kafka broker in KRaft mode (or uses ``--bootstrap``),
fresh topics, a downstream reader and a real ``python -m nlp_consumer`` with the trained sentiment
model; how it measures is in ``bench/METHOD.md``. Events follow ``transcript.v1`` and carry the turns
of the sample calls of ``data/``, many calls interleaved, each keyed by its session id.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
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
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.results import Figure, Option, Result, figure, main, percentile, result
from contract.events import TranscriptEvent, rfc3339_utc
from contract.kafka import KafkaClientSettings
from decoder_api.delivery.publisher import KafkaConfig
from devtools import devstack
from devtools.evaluation import DEFAULT_MANIFEST, ManifestEntry, load_manifest
from devtools.processes import ServiceProcess, scrape_metrics
from nlp_consumer.config import ConsumerSettings

logger = logging.getLogger(__name__)

PARTITIONS = devstack.PARTITIONS
FINAL_EVERY_S = 4.5  # a caller's finals come about this far apart (the sample calls' turns)
READY_TIMEOUT_S = 180.0
TARGET_RATIO = 0.8
P99_TARGET_MS = {20.0: 300.0, 100.0: 500.0}  # final → enriched p99 at these rates (100/s: two consumers)


@dataclass(frozen=True)
class Size:
    rates: tuple[float, ...]
    duration_s: float
    backlog: int  # at least two of the consumer's batches (32 events)
    drain_timeout_s: float
    two_consumers_from: float = math.inf  # rates from this one on: a second consumer in the group


FULL = Size(rates=(20.0, 100.0), duration_s=20.0, backlog=320, drain_timeout_s=60.0, two_consumers_from=100)
QUICK = Size(rates=(20.0,), duration_s=1.0, backlog=40, drain_timeout_s=30.0, two_consumers_from=20)


def sample_calls() -> list[list[ManifestEntry]]:
    calls: dict[str, list[ManifestEntry]] = {}
    for entry in load_manifest(DEFAULT_MANIFEST):
        if entry.turn is not None and entry.path.stem.startswith("call"):
            calls.setdefault(entry.path.stem, []).append(entry)
    if not calls:
        raise RuntimeError(f"{DEFAULT_MANIFEST} has no call turns")
    return list(calls.values())


def call_finals(
    calls: list[list[ManifestEntry]], rate_per_s: float, prefix: str
) -> Iterator[TranscriptEvent]:
    """Finals of enough interleaved calls for ``rate_per_s``; each turn ends with its call's ordinal."""
    started = itertools.count()

    def new_call() -> tuple[str, Iterator[tuple[int, ManifestEntry, str]]]:
        n = next(started)
        turns = ((u, turn, f"{turn.transcript} ({n})") for u, turn in enumerate(calls[n % len(calls)]))
        return f"{prefix}{secrets.token_urlsafe(12)}", turns

    in_progress = [new_call() for _ in range(max(1, math.ceil(rate_per_s * FINAL_EVERY_S)))]
    for slot in itertools.cycle(range(len(in_progress))):
        session_id, turns = in_progress[slot]
        if (step := next(turns, None)) is None:
            in_progress[slot] = session_id, turns = new_call()
            step = next(turns)
        utterance, turn, text = step
        start_ms = round(turn.start_s * 1000)
        yield TranscriptEvent(
            session_id=session_id,
            user_id=f"caller-{session_id[-6:]}",
            utterance=utterance,
            text=text,
            start_ms=start_ms,
            end_ms=start_ms + round(turn.seconds * 1000),
            engine="whisper",
            model="tiny.en",
            language="en",
            produced_at=rfc3339_utc(),
        )


class Sender:
    """The decoder's finals producer (idempotent, acks=all, lz4); remembers when each event left."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        config = KafkaConfig(KafkaClientSettings(bootstrap), topic, client_id="bench").producer_config()
        self._producer: Producer | None = Producer(config | {"log_level": 0})
        self.sent_at: dict[str, float] = {}  # event_id → perf_counter at produce()
        self.documents: dict[str, dict[str, Any]] = {}

    def send(self, finals: Iterator[TranscriptEvent], count: int, rate_per_s: float = math.inf) -> list[str]:
        """``count`` events of ``finals``, ``rate_per_s`` a second on an absolute schedule; flushed."""
        assert self._producer is not None, "the sender is closed"
        ids, start = [], time.perf_counter()
        for i in range(count):
            if (delay := start + i / rate_per_s - time.perf_counter()) > 0:
                time.sleep(delay)  # pacing, not waiting for a condition
            event = next(finals)
            self.documents[event.event_id] = event.to_dict()
            self.sent_at[event.event_id] = time.perf_counter()
            self._producer.produce(self.topic, event.to_json(), event.key, headers=list(event.headers))
            self._producer.poll(0)
            ids.append(event.event_id)
        if remaining := self._producer.flush(30):
            raise RuntimeError(f"{remaining} events not acknowledged by the broker")
        return ids

    def close(self) -> None:
        self._producer = None


@dataclass
class Arrival:
    at: float  # perf_counter when the reader got it
    enriched_at: str = ""


class Reader:
    """A downstream reader of the input and output topics on its own thread: each event's first arrival."""

    def __init__(self, bootstrap: str, input_topic: str, output_topic: str) -> None:
        self.input_topic, self.output_topic = input_topic, output_topic
        self.arrivals: dict[str, dict[str, Arrival]] = {input_topic: {}, output_topic: {}}  # topic → id →
        self._assigned, self._stop = threading.Event(), threading.Event()
        self._arrived = threading.Condition()  # notified on each arrival
        group = {"group.id": f"bench-reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
        settings = {"enable.auto.commit": False, "log_level": 0}
        consumer = Consumer({"bootstrap.servers": bootstrap, **group, **settings})

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            if {p.topic for p in partitions} >= {input_topic, output_topic}:
                self._assigned.set()

        consumer.subscribe([input_topic, output_topic], on_assign=on_assign)
        self._thread = threading.Thread(target=self._run, args=(consumer,), name="reader", daemon=True)
        self._thread.start()
        if not self._assigned.wait(READY_TIMEOUT_S):
            raise TimeoutError("the downstream reader was never assigned its partitions")

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                if (message := consumer.poll(0.1)) is not None and message.error() is None:
                    now = time.perf_counter()
                    with contextlib.suppress(ValueError), self._arrived:  # not JSON: no event of this run
                        document = json.loads(message.value() or b"")
                        arrival = Arrival(now, str(document.get("enriched_at", "")))
                        self.arrivals[message.topic() or ""].setdefault(document["event_id"], arrival)
                        self._arrived.notify_all()
        finally:
            consumer.close()

    def arrived(self, topic: str, ids: Sequence[str], timeout_s: float) -> dict[str, Arrival]:
        """The arrivals on ``topic`` (a copy) once all of ``ids`` are among them or ``timeout_s`` passed."""
        with self._arrived:
            self._arrived.wait_for(lambda: all(i in self.arrivals[topic] for i in ids), timeout_s)
            return dict(self.arrivals[topic])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def consumer_metrics(port: int) -> dict[str, float]:
    with contextlib.suppress(requests.RequestException):
        return scrape_metrics(f"http://127.0.0.1:{port}/metrics", "nlp_")
    return {}


def sentiment_model(env: Mapping[str, str]) -> tuple[Path, str]:
    """The model the consumer uses by default (``SENTIMENT_MODEL``, else ``default_model_dir``), and which."""
    from nlp_consumer.train import default_cache_dir, default_model_dir

    if env.get("SENTIMENT_MODEL"):
        return Path(env["SENTIMENT_MODEL"]), "SENTIMENT_MODEL"
    return default_model_dir(default_cache_dir(env)), "default_model_dir"


def batches_of(arrivals: Mapping[str, Arrival], ids: Sequence[str]) -> tuple[list[list[str]], float | None]:
    """The consumer's batches of ``ids`` (by ``enriched_at``), events/s from the first batch to the last."""
    groups: dict[float, list[str]] = {}
    for event_id in ids:
        enriched_s = datetime.datetime.fromisoformat(arrivals[event_id].enriched_at).timestamp()
        groups.setdefault(enriched_s, []).append(event_id)
    batches, span_s = [groups[s] for s in sorted(groups)], max(groups) - min(groups)
    return batches, sum(len(b) for b in batches[1:]) / span_s if span_s > 0 else None


def served_enricher(model: Path, env: Mapping[str, str]) -> Any:
    """``model`` in the ``Enricher`` the consumer builds with ``env``'s settings (default: int8 ONNX)."""
    from nlp_consumer.config import load_model_settings
    from nlp_consumer.enrich import load_enricher

    if "torch" not in sys.modules:  # as the consumer's entry point: idle OpenMP threads sleep, not spin
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return load_enricher(replace(load_model_settings(env), model=str(model)))


def bare_throughput(model: Path, documents: Mapping[str, dict[str, Any]], batches: list[list[str]]) -> float:
    """The same batches through the same ``Enricher`` in this process (the first one warms it up)."""
    enricher = served_enricher(model, os.environ)
    enricher.enrich([documents[i] for i in batches[0]])
    started = time.perf_counter()
    for batch in batches[1:]:
        enricher.enrich([documents[i] for i in batch])
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - started)


def paced_run(
    sender: Sender, reader: Reader, rate_per_s: float, size: Size, calls: list[list[ManifestEntry]]
) -> dict[str, Any]:
    """Finals at ``rate_per_s`` for the run's duration: produce → enriched, and the broker hop alone."""
    logger.info("producing rate_per_s=%g duration_s=%g", rate_per_s, size.duration_s)
    finals = call_finals(calls, rate_per_s, prefix=f"r{rate_per_s:g}-")
    ids = sender.send(finals, round(rate_per_s * size.duration_s), rate_per_s)
    enriched = reader.arrived(reader.output_topic, ids, size.drain_timeout_s)
    waited, sent, hop = time.perf_counter(), sender.sent_at, reader.arrived(reader.input_topic, (), 0)
    # undelivered events count with the time waited (a lower bound)
    enriched_ms = [((enriched[i].at if i in enriched else waited) - sent[i]) * 1000 for i in ids]
    hop_ms = [(hop[i].at - sent[i]) * 1000 for i in ids if i in hop]
    delivered = sum(1 for i in ids if i in enriched)
    run = {"rate_per_s": rate_per_s, "sent": len(ids), "delivered": delivered}
    run["complete"] = delivered == len(ids)
    run |= {f"enriched_p{q}_ms": percentile(enriched_ms, q) for q in (50, 99)}
    run["enriched_max_ms"] = max(enriched_ms)
    return run | {f"hop_p{q}_ms": percentile(hop_ms, q) for q in (50, 99)}


def measure(size: Size, bootstrap: str | None, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    model, model_source = sentiment_model(os.environ)
    calls = sample_calls()
    with contextlib.ExitStack() as cleanup:  # stopped in reverse: consumer, sender, reader, broker
        if bootstrap is None:
            broker = devstack.KafkaBroker(workdir / "kafka").start()
            cleanup.callback(broker.stop)
            broker.wait_ready()
        address = bootstrap or broker.bootstrap
        run_id = uuid.uuid4().hex[:8]
        source, enriched, dlq = (f"bench-{name}-{run_id}" for name in ("transcripts", "enriched", "dlq"))
        devstack.create_topics(address, [source, enriched, dlq], PARTITIONS)
        reader = Reader(address, source, enriched)
        cleanup.callback(reader.stop)
        sender = Sender(address, source)
        cleanup.callback(sender.close)
        env = {"KAFKA_BOOTSTRAP_SERVERS": address, "NLP_INPUT_TOPIC": source, "NLP_OUTPUT_TOPIC": enriched}
        env |= {"NLP_DLQ_TOPIC": dlq, "NLP_GROUP_ID": f"bench-nlp-{run_id}", "SENTIMENT_MODEL": str(model)}
        ports: list[int] = []

        def start_consumer() -> float:  # one more process in the group; seconds until it has partitions
            ports.append(port := devstack.free_port())
            has = lambda: consumer_metrics(port).get("nlp_assigned_partitions", 0) > 0  # noqa: E731
            name = f"nlp_consumer-{len(ports)}"
            more = {"NLP_METRICS_PORT": str(port), "NLP_LOG_LEVEL": "WARNING"}
            consumer = ServiceProcess(name, ["-m", "nlp_consumer"], env | more, workdir / f"{name}.log", has)
            cleanup.callback(consumer.stop)
            started = time.perf_counter()
            consumer.start(READY_TIMEOUT_S)
            while not balanced([consumer_metrics(p).get("nlp_assigned_partitions", 0) for p in ports]):
                if time.perf_counter() - started > READY_TIMEOUT_S:
                    raise TimeoutError("the consumer group did not settle")
                time.sleep(0.2)  # the others give up the partitions this one takes
            return time.perf_counter() - started

        backlog = sender.send(call_finals(calls, 20, prefix="backlog-"), size.backlog)
        logger.info("backlog events=%d; starting nlp_consumer", size.backlog)
        ready_s = start_consumer()
        arrivals = reader.arrived(enriched, backlog, max(READY_TIMEOUT_S, size.backlog))
        if (came := sum(1 for i in backlog if i in arrivals)) < len(backlog):
            raise TimeoutError(f"only {came} of the backlog came out enriched")
        batches, through = batches_of(arrivals, backlog)
        runs = []
        for rate in size.rates:
            if rate >= size.two_consumers_from and len(ports) == 1:
                start_consumer()
            runs.append(paced_run(sender, reader, rate, size, calls) | {"consumers": len(ports)})
        samples = consumer_metrics(ports[0])
    logger.info("consumer stopped; running the bare pipeline on the same batches")
    bare = bare_throughput(model, sender.documents, batches)
    settings = {"rates_per_s": [*size.rates], "duration_s": size.duration_s, "backlog_events": size.backlog}
    defaults = {f.name: f.default for f in fields(ConsumerSettings)}
    settings |= {"partitions": PARTITIONS, "consumer_batch_size": defaults["batch_size"]}
    settings["consumer_batch_ms"] = defaults["batch_ms"]
    settings["broker"] = "Apache Kafka (started here)" if bootstrap is None else bootstrap
    settings["model"] = model.name
    throughput = {"consumer_events_per_s": through, "bare_events_per_s": bare, "batches": len(batches)}
    throughput["mean_batch_events"] = size.backlog / len(batches)
    details = {"model_path": str(model), "model_source": model_source, "consumer_ready_s": ready_s}
    details |= {"throughput": throughput, "paced": runs, "consumer_metrics": consumer_summary(samples)}
    return settings, details | {"load_average_1min": os.getloadavg()[0]}


def balanced(assigned: Sequence[float]) -> bool:
    return all(n > 0 for n in assigned) and sum(assigned) == PARTITIONS


def consumer_summary(samples: Mapping[str, float]) -> dict[str, float | None]:
    batch_s, enrich_s = samples.get("nlp_batch_seconds_sum"), samples.get("nlp_enrich_seconds_sum")
    batches = samples.get("nlp_batch_seconds_count")
    found = {"batches": batches, "batch_seconds_sum": batch_s, "enrich_seconds_sum": enrich_s}
    if batch_s is None or enrich_s is None:
        return found | {"enrich_share": None, "mean_kafka_ms_per_batch": None}
    kafka_ms = (batch_s - enrich_s) / batches * 1000 if batches else None
    share = enrich_s / batch_s if batch_s else None
    return found | {"enrich_share": share, "mean_kafka_ms_per_batch": kafka_ms}


def figures_of(details: Mapping[str, Any]) -> list[Figure]:
    through = details["throughput"]
    consumer, bare = through["consumer_events_per_s"], through["bare_events_per_s"]
    met = None if consumer is None else consumer / bare >= TARGET_RATIO
    target, baseline = f"ratio >= {TARGET_RATIO}", "bare pipeline, same batches"
    figures = [figure("Consumer throughput", "events/s", consumer, bare, baseline, "higher", target, met)]
    for run in details["paced"]:
        bound = "" if run["complete"] else " (lower bound: not all delivered)"
        for q in ("p50", "p99"):
            two = " (2 consumers)" if run.get("consumers", 1) > 1 else ""
            name = f"Final → enriched {q} at {run['rate_per_s']:g}/s{two}{bound}"
            value, hop = run[f"enriched_{q}_ms"], run[f"hop_{q}_ms"]
            limit = P99_TARGET_MS.get(run["rate_per_s"]) if q == "p99" else None
            target, met = (f"< {limit:g} ms", value < limit) if limit else ("", None)
            figures.append(figure(name, "ms", value, hop, "broker hop alone", "lower", target, met))
    return figures


def notes(details: Mapping[str, Any]) -> list[str]:
    through, summary = details["throughput"], details["consumer_metrics"]
    lines = [f"- {through['batches']} batches, {through['mean_batch_events']:.1f} events each on average."]
    lines += [
        f"- {r['rate_per_s']:g} finals/s, {r.get('consumers', 1)} consumer(s) in the group: "
        f"{r['delivered']} of {r['sent']} delivered, "
        f"max {r['enriched_max_ms']:.0f} ms."
        for r in details["paced"]
    ]
    if summary.get("enrich_share") is not None:
        lines.append(
            f"- The consumer spent {summary['enrich_share'] * 100:.0f} % of its batch time in the model; "
            f"Kafka (produce, flush, commit) took {summary['mean_kafka_ms_per_batch']:.0f} ms per batch."
        )
    return [*lines, f"- Model: {details['model_path']} (found by {details['model_source']})."]


def run(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        settings, details = measure(QUICK if args.quick else FULL, args.bootstrap, Path(tmp))
    figures, title = figures_of(details), "Kafka path: final → enriched"
    return result("kafka_path", title, args.quick, settings, figures, details, notes=notes(details))


OPTIONS: list[Option] = [("--bootstrap", {"help": "use this Kafka instead of starting a broker here"})]

if __name__ == "__main__":
    sys.exit(main("kafka_path", __doc__, OPTIONS, run))
