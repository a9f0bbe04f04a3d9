"""Session churn: N real-time streams of short sessions against the same N of long sessions.

``python -m bench.churn`` starts the decoder (``python -m decoder_api serve``) once with the warm
recognizer pool at its defaults and once with the pool off (``DECODER_POOL_MAX_IDLE=0``,
``DECODER_POOL_WARM=0``), for Vosk (Korean ``ko``; WebSocket ``/v1/stream`` and the HTTP API
``/v1/sessions``) and for Whisper (``tiny.en``; WebSocket). In each it runs:

* *short*: ``--streams`` clients, each opening ``--sessions`` sessions of ``--short-s`` seconds of
  speech back to back, chunks of 200 ms paced in real time;
* *long* (pool on only, since the pool acts only when a session starts): the same clients with
  one ``--long-s`` session each.

It measures the server's CPU time (``/proc/<pid>/stat`` of the gunicorn processes), so
throughput is audio seconds per server CPU second; the reply latency of every chunk; and the
first-chunk latency of each new session (from connecting / opening to the first chunk's reply).
Before measuring, each server runs one unmeasured round of ``--streams`` parallel sessions, so
its Python code paths (and, with the pool on, as many recognizers as there are streams) are warm.
With the pool on, half the short sessions run before the long ones and half after: a pooled
recognizer's decoding-graph cache keeps warming through its first minutes of audio, and the kind
measured first would otherwise pay for all of it.
It writes ``churn.md`` and ``churn.json`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from rich.console import Console

from bench.report import Machine, machine_info, markdown_table, rich_table, write_outputs
from bench.server import POOL_OFF, ServedDecoder, served
from bench.streams import (
    CHUNK_MS,
    LatencySummary,
    Protocol,
    SessionTiming,
    run_parallel,
    session_runner,
    slices,
    speech_for,
    summarize,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PROTOCOLS: dict[str, tuple[Protocol, ...]] = {"vosk": ("ws", "http"), "whisper": ("ws",)}
THROUGHPUT_TARGET = 0.8  # short-session audio s per CPU s over long-session
FIRST_CHUNK_TARGET_MS = 200.0
FIRST_SECOND_CHUNKS = 1000 // CHUNK_MS
# The pool replaces a recognizer once it has decoded DECODER_POOL_MAX_AUDIO_S (120 s by default) of
# audio. That costs one new recognizer per that much audio, whatever the sessions' length, and
# would land on whichever sessions happen to come next; the runs here stay below this instead.
NO_RECYCLE_S = 3600.0


@dataclass(frozen=True, slots=True)
class Sizes:
    streams: int
    sessions: int  # per stream, short sessions
    short_s: float
    long_s: float


DEFAULT_SIZES = Sizes(streams=4, sessions=8, short_s=2.0, long_s=60.0)
QUICK_SIZES = Sizes(streams=2, sessions=1, short_s=1.0, long_s=3.0)


class RunResult(TypedDict):
    engine: str
    protocol: str
    pool: bool
    kind: str  # "short" or "long"
    streams: int
    sessions: int
    session_audio_s: float
    audio_s: float
    wall_s: float
    server_cpu_s: float
    audio_s_per_cpu_s: float
    stream_speed: float  # audio seconds per wall second of each stream (1.0 = kept up with real time)
    behind_s_mean: float  # how much longer than its audio a session took, mean over sessions
    reply: LatencySummary  # every chunk: sent -> reply
    first_chunk: LatencySummary  # each session: connect / open -> first chunk's reply
    first_second: LatencySummary  # each session: its slowest reply in the first second of audio
    errors: int
    pool_stats: dict[str, float]


class Comparison(TypedDict):
    engine: str
    protocol: str
    figure: str
    value: float
    baseline_label: str
    baseline: float
    ratio: float
    target: str
    meets_target: bool


class ChurnReport(TypedDict):
    quick: bool
    chunk_ms: int
    sizes: dict[str, float]
    machine: Machine
    load_average_1min: tuple[float, float]
    runs: list[RunResult]
    comparisons: list[Comparison]


@dataclass(frozen=True, slots=True)
class Part:
    """One measured round: every session's timing, and the wall and server CPU seconds it took."""

    timings: list[SessionTiming]
    wall_s: float
    cpu_s: float


