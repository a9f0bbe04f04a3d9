"""Session churn: N real-time streams of short sessions against the same N of long sessions.

``python -m bench.churn`` starts the decoder with the warm recognizer pool at its defaults and with
the pool off, for Vosk (WebSocket and HTTP v1) and Whisper (WebSocket), and sets short sessions back
to back beside one long session per stream; how it measures is in ``bench/METHOD.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results import Column, Figure, Option, Result, column_table, figure, latency_summary, main, result
from bench.speech import slices, speech_for
from devtools.clients import CHUNK_MS, RATE_HZ, CallersRun, HttpSession, Session, VoskStream, run_callers
from devtools.processes import DecoderServer, start_decoder

logger = logging.getLogger(__name__)

MODELS = {"vosk": "ko", "whisper": "tiny.en"}
POOL_OFF = {"pool_max_idle": "0", "pool_warm": "0"}
QUICK_POOL = {"pool_warm": "0"}  # quick: no recognizer warmed at start (half of a decoder's start-up)
PROTOCOLS = {"vosk": ("ws", "http"), "whisper": ("ws",)}
QUICK_PROTOCOLS = {"vosk": ("ws",)}  # quick: one engine, one protocol
THROUGHPUT_TARGET = 0.8  # short-session audio s per CPU s over long-session
FIRST_CHUNK_TARGET_MS = 200.0
FIRST_SECOND_CHUNKS = 1000 // CHUNK_MS
# The pool replaces a recognizer once it has decoded DECODER_POOL_MAX_AUDIO_S (120 s by default) of
# audio, which would land on whichever sessions come next; the runs here stay below this instead.
NO_RECYCLE_S = 3600.0


@dataclass(frozen=True, slots=True)
class Sizes:
    streams: int
    sessions: int  # per stream, short sessions
    short_s: float
    long_s: float


DEFAULT_SIZES = Sizes(streams=4, sessions=8, short_s=2.0, long_s=60.0)
QUICK_SIZES = Sizes(streams=1, sessions=1, short_s=0.6, long_s=1.2)


@contextlib.contextmanager
def served(
    engine: str, settings: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Iterator[DecoderServer]:
    """A ready decoder for ``engine`` with ``DECODER_<KEY>`` ``settings`` (and raw ``env``), stopped after."""
    with tempfile.TemporaryDirectory(prefix="bench-decoder-") as logs:
        defaults = {"engine": engine, "model": MODELS[engine], "max_sessions": "256"}
        with start_decoder(Path(logs), env, **(defaults | dict(settings))) as server:
            yield server


def pool_stats(server: DecoderServer) -> dict[str, float]:
    stats = {}
    for name, value in server.metrics("decoder_pool_").items():
        if name.startswith(("decoder_pool_recognizers{", "decoder_pool_acquired{")):
            metric, label = name.split("{")[0].removeprefix("decoder_pool_"), name.split('"')[1]
            stats[f"{metric}_{label}"] = value
    return stats


def sessions_of(server: DecoderServer, protocol: str) -> Callable[[], Session]:
    if protocol == "ws":
        return lambda: VoskStream(f"{server.ws_url}/v1/stream")
    return lambda: HttpSession(server.url, {"sample_rate": RATE_HZ}, delete=True)


def run_part(
    server: DecoderServer, protocol: str, work: Sequence[bytes], streams: int, paced: bool = True
) -> tuple[CallersRun, float]:
    """``work`` over ``streams`` clients (stream ``i`` takes ``work[i::streams]``); the server's CPU s."""
    cpu = server.cpu_s()
    run = run_callers([work[i::streams] for i in range(streams)], sessions_of(server, protocol), paced)
    return run, server.cpu_s() - cpu


def measure(
    server: DecoderServer, parts: Sequence[tuple[CallersRun, float]], streams: int, **where: Any
) -> dict[str, Any]:
    """One figure from one or more measured rounds of the same kind of session."""
    timings = [t for run, _ in parts for t in run.timings]
    done = [t for t in timings if t.error is None]
    wall_s, cpu_s = sum(run.wall_s for run, _ in parts), sum(cpu for _, cpu in parts)
    audio_s = sum(t.audio_s for t in timings)
    logger.info("measured %s cpu_s=%.1f", " ".join(f"{k}={v}" for k, v in where.items()), cpu_s)
    return {
        **where,
        "streams": streams,
        "sessions": len(timings),
        "session_audio_s": timings[0].audio_s,
        "audio_s": audio_s,
        "wall_s": wall_s,
        "server_cpu_s": cpu_s,
        "audio_s_per_cpu_s": audio_s / cpu_s if cpu_s > 0 else 0.0,
        "stream_speed": audio_s / streams / wall_s,  # audio s per wall s of each stream (1.0: kept up)
        "behind_s_mean": sum(t.wall_s - t.audio_s for t in done) / max(1, len(done)),
        "reply": latency_summary([r for t in done for r in t.latencies_s]),  # every chunk: sent -> reply
        "first_chunk": latency_summary([t.first_reply_s for t in done]),  # open -> first chunk's reply
        "first_second": latency_summary([max(t.latencies_s[:FIRST_SECOND_CHUNKS]) for t in done]),
        "errors": len(timings) - len(done),
        "pool_stats": pool_stats(server),
    }


