"""``python -m devtools.demo``: the whole pipeline on this machine, end to end.

Starts the local broker and Redis, the decoder, the NLP consumer and the dashboard; streams a
sample call through the recorder in real time (live transcript in the terminal); prints every
final as it comes back from ``transcripts.enriched.v1`` with its sentiment and the words that
explain it; when the call has ended, prints the NLP consumer's call summary from
``calls.summary.v1`` (talk time, sentiment and the extractive summary per speaker), the dashboard
URL and a tally. With ``--keep`` everything stays up (for a browser) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from rich.console import Console

from devtools.devstack import DevStack, free_port
from devtools.evaluation import load_manifest
from devtools.processes import ROOT, DecoderServer, ServiceProcess, http_ready

ENRICHED_TOPIC = "transcripts.enriched.v1"
SUMMARY_TOPIC = "calls.summary.v1"
READY_TIMEOUT_S = 300.0
ENRICH_TIMEOUT_S = 120.0
SUMMARY_TIMEOUT_S = 60.0
SUMMARY_GRACE_S = 1.0
COLOURS = {"POSITIVE": "green", "NEGATIVE": "red", "NEUTRAL": "grey62"}

console = Console(highlight=False)


class DemoError(Exception):
    """A step of the demo failed; the message is one line for the user."""


@dataclass
class Pipeline:
    """The processes the demo started, stopped in reverse order."""

    workdir: Path
    env: dict[str, str]
    processes: list[ServiceProcess] = field(default_factory=list)

    def launch(self, *services: ServiceProcess) -> None:
        """Launch every service, then wait until each is ready (all start in parallel)."""
        self.processes.extend(service.launch() for service in services)
        for service in services:
            try:
                service.wait_ready(READY_TIMEOUT_S)
            except (RuntimeError, TimeoutError) as exc:
                raise DemoError(f"{service.name} did not start: {str(exc).splitlines()[0]}") from None
            self.check_alive()

    def check_alive(self) -> None:
        for process in self.processes:
            try:
                process.check_alive()
            except RuntimeError:
                last = process.tail(800).strip().splitlines()[-1:]
                raise DemoError(f"{process.name} exited: {last}") from None

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def expected_turns(call: Path) -> int:
    """How many turns the manifest lists for this call (0 when it is not in the manifest)."""
    entries = load_manifest(ROOT / "data" / "manifest.tsv")
    return sum(1 for e in entries if e.path.name == call.name and e.turn is not None)


class EnrichedWatcher:
    """Reads the enriched and summary topics; prints this demo caller's finals as they arrive and
    keeps its call's summary."""

    def __init__(self, bootstrap: str, user_id: str) -> None:
        self.user_id = user_id
        self.events: list[dict[str, Any]] = []
        self.call_summary: dict[str, Any] | None = None
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"demo-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([ENRICHED_TOPIC, SUMMARY_TOPIC])
        self._thread = threading.Thread(target=self._run, name="enriched", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.5)
            if message is None or message.error():
                continue
            with contextlib.suppress(ValueError, TypeError):
                self._handle(message.topic() == SUMMARY_TOPIC, json.loads(message.value() or b""))

    def _handle(self, is_summary: bool, event: dict[str, Any]) -> None:
        if event.get("user_id") != self.user_id or event.get("event_id") in self._seen:
            return
        self._seen.add(str(event["event_id"]))
        if is_summary:
            self.call_summary = event
            return
        self.events.append(event)
        print_enriched(event)


def print_enriched(event: dict[str, Any]) -> None:
    sentiment = event.get("sentiment", {})
    label = str(sentiment.get("label", "?"))
    polarity = float(sentiment.get("polarity", 0.0))
    words = ", ".join(f"{w['word']} ({w['weight']:+.2f})" for w in event.get("explanation", [])[:4])
    colour = COLOURS.get(label, "white")
    console.print(
        f"  [{colour}]● {label:<8} {polarity:+.2f}[/{colour}]  {event.get('text', '')}"
        + (f"  [dim]← {words}[/dim]" if words else "")
    )


def start_pipeline(workdir: Path, stack_env: dict[str, str], engine: str) -> tuple[Pipeline, str, str]:
    decoder_port, dashboard_port = free_port(), int(os.environ.get("DASHBOARD_PORT", "8000"))
    env = {
        **stack_env,
        "DECODER_ENGINE": engine,
        "DECODER_OUTBOX_DIR": str(workdir / "outbox"),
        "DASHBOARD_PORT": str(dashboard_port),
    }
    pipeline = Pipeline(workdir, env)
    decoder_url, dashboard_url = f"http://127.0.0.1:{decoder_port}", f"http://127.0.0.1:{dashboard_port}/"
    pipeline.launch(
        DecoderServer(decoder_port, env, workdir / "decoder.log"),
        ServiceProcess("nlp-consumer", ["-m", "nlp_consumer"], env, workdir / "nlp-consumer.log"),
        ServiceProcess(
            "dashboard",
            ["-m", "nlp_consumer", "--dashboard"],
            env,
            workdir / "dashboard.log",
            http_ready(dashboard_url),
        ),
    )
    return pipeline, decoder_url, dashboard_url