def run_part(decoder: ServedDecoder, protocol: Protocol, work: Sequence[bytes], streams: int) -> Part:
    """Run ``work`` over ``streams`` paced clients and measure the server meanwhile."""
    cpu_before, started = decoder.cpu_s(), time.perf_counter()
    timings = run_parallel(streams, work, lambda: session_runner(protocol, decoder.url, decoder.ws_url, True))
    return Part(timings, time.perf_counter() - started, decoder.cpu_s() - cpu_before)


def measure(
    decoder: ServedDecoder,
    protocol: Protocol,
    parts: Sequence[Part],
    streams: int,
    kind: str,
    engine: str,
    pool: bool,
) -> RunResult:
    """One figure from one or more measured rounds of the same kind of session."""
    timings = [t for part in parts for t in part.timings]
    wall_s, cpu_s = sum(p.wall_s for p in parts), sum(p.cpu_s for p in parts)
    audio_s = sum(t.audio_s for t in timings)
    logger.info(
        "measured engine=%s protocol=%s pool=%s kind=%s cpu_s=%.1f", engine, protocol, pool, kind, cpu_s
    )
    return RunResult(
        engine=engine,
        protocol=protocol,
        pool=pool,
        kind=kind,
        streams=streams,
        sessions=len(timings),
        session_audio_s=timings[0].audio_s,
        audio_s=audio_s,
        wall_s=wall_s,
        server_cpu_s=cpu_s,
        audio_s_per_cpu_s=audio_s / cpu_s if cpu_s > 0 else 0.0,
        stream_speed=audio_s / streams / wall_s,
        behind_s_mean=sum(t.wall_s - t.audio_s for t in timings) / len(timings),
        reply=summarize([r for t in timings for r in t.replies_s]),
        first_chunk=summarize([t.first_reply_s for t in timings]),
        first_second=summarize([max(t.replies_s[:FIRST_SECOND_CHUNKS]) for t in timings]),
        errors=sum(t.error is not None for t in timings),
        pool_stats=decoder.pool_stats(),
    )


def warm_up(
    decoder: ServedDecoder, protocol: Protocol, pieces: Sequence[bytes], streams: int
) -> list[SessionTiming]:
    return run_parallel(
        streams, pieces[:streams], lambda: session_runner(protocol, decoder.url, decoder.ws_url, False)
    )


def measure_engine(engine: str, sizes: Sizes) -> list[RunResult]:
    speech = speech_for(engine, max(sizes.long_s, sizes.short_s * sizes.sessions * sizes.streams))
    short = slices(speech, sizes.short_s, sizes.sessions * sizes.streams)
    long = slices(speech, sizes.long_s, sizes.streams)
    runs: list[RunResult] = []
    for pool in (True, False):
        settings = {"pool_max_audio_s": str(NO_RECYCLE_S)} if pool else POOL_OFF
        with served(engine, settings) as decoder:
            for protocol in PROTOCOLS[engine]:
                warm_up(decoder, protocol, short, sizes.streams)
                if not pool:
                    part = run_part(decoder, protocol, short, sizes.streams)
                    runs.append(measure(decoder, protocol, [part], sizes.streams, "short", engine, pool))
                    continue
                # short, long, short: a pooled recognizer's graph cache keeps warming for its first
                # minutes of audio, so whichever kind ran first would pay for that alone.
                half = sizes.sessions // 2 * sizes.streams
                before = run_part(decoder, protocol, short[:half], sizes.streams) if half else None
                long_part = run_part(decoder, protocol, long, sizes.streams)
                after = run_part(decoder, protocol, short[half:], sizes.streams)
                shorts = [part for part in (before, after) if part is not None]
                runs.append(measure(decoder, protocol, shorts, sizes.streams, "short", engine, pool))
                runs.append(measure(decoder, protocol, [long_part], sizes.streams, "long", engine, pool))
    return runs


