"""Session churn: N real-time streams of short sessions against the same N of long sessions.

``python -m bench.churn`` starts the decoder (``python -m decoder_api serve``) once with the warm
recognizer pool at its defaults and once with the pool off, for Vosk (Korean ``ko``; WebSocket and
HTTP v1) and for Whisper (``tiny.en``; WebSocket). In each, ``--streams`` paced clients open
``--sessions`` short sessions back to back, and (pool on only: the pool acts only when a session
starts) one long session each. Throughput is audio seconds per server CPU second; also the reply
latency of every chunk and the first-chunk latency of each new session.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results import (
    Figure,
    Result,
    figure,
    latency_summary,
    machine_info,
    parser,
    publish,
    result,
    start_logging,
    table,
)
from bench.speech import slices, speech_for
from devtools.clients import CHUNK_MS, RATE_HZ, CallersRun, HttpSession, Session, VoskStream, run_callers
from devtools.processes import DecoderServer, start_decoder

logger = logging.getLogger(__name__)

MODELS = {"vosk": "ko", "whisper": "tiny.en"}
POOL_OFF = {"pool_max_idle": "0", "pool_warm": "0"}
PROTOCOLS = {"vosk": ("ws", "http"), "whisper": ("ws",)}
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
QUICK_ENGINES = ("vosk",)  # quick: one engine, both protocols
QUICK_SIZES = Sizes(streams=2, sessions=1, short_s=0.6, long_s=1.2)


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
    """The pool gauges of ``/metrics``: recognizers idle / in use, acquisitions by outcome."""
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
    return (
        where
        | {
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
    )


def measure_engine(engine: str, sizes: Sizes) -> list[dict[str, Any]]:
    speech = speech_for(engine, max(sizes.long_s, sizes.short_s * sizes.sessions * sizes.streams))
    short = slices(speech, sizes.short_s, sizes.sessions * sizes.streams)
    long = slices(speech, sizes.long_s, sizes.streams)
    runs = []
    for pool in (True, False):
        with served(engine, {"pool_max_audio_s": str(NO_RECYCLE_S)} if pool else POOL_OFF) as server:
            for protocol in PROTOCOLS[engine]:
                where = {"engine": engine, "protocol": protocol, "pool": pool}
                run_part(server, protocol, short[: sizes.streams], sizes.streams, paced=False)  # warm-up
                if not pool:
                    runs.append(
                        measure(
                            server,
                            [run_part(server, protocol, short, sizes.streams)],
                            sizes.streams,
                            **where,
                            kind="short",
                        )
                    )
                    continue
                # short, long, short: a pooled recognizer's graph cache keeps warming for its first
                # minutes of audio, so whichever kind ran first would pay for that alone.
                half = sizes.sessions // 2 * sizes.streams
                before = [run_part(server, protocol, short[:half], sizes.streams)] if half else []
                long_part = run_part(server, protocol, long, sizes.streams)
                after = run_part(server, protocol, short[half:], sizes.streams)
                runs.append(measure(server, [*before, after], sizes.streams, **where, kind="short"))
                runs.append(measure(server, [long_part], sizes.streams, **where, kind="long"))
    return runs


def figures_of(runs: Sequence[Mapping[str, Any]]) -> list[Figure]:
    """Each short-session figure beside its in-run baseline: long sessions (throughput) or pool off."""
    found = {(r["engine"], r["protocol"], r["pool"], r["kind"]): r for r in runs}
    figures = []
    for (engine, protocol, pool, kind), run in found.items():
        if kind != "short":
            continue
        where, long = f", {engine}, {protocol}", found[(engine, protocol, True, "long")]
        pool_label, long_label = (
            "pool on" if pool else "pool off",
            f"{long['session_audio_s']:g} s sessions, pool on",
        )
        value, baseline = run["audio_s_per_cpu_s"], long["audio_s_per_cpu_s"]
        name = f"audio s per CPU s, {run['session_audio_s']:g} s sessions, {pool_label}{where}"
        met = baseline > 0 and value / baseline >= THROUGHPUT_TARGET
        figures.append(
            figure(name, "", value, baseline, long_label, "higher", f"ratio >= {THROUGHPUT_TARGET}", met)
        )
        name = f"reply p95 (ms), {run['session_audio_s']:g} s sessions, {pool_label}{where}"
        figures.append(figure(name, "", run["reply"]["p95_ms"], long["reply"]["p95_ms"], long_label))
        if pool:
            off = found[(engine, protocol, False, "short")]
            for label, key in (
                ("first-chunk p95 (ms) of a new session, pool on", "first_chunk"),
                ("slowest reply in a new session's first second, p95 (ms), pool on", "first_second"),
            ):
                p95, target = run[key]["p95_ms"], f"< {FIRST_CHUNK_TARGET_MS:g} ms"
                figures.append(
                    figure(
                        label + where,
                        "",
                        p95,
                        off[key]["p95_ms"],
                        "pool off",
                        "lower",
                        target,
                        p95 < FIRST_CHUNK_TARGET_MS,
                    )
                )
    return figures


def slashed(summary: Mapping[str, float]) -> str:
    return f"{summary['p50_ms']:.0f} / {summary['p95_ms']:.0f} / {summary['max_ms']:.0f}"


def report(
    runs: Sequence[Mapping[str, Any]],
    sizes: Mapping[str, Any],
    quick: bool,
    machine: Mapping[str, Any] | None = None,
) -> Result:
    rows = [
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
    header = [
        "Engine",
        "Protocol",
        "Pool",
        "Sessions",
        "Server CPU (s)",
        "Audio s / CPU s",
        "Stream speed",
        "Behind (s)",
    ]
    header += [
        "Reply ms p50 / p95 / max",
        "First chunk ms p50 / p95 / max",
        "Slowest in first second ms p50 / p95 / max",
        "Errors",
    ]
    settings = {"chunk_ms": CHUNK_MS, **sizes, "no_recycle_s": NO_RECYCLE_S}
    details = {"sizes": dict(sizes), "runs": list(runs)}
    tables = [table("Every run", header, rows)]
    return result(
        "churn", "Session churn", quick, settings, figures_of(runs), details, tables, machine=machine
    )


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser("churn", __doc__)
    cli.add_argument("--engine", choices=tuple(PROTOCOLS), help="measure only this engine")
    cli.add_argument("--streams", type=int, help=f"parallel streams ({DEFAULT_SIZES.streams})")
    cli.add_argument("--sessions", type=int, help=f"short sessions per stream ({DEFAULT_SIZES.sessions})")
    cli.add_argument("--long-s", type=float, help=f"long session length ({DEFAULT_SIZES.long_s:g} s)")
    args = cli.parse_args(argv)
    start_logging()
    base = QUICK_SIZES if args.quick else DEFAULT_SIZES
    sizes = Sizes(
        args.streams or base.streams, args.sessions or base.sessions, base.short_s, args.long_s or base.long_s
    )
    load_before = machine_info()["load_average_1min"][0]
    runs = [
        run
        for engine in ([args.engine] if args.engine else QUICK_ENGINES if args.quick else PROTOCOLS)
        for run in measure_engine(engine, sizes)
    ]
    return publish(report(runs, asdict(sizes), args.quick, machine_info(load_before)), args.out)


if __name__ == "__main__":
    sys.exit(main())