def stream_call(decoder_url: str, call: Path, user_id: str) -> None:
    argv = [sys.executable, "-m", "recorder", "-H", decoder_url, "-f", str(call), "--realtime"]
    # The decoder publishes the finals; given the Kafka variables the recorder would publish a copy.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    result = subprocess.run([*argv, "--user-id", user_id], cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        raise DemoError(f"the recorder failed with status {result.returncode}")


def wait_enriched(watcher: EnrichedWatcher, expected: int, pipeline: Pipeline) -> None:
    """Until every turn came back enriched, or the call's summary came: the consumer writes it after
    the call's last final, so a call the manifest does not know (``expected`` 0) ends there too.
    An enriched event read a moment after the summary (another topic) still gets ``SUMMARY_GRACE_S``."""
    deadline = time.monotonic() + ENRICH_TIMEOUT_S
    summarised_at = math.inf
    while time.monotonic() < deadline and not (expected and len(watcher.events) >= expected):
        if watcher.call_summary is not None:
            summarised_at = min(summarised_at, time.monotonic())
            if time.monotonic() - summarised_at >= SUMMARY_GRACE_S:
                return
        pipeline.check_alive()
        time.sleep(0.2)


def wait_summary(watcher: EnrichedWatcher, pipeline: Pipeline) -> None:
    deadline = time.monotonic() + SUMMARY_TIMEOUT_S
    while watcher.call_summary is None and time.monotonic() < deadline:
        pipeline.check_alive()
        time.sleep(0.2)


def print_call_summary(event: dict[str, Any] | None) -> None:
    console.rule("call summary (calls.summary.v1)")
    if event is None:
        console.print(f"no call summary within {SUMMARY_TIMEOUT_S:.0f} s")
        return
    console.print(
        f"{event['duration_ms'] / 1000:.1f} s, {event['finals']} turns, {event['silence_share']:.0%} silence"
    )
    for speaker in event["speakers"]:
        overall = speaker["sentiment"]["overall"] or {}
        label = str(overall.get("label", "-"))
        colour = COLOURS.get(label, "white")
        console.print(
            f"  {speaker['speaker']}: {speaker['turns']} turns, {speaker['talk_ms'] / 1000:.1f} s talking, "
            f"[{colour}]{label.lower()} {overall.get('polarity', 0.0):+.2f}[/{colour}] overall"
        )
        moment = speaker.get("most_negative")
        if moment:
            console.print(f"    most negative: [red]{moment['text']}[/red]")
    console.print("  extractive summary (the call's most central sentences):")
    for sentence in event["summary"]["sentences"]:
        console.print(f"    • {sentence['text']}")


def summary(watcher: EnrichedWatcher, expected: int, started: float, dashboard_url: str) -> None:
    labels = [str(e.get("sentiment", {}).get("label", "?")) for e in watcher.events]
    counts = ", ".join(f"{labels.count(x)} {x.lower()}" for x in ("POSITIVE", "NEUTRAL", "NEGATIVE"))
    console.rule("tally")
    elapsed_s = time.monotonic() - started
    console.print(
        f"{len(watcher.events)} of {expected or '?'} turns enriched ({counts}) in {elapsed_s:.0f} s"
    )
    console.print(f"dashboard: {dashboard_url}")


@contextlib.contextmanager
def local_services(workdir: Path) -> Iterator[dict[str, str]]:
    stack = DevStack(workdir / "services")
    try:
        yield stack.up()
    finally:
        stack.down()


def run(call: Path, engine: str, keep: bool, workdir: Path) -> int:
    started = time.monotonic()
    console.rule("pipeline")
    with local_services(workdir) as stack_env:
        console.print(f"broker {stack_env['KAFKA_BOOTSTRAP_SERVERS']}, redis {stack_env['REDIS_URL']}")
        subprocess.run([sys.executable, "-m", "nlp_consumer.train"], cwd=ROOT, check=True)
        pipeline, decoder_url, dashboard_url = start_pipeline(workdir, stack_env, engine)
        watcher = EnrichedWatcher(stack_env["KAFKA_BOOTSTRAP_SERVERS"], f"demo-{uuid.uuid4().hex[:6]}")
        try:
            console.print(f"decoder {decoder_url}   dashboard [bold]{dashboard_url}[/bold]")
            console.rule(f"live: {call.name}")
            stream_call(decoder_url, call, watcher.user_id)
            console.rule("enriched finals (transcripts.enriched.v1)")
            wait_enriched(watcher, expected_turns(call), pipeline)
            wait_summary(watcher, pipeline)
            print_call_summary(watcher.call_summary)
            summary(watcher, expected_turns(call), started, dashboard_url)
            if keep:
                console.print("everything keeps running; Ctrl-C stops it")
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
        finally:
            watcher.close()
            pipeline.stop()
    return 0 if watcher.events else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("--call", type=Path, default=ROOT / "data" / "call0.wav", help="the audio to stream")
    parser.add_argument("--engine", default="whisper", choices=("whisper", "vosk"), help="decoder engine")
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".devstack" / "demo", help="logs and state")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args.call, args.engine, args.keep, args.workdir)
    except (DemoError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc} (logs in {args.workdir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
