"""Memory: RSS per live session, RSS after session churn, and what one Vosk recognizer holds.

``python -m bench.memory`` measures, against ``python -m decoder_api serve`` (the worker's VmRSS):

* *warm baseline*: after two unmeasured rounds of ``--parallel`` sessions;
* *idle baseline*: then once the pool's TTL (``IDLE_TTL_S``) freed every idle recognizer;
* *churn*: ``--churn`` short sessions (``CHURN_AUDIO_S`` of speech each, WebSocket, sent as fast as
  the server answers, ``--parallel`` at a time) opened, streamed and closed; RSS afterwards (the
  pool holding its recognizers) over the warm baseline, and its second half over its first;
* *live sessions*: ``--live`` sessions opened together, each streamed ``LIVE_AUDIO_S`` of speech
  and held open; (RSS - RSS after the churn) / K; then RSS after they all closed;
* *idle after*: RSS once the TTL freed every idle recognizer again, over the idle baseline
  (target: within 5 %: what the sessions left behind);

for Vosk with the pool at its defaults and with the pool off, and for Whisper (smaller counts).
Then the bare engine, each variant in a fresh process (``--bare VARIANT``): one process holding
``--recognizers`` KaldiRecognizers (created and fed on threads, as the server's are), RSS per
recognizer, CPU of a fresh vs a reused recognizer, RSS after they are freed, after a second round,
and after ``malloc_trim(0)``; variants lower the decoder's search limits through a model overlay
(``max-active``, ``beam``, ``lattice-beam``) or run with ``MALLOC_ARENA_MAX=2``.
It writes ``memory.md``, ``memory.json`` and ``memory-report.md`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import websocket
from rich.console import Console

from bench.figures import Figure, figure
from bench.report import Machine, machine_info, markdown_table, rich_table, write_outputs
from bench.server import POOL_OFF, ServedDecoder, served
from bench.streams import (
    CHUNK_MS,
    RATE_HZ,
    TIMEOUT_S,
    korean_speech,
    run_parallel,
    session_runner,
    slices,
    speech_for,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
CHURN_AUDIO_S = 0.6
LIVE_AUDIO_S = 2.0
BARE_AUDIO_S = 4.0
RETURN_TARGET = 1.05  # RSS after churn / warm baseline
SETTLE_S = 0.5  # after the last session closed, before reading RSS
# The served decoders free a recognizer idle for this long (the default is 10 minutes), so the
# benchmark can read RSS with no recognizer held, before and after the churn.
IDLE_TTL_S = 3.0
IDLE_TIMEOUT_S = 60.0
CURVE_POINTS = 10  # RSS read after every tenth of the churn
# name -> (model.conf overrides, extra environment)
BARE_VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "default": ({}, {}),
    "MALLOC_ARENA_MAX=2": ({}, {"MALLOC_ARENA_MAX": "2"}),
    "max-active=1000": ({"max-active": "1000"}, {}),
    "beam=7": ({"beam": "7.0"}, {}),
    "lattice-beam=1": ({"lattice-beam": "1.0"}, {}),
}
QUICK_VARIANTS = ("default", "max-active=1000")


@dataclass(frozen=True, slots=True)
class Sizes:
    parallel: int
    churn: int  # Vosk, pool on
    churn_pool_off: int
    live: int
    whisper_churn: int
    whisper_live: int
    recognizers: int  # bare engine


DEFAULT_SIZES = Sizes(
    parallel=4, churn=2000, churn_pool_off=60, live=12, whisper_churn=100, whisper_live=6, recognizers=4
)
QUICK_SIZES = Sizes(
    parallel=2, churn=12, churn_pool_off=4, live=3, whisper_churn=4, whisper_live=2, recognizers=2
)


class ServerResult(TypedDict):
    engine: str
    pool: bool
    rss_loaded_mib: float  # ready, before any session
    rss_warm_mib: float  # warm baseline, the pool holding the recognizers of the warm-up rounds
    rss_idle_mib: float  # idle baseline: warm, then every idle recognizer freed by the TTL
    churn_sessions: int
    churn_audio_s: float
    churn_wall_s: float
    rss_after_churn_mib: float
    churn_ratio: float  # rss_after_churn / rss_warm
    churn_curve: list[tuple[int, float]]  # (sessions so far, RSS MiB) at CURVE_POINTS checkpoints
    rss_first_half_mib: float  # mean RSS at the checkpoints of the churn's first half
    rss_second_half_mib: float  # ... and of its second half
    second_half_ratio: float  # second half / first half: a leak keeps growing, a bounded cache does not
    live_sessions: int
    rss_live_mib: float
    rss_per_live_session_mib: float  # (rss_live - rss_after_churn) / live_sessions
    rss_after_live_closed_mib: float
    rss_idle_after_mib: float  # after all of it, every idle recognizer freed by the TTL
    idle_ratio: float  # rss_idle_after / rss_idle: what the sessions left behind (target)
    pool_stats: dict[str, float]  # before the idle recognizers were freed


class BareResult(TypedDict):
    variant: str
    conf: dict[str, str]
    env: dict[str, str]
    recognizers: int
    audio_s: float
    rss_model_mib: float  # after loading the model
    rss_per_recognizer_mib: float  # K recognizers held, each fed audio_s of speech
    fresh_cpu_s: float  # mean CPU seconds of a fresh recognizer's audio_s
    reused_cpu_s: float  # the same audio again on the same (restarted) recognizer
    rss_after_free_mib: float  # over the model, after freeing all K
    rss_after_second_round_mib: float  # over the model, after K more were created, fed and freed
    rss_after_trim_mib: float  # over the model, after malloc_trim(0)
    trim_ms: float
    transcripts: list[str]
    agreement_wer: float | None  # word edits against the default variant's transcripts


class MemoryReport(TypedDict):
    quick: bool
    sizes: dict[str, int]
    machine: Machine
    load_average_1min: tuple[float, float]
    servers: list[ServerResult]
    bare: list[BareResult]
    service_env: dict[str, str]  # extra environment of the served decoder (--service-env)
    figures: list[Figure]  # the headline figures, each beside its baseline (bench.plot, bench.summary)


# --- the bare engine, in a process of its own ---------------------------------------------------


def self_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def malloc_trim() -> float:
    """Give free heap pages back to the OS; returns the milliseconds it took."""
    started = time.perf_counter()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return (time.perf_counter() - started) * 1000


def model_overlay(model_dir: Path, conf: dict[str, str]) -> Path:
    """A symlinked copy of the model whose ``conf/model.conf`` overrides ``conf`` (as the engine's
    dither overlay does for ``mfcc.conf``)."""
    if not conf:
        return model_dir
    text = (model_dir / "conf" / "model.conf").read_text(encoding="utf-8")
    for key, value in conf.items():
        text = re.sub(rf"^--{re.escape(key)}=.*$", f"--{key}={value}", text, flags=re.MULTILINE)
    key = hashlib.sha256(f"{model_dir}\0{text}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"bench-vosk-conf-{key}"
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        for entry in model_dir.iterdir():
            if entry.name != "conf":
                (staging / entry.name).symlink_to(entry.resolve())
        (staging / "conf").mkdir()
        for entry in (model_dir / "conf").iterdir():
            if entry.name != "model.conf":
                (staging / "conf" / entry.name).symlink_to(entry.resolve())
        (staging / "conf" / "model.conf").write_text(text, encoding="utf-8")
        os.replace(staging, target)
    return target


def measure_bare(variant: str, count: int) -> BareResult:
    """K recognizers on K threads, as the server's threads create them; see the module docstring."""
    from decoder_api.engines.base import RecognizerOptions
    from decoder_api.engines.models import resolve_model
    from decoder_api.engines.vosk import VoskEngine, VoskRecognizer
    from decoder_api.sessions.transcripts import stream_pcm

    conf, env = BARE_VARIANTS[variant]
    info = resolve_model("vosk", "ko", None)
    pieces = slices(korean_speech(BARE_AUDIO_S * count), BARE_AUDIO_S, count)
    before = self_rss_mib()
    engine = VoskEngine(dataclasses.replace(info, path=str(model_overlay(Path(info.path), conf))))
    rss_model = self_rss_mib()
    options = RecognizerOptions(RATE_HZ)

    def decode(recognizer: VoskRecognizer, pcm: bytes) -> tuple[str, float]:
        started = time.thread_time()
        text = stream_pcm(recognizer, pcm, CHUNK_MS).text
        return text, time.thread_time() - started

    def fresh(pcm: bytes) -> tuple[VoskRecognizer, float]:
        recognizer = engine.create(options)
        return recognizer, decode(recognizer, pcm)[1]

    with ThreadPoolExecutor(count) as threads:
        created = list(threads.map(fresh, pieces))
        rss_held = self_rss_mib()
        fresh_cpu = [cpu for _, cpu in created]
        recognizers = [r for r, _ in created]
        for recognizer in recognizers:
            recognizer.restart()
        reused = list(threads.map(decode, recognizers, pieces))
        for recognizer in recognizers:
            recognizer.close()
        del recognizers, created
        rss_free = self_rss_mib()
        for recognizer, _ in threads.map(fresh, pieces):
            recognizer.close()
        rss_second = self_rss_mib()
    trim_ms = malloc_trim()
    return BareResult(
        variant=variant,
        conf=conf,
        env=env,
        recognizers=count,
        audio_s=BARE_AUDIO_S,
        rss_model_mib=rss_model - before,
        rss_per_recognizer_mib=(rss_held - rss_model) / count,
        fresh_cpu_s=sum(fresh_cpu) / count,
        reused_cpu_s=sum(cpu for _, cpu in reused) / count,
        rss_after_free_mib=rss_free - rss_model,
        rss_after_second_round_mib=rss_second - rss_model,
        rss_after_trim_mib=self_rss_mib() - rss_model,
        trim_ms=trim_ms,
        transcripts=[text for text, _ in reused],
        agreement_wer=None,
    )