def measure_engine(engine: str, protocols: Sequence[str], sizes: Sizes, quick: bool) -> list[dict[str, Any]]:
    speech = speech_for(engine, max(sizes.long_s, sizes.short_s * sizes.sessions * sizes.streams))
    short = slices(speech, sizes.short_s, sizes.sessions * sizes.streams)
    long = slices(speech, sizes.long_s, sizes.streams)
    runs, streams = [], sizes.streams
    for pool in (True, False):
        pool_on = {"pool_max_audio_s": str(NO_RECYCLE_S)} | (QUICK_POOL if quick else {})
        with served(engine, pool_on if pool else POOL_OFF) as server:
            for protocol in protocols:
                where = {"engine": engine, "protocol": protocol, "pool": pool}
                run_part(server, protocol, short[:streams], streams, paced=False)  # warm-up
                if not pool:
                    parts = [run_part(server, protocol, short, streams)]
                    runs.append(measure(server, parts, streams, **where, kind="short"))
                    continue
                # short, long, short: a pooled recognizer's graph cache keeps warming for its first
                # minutes of audio, so whichever kind ran first would pay for that alone.
                half = sizes.sessions // 2 * streams
                before = [run_part(server, protocol, short[:half], streams)] if half else []
                long_part = run_part(server, protocol, long, streams)
                after = run_part(server, protocol, short[half:], streams)
                runs.append(measure(server, [*before, after], streams, **where, kind="short"))
                runs.append(measure(server, [long_part], streams, **where, kind="long"))
    return runs


FIRST_FIGURES = {
    "first_chunk": "first-chunk p95 (ms) of a new session, pool on",
    "first_second": "slowest reply in a new session's first second, p95 (ms), pool on",
}


def figures_of(runs: Sequence[Mapping[str, Any]]) -> list[Figure]:
    """Each short-session figure beside its in-run baseline: long sessions (throughput) or pool off."""
    found = {(r["engine"], r["protocol"], r["pool"], r["kind"]): r for r in runs}
    figures = []
    for (engine, protocol, pool, kind), run in found.items():
        if kind != "short":
            continue
        where, long = f", {engine}, {protocol}", found[(engine, protocol, True, "long")]
        long_label = f"{long['session_audio_s']:g} s sessions, pool on"
        sessions = f"{run['session_audio_s']:g} s sessions, {'pool on' if pool else 'pool off'}{where}"
        value, baseline = run["audio_s_per_cpu_s"], long["audio_s_per_cpu_s"]
        met = baseline > 0 and value / baseline >= THROUGHPUT_TARGET
        target = f"ratio >= {THROUGHPUT_TARGET}"
        name = f"audio s per CPU s, {sessions}"
        figures.append(figure(name, "", value, baseline, long_label, "higher", target, met))
        name = f"reply p95 (ms), {sessions}"
        figures.append(figure(name, "", run["reply"]["p95_ms"], long["reply"]["p95_ms"], long_label))
        if pool:
            off, target = found[(engine, protocol, False, "short")], f"< {FIRST_CHUNK_TARGET_MS:g} ms"
            for key, label in FIRST_FIGURES.items():
                p95, baseline = run[key]["p95_ms"], off[key]["p95_ms"]
                met = p95 < FIRST_CHUNK_TARGET_MS
                figures.append(figure(label + where, "", p95, baseline, "pool off", "lower", target, met))
    return figures


def slashed(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda r: f"{r[key]['p50_ms']:.0f} / {r[key]['p95_ms']:.0f} / {r[key]['max_ms']:.0f}"


COLUMNS: list[Column] = [
    ("Engine", lambda r: r["engine"]),
    ("Protocol", lambda r: r["protocol"]),
    ("Pool", lambda r: "on" if r["pool"] else "off"),
    ("Sessions", lambda r: f"{r['sessions']} x {r['session_audio_s']:g} s"),
    ("Server CPU (s)", lambda r: f"{r['server_cpu_s']:.1f}"),
    ("Audio s / CPU s", lambda r: f"{r['audio_s_per_cpu_s']:.2f}"),
    ("Stream speed", lambda r: f"{r['stream_speed']:.2f}"),
    ("Behind (s)", lambda r: f"{r['behind_s_mean']:.2f}"),
    ("Reply ms p50 / p95 / max", slashed("reply")),
    ("First chunk ms p50 / p95 / max", slashed("first_chunk")),
    ("Slowest in first second ms p50 / p95 / max", slashed("first_second")),
    ("Errors", lambda r: str(r["errors"])),
]


def run(args: argparse.Namespace) -> Result:
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    engines = QUICK_PROTOCOLS if args.quick else PROTOCOLS
    engines = {args.engine: PROTOCOLS[args.engine]} if args.engine else engines
    runs: list[dict[str, Any]] = []
    for engine, protocols in engines.items():
        runs += measure_engine(engine, protocols, sizes, args.quick)
    settings = {"chunk_ms": CHUNK_MS, **asdict(sizes), "no_recycle_s": NO_RECYCLE_S}
    details, tables = {"sizes": asdict(sizes), "runs": runs}, [column_table("Every run", COLUMNS, runs)]
    return result("churn", "Session churn", args.quick, settings, figures_of(runs), details, tables)


OPTIONS: list[Option] = [("--engine", {"choices": tuple(PROTOCOLS), "help": "measure only this engine"})]

if __name__ == "__main__":
    sys.exit(main("churn", __doc__, OPTIONS, run))