def compare(runs: list[RunResult]) -> list[Comparison]:
    """Each short-session figure beside its in-run baseline: long sessions (throughput) or pool off."""
    found = {(r["engine"], r["protocol"], r["pool"], r["kind"]): r for r in runs}
    comparisons: list[Comparison] = []
    for (engine, protocol, pool, kind), run in found.items():
        if kind != "short":
            continue
        long = found[(engine, protocol, True, "long")]
        pool_label = "pool on" if pool else "pool off"
        throughput = run["audio_s_per_cpu_s"] / long["audio_s_per_cpu_s"]
        comparisons.append(
            Comparison(
                engine=engine,
                protocol=protocol,
                figure=f"audio s per CPU s, {run['session_audio_s']:g} s sessions, {pool_label}",
                value=run["audio_s_per_cpu_s"],
                baseline_label=f"{long['session_audio_s']:g} s sessions, pool on",
                baseline=long["audio_s_per_cpu_s"],
                ratio=throughput,
                target=f"ratio >= {THROUGHPUT_TARGET}",
                meets_target=throughput >= THROUGHPUT_TARGET,
            )
        )
        comparisons.append(
            Comparison(
                engine=engine,
                protocol=protocol,
                figure=f"reply p95 (ms), {run['session_audio_s']:g} s sessions, {pool_label}",
                value=run["reply"]["p95_ms"],
                baseline_label=f"{long['session_audio_s']:g} s sessions, pool on",
                baseline=long["reply"]["p95_ms"],
                ratio=ratio(run["reply"]["p95_ms"], long["reply"]["p95_ms"]),
                target="",
                meets_target=True,
            )
        )
        if pool:
            off = found[(engine, protocol, False, "short")]
            for label, measured, unpooled in (
                ("first-chunk p95 (ms) of a new session, pool on", run["first_chunk"], off["first_chunk"]),
                (
                    "slowest reply in a new session's first second, p95 (ms), pool on",
                    run["first_second"],
                    off["first_second"],
                ),
            ):
                p95, baseline = measured["p95_ms"], unpooled["p95_ms"]
                comparisons.append(
                    Comparison(
                        engine=engine,
                        protocol=protocol,
                        figure=label,
                        value=p95,
                        baseline_label="pool off",
                        baseline=baseline,
                        ratio=ratio(p95, baseline),
                        target=f"< {FIRST_CHUNK_TARGET_MS:g} ms",
                        meets_target=p95 < FIRST_CHUNK_TARGET_MS,
                    )
                )
    return comparisons


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else 0.0


def slashed(summary: LatencySummary) -> str:
    return f"{summary['p50_ms']:.0f} / {summary['p95_ms']:.0f} / {summary['max_ms']:.0f}"


def run_rows(runs: list[RunResult]) -> list[list[str]]:
    return [
        [
            r["engine"],
            r["protocol"],
            "on" if r["pool"] else "off",
            f"{r['sessions']} x {r['session_audio_s']:g} s",
            f"{r['server_cpu_s']:.1f}",
            f"{r['audio_s_per_cpu_s']:.2f}",
            f"{r['stream_speed']:.2f}",
            f"{r['behind_s_mean']:.2f}",
            slashed(r["reply"]),
            slashed(r["first_chunk"]),
            slashed(r["first_second"]),
            str(r["errors"]),
        ]
        for r in runs
    ]


RUN_HEADER = [
    "Engine",
    "Protocol",
    "Pool",
    "Sessions",
    "Server CPU (s)",
    "Audio s / CPU s",
    "Stream speed",
    "Behind (s)",
    "Reply ms p50 / p95 / max",
    "First chunk ms p50 / p95 / max",
    "Slowest in first second ms p50 / p95 / max",
    "Errors",
]
COMPARISON_HEADER = [
    "Engine",
    "Protocol",
    "Figure",
    "Value",
    "Baseline (same run)",
    "Baseline value",
    "Ratio",
    "Target",
]


def comparison_rows(comparisons: list[Comparison]) -> list[list[str]]:
    return [
        [
            c["engine"],
            c["protocol"],
            c["figure"],
            f"{c['value']:.2f}",
            c["baseline_label"],
            f"{c['baseline']:.2f}",
            f"{c['ratio']:.2f}",
            (c["target"] + (" ✓" if c["meets_target"] else " ✗")) if c["target"] else "",
        ]
        for c in comparisons
    ]