def run_bare(variant: str, count: int) -> BareResult:
    """``measure_bare`` in a fresh interpreter (with the variant's environment); JSON on its last line."""
    command = [sys.executable, "-m", "bench.memory", "--bare", variant, "--recognizers", str(count)]
    env = {**os.environ, **BARE_VARIANTS[variant][1]}
    logger.info("measuring bare engine variant=%s", variant)
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
    result: BareResult = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def word_edits(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def agreement(default: BareResult, other: BareResult) -> float | None:
    """Word edits of ``other``'s transcripts against the default variant's, per default word."""
    words = sum(len(t.split()) for t in default["transcripts"])
    if not words:
        return None
    pairs = zip(default["transcripts"], other["transcripts"], strict=True)
    return sum(word_edits(a.split(), b.split()) for a, b in pairs) / words


# --- the served decoder ------------------------------------------------------------------------


class LiveSessions:
    """K WebSocket streams, each fed some audio, held open until ``close()``."""

    def __init__(self, ws_url: str, pieces: Sequence[bytes]) -> None:
        self._sockets: list[websocket.WebSocket] = []
        lock = threading.Lock()

        def open_one(pcm: bytes) -> None:
            ws = websocket.create_connection(f"{ws_url}/v1/stream", timeout=TIMEOUT_S)
            with lock:
                self._sockets.append(ws)
            for offset in range(0, len(pcm), RATE_HZ * 2 * CHUNK_MS // 1000):
                ws.send_binary(pcm[offset : offset + RATE_HZ * 2 * CHUNK_MS // 1000])
                ws.recv()

        with ThreadPoolExecutor(len(pieces)) as threads:
            list(threads.map(open_one, pieces))

    def close(self) -> None:
        for ws in self._sockets:
            ws.send(json.dumps({"eof": 1}))
            ws.recv()
            ws.close()


def churn(decoder: ServedDecoder, pieces: Sequence[bytes], parallel: int) -> float:
    """Every piece as one session, ``parallel`` at a time, unpaced; returns the wall seconds."""
    started = time.perf_counter()
    run_parallel(parallel, pieces, lambda: session_runner("ws", decoder.url, decoder.ws_url, False))
    return time.perf_counter() - started


def halves(curve: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Mean RSS over the first and over the second half of the checkpoints."""
    middle = max(1, len(curve) // 2)
    first, second = curve[:middle], curve[middle:] or curve[-1:]
    return sum(rss for _, rss in first) / len(first), sum(rss for _, rss in second) / len(second)


def churn_with_curve(
    decoder: ServedDecoder, pieces: Sequence[bytes], parallel: int
) -> tuple[float, list[tuple[int, float]]]:
    """``churn`` in ``CURVE_POINTS`` parts, RSS read after each: (wall seconds, the curve)."""
    wall_s = 0.0
    curve: list[tuple[int, float]] = []
    bounds = sorted({round(len(pieces) * i / CURVE_POINTS) for i in range(1, CURVE_POINTS + 1)})
    done = 0
    for bound in bounds:
        wall_s += churn(decoder, pieces[done:bound], parallel)
        done = bound
        curve.append((done, settled_rss(decoder)))
    return wall_s, curve


def settled_rss(decoder: ServedDecoder) -> float:
    time.sleep(SETTLE_S)
    return decoder.rss_mib()


def idle_rss(decoder: ServedDecoder) -> float:
    """RSS once the pool's TTL freed every idle recognizer (the service holding none)."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    time.sleep(IDLE_TTL_S)
    while decoder.pool_stats().get("recognizers_idle", 0.0) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"idle recognizers still pooled after {IDLE_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return settled_rss(decoder)


def measure_server(
    engine: str, pool: bool, churn_count: int, live: int, parallel: int, env: Mapping[str, str]
) -> ServerResult:
    speech = speech_for(engine, 120.0)
    short = slices(speech, CHURN_AUDIO_S, churn_count)
    settings = {"pool_idle_ttl_s": str(IDLE_TTL_S)} | ({} if pool else POOL_OFF)
    with served(engine, settings, env) as decoder:
        rss_loaded = decoder.rss_mib()
        for _ in range(2):
            churn(decoder, short[:parallel], parallel)
        rss_warm = settled_rss(decoder)
        rss_idle = idle_rss(decoder)
        churn(decoder, short[:parallel], parallel)  # the pool warm again before the churn
        logger.info("churn engine=%s pool=%s sessions=%d", engine, pool, churn_count)
        churn_wall, curve = churn_with_curve(decoder, short, parallel)
        rss_churned = curve[-1][1]
        first, second = halves(curve)
        sessions = LiveSessions(decoder.ws_url, slices(speech, LIVE_AUDIO_S, live))
        rss_live = settled_rss(decoder)
        sessions.close()
        rss_closed = settled_rss(decoder)
        stats = decoder.pool_stats()
        rss_idle_after = idle_rss(decoder)
    return ServerResult(
        engine=engine,
        pool=pool,
        rss_loaded_mib=rss_loaded,
        rss_warm_mib=rss_warm,
        rss_idle_mib=rss_idle,
        churn_sessions=churn_count,
        churn_audio_s=CHURN_AUDIO_S,
        churn_wall_s=churn_wall,
        rss_after_churn_mib=rss_churned,
        churn_ratio=rss_churned / rss_warm,
        churn_curve=curve,
        rss_first_half_mib=first,
        rss_second_half_mib=second,
        second_half_ratio=second / first,
        live_sessions=live,
        rss_live_mib=rss_live,
        rss_per_live_session_mib=(rss_live - rss_churned) / live,
        rss_after_live_closed_mib=rss_closed,
        rss_idle_after_mib=rss_idle_after,
        idle_ratio=rss_idle_after / rss_idle,
        pool_stats=stats,
    )


def measure_servers(sizes: Sizes, engines: Sequence[str], env: Mapping[str, str]) -> list[ServerResult]:
    results = []
    if "vosk" in engines:
        results.append(measure_server("vosk", True, sizes.churn, sizes.live, sizes.parallel, env))
        results.append(measure_server("vosk", False, sizes.churn_pool_off, sizes.live, sizes.parallel, env))
    if "whisper" in engines:
        results.append(
            measure_server("whisper", True, sizes.whisper_churn, sizes.whisper_live, sizes.parallel, env)
        )
    return results


# --- the report -----------------------------------------------------------------------------------

SERVER_HEADER = [
    "Engine",
    "Pool",
    "RSS loaded (MiB)",
    "Warm baseline (MiB)",
    "Churn",
    "RSS after churn (MiB)",
    "After churn / warm",
    "2nd half / 1st half of churn",
    "Live sessions",
    "RSS per live session (MiB)",
    "RSS after they closed (MiB)",
    "Idle before / after (MiB)",
    "Idle after / before",
]
BARE_HEADER = [
    "Variant",
    "RSS per recognizer (MiB)",
    "vs default",
    "Fresh CPU s / reused CPU s",
    "Freed, held (MiB)",
    "After a 2nd round (MiB)",
    "After malloc_trim (MiB)",
    "Word edits vs default",
]


def server_rows(servers: list[ServerResult]) -> list[list[str]]:
    return [
        [
            s["engine"],
            "on" if s["pool"] else "off",
            f"{s['rss_loaded_mib']:.0f}",
            f"{s['rss_warm_mib']:.0f}",
            f"{s['churn_sessions']} x {s['churn_audio_s']:g} s in {s['churn_wall_s']:.0f} s",
            f"{s['rss_after_churn_mib']:.0f}",
            f"{s['churn_ratio']:.3f}",
            f"{s['second_half_ratio']:.3f}" + (" ✓" if s["second_half_ratio"] <= RETURN_TARGET else " ✗"),
            str(s["live_sessions"]),
            f"{s['rss_per_live_session_mib']:.1f}",
            f"{s['rss_after_live_closed_mib']:.0f}",
            f"{s['rss_idle_mib']:.0f} / {s['rss_idle_after_mib']:.0f}",
            f"{s['idle_ratio']:.3f}" + (" ✓" if s["idle_ratio"] <= RETURN_TARGET else " ✗"),
        ]
        for s in servers
    ]


def bare_rows(bare: list[BareResult]) -> list[list[str]]:
    default = bare[0]["rss_per_recognizer_mib"] if bare else 0.0
    return [
        [
            b["variant"],
            f"{b['rss_per_recognizer_mib']:.1f}",
            f"{b['rss_per_recognizer_mib'] / default:.2f}" if default > 0 else "",
            f"{b['fresh_cpu_s']:.2f} / {b['reused_cpu_s']:.2f}",
            f"{b['rss_after_free_mib']:.0f}",
            f"{b['rss_after_second_round_mib']:.0f}",
            f"{b['rss_after_trim_mib']:.0f} ({b['trim_ms']:.0f} ms)",
            "n/a" if b["agreement_wer"] is None else f"{b['agreement_wer'] * 100:.1f} %",
        ]
        for b in bare
    ]


MEMORY_NOTES = (
    "- RSS is the gunicorn worker's VmRSS (`/proc/<pid>/status`), read half a second after the last "
    "session of a phase closed. Warm baseline: after two unmeasured rounds of parallel sessions, the "
    "pool holding their recognizers.",
    f"- Idle before / after: the decoders run with `DECODER_POOL_IDLE_TTL_S={IDLE_TTL_S:g}` (default 600), "
    "so RSS can be read once the pool has freed every idle recognizer: after the warm-up rounds "
    "(the idle baseline) and again after the churn and the live sessions. The service then holds the "
    "same things (the model, no recognizer), so what the sessions left behind is the difference: the "
    f"target is *idle after / before* <= {RETURN_TARGET:.2f}.",
    f"- Churn: sessions of {CHURN_AUDIO_S:g} s of speech over the WebSocket, sent as fast as the server "
    "answers, several at a time. *After churn / warm* is RSS with the pool still holding up to "
    "`DECODER_POOL_MAX_IDLE` recognizers, each with the decoding-graph cache it grew (bounded by "
    "`DECODER_POOL_MAX_AUDIO_S` of audio per recognizer): memory the pool keeps on purpose, not a "
    "leak; it follows a sawtooth as worn recognizers are replaced by new ones. *2nd half / 1st half* "
    "compares the mean RSS at "
    f"the {CURVE_POINTS // 2} checkpoints of the churn's second half with its first half: a leak "
    "grows in both halves, a bounded cache stops growing (the pool frees a "
    "recognizer after `DECODER_POOL_MAX_AUDIO_S` of audio, so its graph cache cannot grow without end).",
    f"- Live sessions: opened together, each fed {LIVE_AUDIO_S:g} s of speech and held open; per session is "
    "(RSS with them open - RSS before they opened) / K. With the pool on, a live session beyond the "
    "idle recognizers gets a new one.",
    f"- Bare engine: one process, the model loaded once, K recognizers created and fed {BARE_AUDIO_S:g} s "
    "of speech each on K threads (as the server's threads do). Freed / second round / malloc_trim are "
    "over the RSS with the model loaded; fresh and reused CPU are per recognizer for the same audio. "
    "Word edits: the variant's transcripts against the default's (the Korean model does not "
    "recognise espeak-ng's Korean words, so this measures search errors a lower limit causes, not "
    "accuracy against a reference).",
)


def render_markdown(report: MemoryReport) -> str:
    machine = report["machine"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    load = "{:.2f} / {:.2f}".format(*report["load_average_1min"])
    lines = [
        "# Memory" + (" (quick)" if report["quick"] else ""),
        "",
        f"Measured with `python -m bench.memory` on {machine['date']}.",
        "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores "
        f"({machine['usable_cores']} usable), {machine['platform']}; "
        f"load average (1 min) before / after: {load}",
        f"- **Software:** Python {machine['python']}; {libraries}",
        "- **Served decoder's extra environment:** "
        + (", ".join(f"`{k}={v}`" for k, v in report["service_env"].items()) or "none"),
        "",
        "## Served decoder",
        "",
        *markdown_table(SERVER_HEADER, server_rows(report["servers"])),
        "",
        f"## Bare Vosk engine ({report['sizes']['recognizers']} recognizers in one process)",
        "",
        *markdown_table(BARE_HEADER, bare_rows(report["bare"])),
        "",
        "## How to read it",
        "",
        *MEMORY_NOTES,
    ]
    return "\n".join(lines) + "\n"


def print_tables(report: MemoryReport, console: Console | None = None) -> None:
    console = console or Console()
    for title, header, rows in (
        ("Memory of the served decoder", SERVER_HEADER, server_rows(report["servers"])),
        ("Memory of the bare Vosk engine", BARE_HEADER, bare_rows(report["bare"])),
    ):
        console.print(rich_table(title + (" (quick)" if report["quick"] else ""), header, rows))


def headline_figures(servers: Sequence[ServerResult], bare: Sequence[BareResult]) -> list[Figure]:
    """RSS with no recognizer held after the churn against the same before it, and the churn's
    second half against its first (the targets); RSS after churn with the pool holding its
    recognizers against the warm baseline, and RSS per live session against the bare engine's RSS
    per recognizer."""
    target = f"ratio <= {RETURN_TARGET:.2f}"
    per_recognizer = bare[0]["rss_per_recognizer_mib"] if bare else None
    figures: list[Figure] = []
    for s in servers:
        where = f"{s['engine']}, pool {'on' if s['pool'] else 'off'}"
        figures += [
            figure(
                f"RSS after {s['churn_sessions']} sessions, idle recognizers freed, {where}",
                "MiB",
                s["rss_idle_after_mib"],
                s["rss_idle_mib"],
                "idle baseline (warm, before the churn)",
                target=target,
                met=s["idle_ratio"] <= RETURN_TARGET,
            ),
            figure(
                f"RSS after {s['churn_sessions']} sessions, pool holding its recognizers, {where}",
                "MiB",
                s["rss_after_churn_mib"],
                s["rss_warm_mib"],
                "warm baseline",
            ),
            figure(
                f"RSS in the 2nd half of {s['churn_sessions']} sessions, {where}",
                "MiB",
                s["rss_second_half_mib"],
                s["rss_first_half_mib"],
                "1st half (mean of checkpoints)",
                target=f"{target} (no leak)",
                met=s["second_half_ratio"] <= RETURN_TARGET,
            ),
        ]
        if s["engine"] == "vosk" and per_recognizer:
            figures.append(
                figure(
                    f"RSS per live session, {where}",
                    "MiB",
                    s["rss_per_live_session_mib"],
                    per_recognizer,
                    "bare engine, RSS per recognizer",
                )
            )
    return figures


def write_report(report: MemoryReport, out: Path) -> list[Path]:
    from bench.memory_findings import render_findings

    paths = write_outputs(out, "memory", render_markdown(report), report)
    findings = out / "memory-report.md"
    findings.write_text(render_findings(report), encoding="utf-8")
    return [*paths, findings]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("vosk", "whisper"), help="served decoder: only this engine")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    parser.add_argument(
        "--bare", choices=tuple(BARE_VARIANTS), help="measure one bare variant here; print JSON"
    )
    parser.add_argument("--recognizers", type=int, help="bare engine: recognizers held at once")
    parser.add_argument("--churn", type=int, help=f"served Vosk: sessions of churn ({DEFAULT_SIZES.churn})")
    parser.add_argument(
        "--service-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the served decoder, e.g. MALLOC_ARENA_MAX=16",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-engine variants")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.churn:
        sizes = dataclasses.replace(sizes, churn=args.churn)
    count = args.recognizers or sizes.recognizers
    service_env = dict(item.split("=", 1) for item in args.service_env if "=" in item)
    if args.bare:
        print(json.dumps(measure_bare(args.bare, count), ensure_ascii=False), flush=True)
        return 0
    load_before = os.getloadavg()[0]
    servers = measure_servers(sizes, [args.engine] if args.engine else ["vosk", "whisper"], service_env)
    variants = () if args.no_bare else QUICK_VARIANTS if args.quick else tuple(BARE_VARIANTS)
    try:
        bare = [run_bare(variant, count) for variant in variants]
    except subprocess.CalledProcessError as err:
        print(f"error: bare engine measurement failed (exit {err.returncode})", file=sys.stderr)
        return 1
    for result in bare[1:]:  # compared with the default variant
        result["agreement_wer"] = agreement(bare[0], result)
    report = MemoryReport(
        quick=args.quick,
        sizes=dataclasses.asdict(sizes) | {"recognizers": count},
        machine=machine_info(),
        load_average_1min=(load_before, os.getloadavg()[0]),
        servers=servers,
        bare=bare,
        service_env=service_env,
        figures=headline_figures(servers, bare),
    )
    for path in write_report(report, args.out):
        logger.info("wrote %s", path)
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