NOTES = (
    "- Audio s / CPU s: seconds of audio decoded per second of CPU time of the server processes "
    "(all threads, user + system, from `/proc/<pid>/stat`), so other work on the machine does not "
    "count. The target is short / long >= 0.8.",
    "- Stream speed: audio seconds each stream sent per wall second; 1.0 means the streams kept up "
    "with real time. Behind: how much longer than its audio a session took, from connecting to the "
    "reply to its end of stream.",
    "- Reply: every chunk, from sending it to its reply. First chunk: from connecting (WebSocket) or "
    "`POST /v1/sessions` (HTTP) to the first chunk's reply, what a new caller waits for. A Kaldi "
    "recognizer decodes nothing until it has enough frames for its network's context, so a fresh "
    "recognizer's cost lands on a later chunk: *slowest in first second* is each session's slowest "
    "reply among its first second of audio.",
    "- Pool off is `DECODER_POOL_MAX_IDLE=0` and `DECODER_POOL_WARM=0`: every session creates its "
    "own recognizer. Long runs are measured with the pool on only: the pool acts when a session "
    "starts, which a long session does once.",
    "- Each server first runs one unmeasured round of parallel sessions (one per stream). With the pool "
    "on, half the short sessions run before the long ones and half after, and the short figures cover "
    "both halves: a pooled recognizer's decoding-graph cache keeps warming through its first minutes of "
    "audio, so the kind measured first would otherwise pay for all of that warming (measured alone, the "
    "first protocol's short sessions cost over twice the server CPU of the same sessions run later).",
    f"- The pooled decoders run with `DECODER_POOL_MAX_AUDIO_S={NO_RECYCLE_S:g}` (default 120): the pool "
    "replaces a recognizer after that much audio, one new recognizer per 120 s of audio for short and "
    "long sessions alike, and within a run of a few minutes that replacement would land on whichever "
    "sessions came next. Its cost is the *pool off* first-second figures once per 120 s of a stream's "
    "audio.",
)


def render_markdown(report: ChurnReport) -> str:
    machine, sizes = report["machine"], report["sizes"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    load = "{:.2f} / {:.2f}".format(*report["load_average_1min"])
    lines = [
        "# Session churn" + (" (quick)" if report["quick"] else ""),
        "",
        f"Measured with `python -m bench.churn` on {machine['date']} against `python -m decoder_api serve`.",
        "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable), {machine['platform']}; "
        f"load average (1 min) before / after: {load}",
        f"- **Software:** Python {machine['python']}; {libraries}",
        f"- **Workload:** {sizes['streams']:g} parallel streams, {report['chunk_ms']} ms chunks "
        f"paced in real time; short: {sizes['sessions']:g} sessions of {sizes['short_s']:g} s per "
        f"stream, back to back; long: one {sizes['long_s']:g} s session per stream. Vosk hears "
        "espeak-ng Korean, Whisper LibriVox English.",
        "",
        "## Against the in-run baselines",
        "",
        *markdown_table(COMPARISON_HEADER, comparison_rows(report["comparisons"])),
        "",
        "## Every run",
        "",
        *markdown_table(RUN_HEADER, run_rows(report["runs"])),
        "",
        "## How to read it",
        "",
        *NOTES,
    ]
    return "\n".join(lines) + "\n"


def print_tables(report: ChurnReport, console: Console | None = None) -> None:
    console = console or Console()
    for title, header, rows in (
        (
            "Session churn against the in-run baselines",
            COMPARISON_HEADER,
            comparison_rows(report["comparisons"]),
        ),
        ("Session churn runs", RUN_HEADER, run_rows(report["runs"])),
    ):
        console.print(rich_table(title + (" (quick)" if report["quick"] else ""), header, rows))


def write_report(report: ChurnReport, out: Path) -> list[Path]:
    return write_outputs(out, "churn", render_markdown(report), report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=tuple(PROTOCOLS), help="measure only this engine")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    parser.add_argument("--streams", type=int, help=f"parallel streams ({DEFAULT_SIZES.streams})")
    parser.add_argument("--sessions", type=int, help=f"short sessions per stream ({DEFAULT_SIZES.sessions})")
    parser.add_argument("--long-s", type=float, help=f"long session length ({DEFAULT_SIZES.long_s:g} s)")
    return parser


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK_SIZES if args.quick else DEFAULT_SIZES
    return Sizes(
        streams=args.streams or base.streams,
        sessions=args.sessions or base.sessions,
        short_s=base.short_s,
        long_s=args.long_s or base.long_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    sizes = sizes_from(args)
    load_before = os_load()
    runs = [
        run
        for engine in ([args.engine] if args.engine else list(PROTOCOLS))
        for run in measure_engine(engine, sizes)
    ]
    report = ChurnReport(
        quick=args.quick,
        chunk_ms=CHUNK_MS,
        sizes={
            "streams": sizes.streams,
            "sessions": sizes.sessions,
            "short_s": sizes.short_s,
            "long_s": sizes.long_s,
        },
        machine=machine_info(),
        load_average_1min=(load_before, os_load()),
        runs=runs,
        comparisons=compare(runs),
    )
    for path in write_report(report, args.out):
        logger.info("wrote %s", path)
    print_tables(report)
    return 0


def os_load() -> float:
    return os.getloadavg()[0]


if __name__ == "__main__":
    sys.exit(main())
