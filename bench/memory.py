"""Memory: RSS per live session, RSS after session churn, and what one Vosk recognizer holds.

``python -m bench.memory`` measures the worker of ``python -m decoder_api serve`` (Vosk with the pool
on and off, Whisper) through warm-up, churn, live sessions and the pool's TTL, then the bare Vosk
engine, each variant in a fresh process (``--bare VARIANT``). How it measures is in
``bench/METHOD.md``; what the numbers mean for the service, in ``bench/results/memory-report.md``.
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
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer

from bench.churn import POOL_OFF, QUICK_POOL, pool_stats, run_part, served
from bench.results import (
    SERVICE_ENV,
    Column,
    Figure,
    Option,
    Result,
    column_table,
    env_items,
    figure,
    main,
    percent,
    result,
    run_json,
)
from bench.speech import korean_speech, slices, speech_for
from devtools.clients import CHUNK_MS, RATE_HZ, VoskStream, split_chunks
from devtools.processes import DecoderServer, status_mib

logger = logging.getLogger(__name__)

CHURN_AUDIO_S = 0.6
LIVE_AUDIO_S = 2.0
RETURN_TARGET = 1.05  # RSS after churn / warm baseline
SETTLE_S = 0.5  # after the last session closed, before reading RSS
IDLE_TIMEOUT_S = 60.0
CURVE_POINTS = 10  # RSS read after every tenth of the churn
# name -> (model.conf overrides, extra environment)
BARE_VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "default": ({}, {}),  # the static graph when built (DECODER_VOSK_GRAPH=auto), as served
    "lookahead graph": ({}, {"DECODER_VOSK_GRAPH": "lookahead"}),  # the model's HCLr + Gr pair
    "MALLOC_ARENA_MAX=2": ({}, {"MALLOC_ARENA_MAX": "2"}),
    "max-active=1000": ({"max-active": "1000"}, {}),
    "beam=7": ({"beam": "7.0"}, {}),
    "lattice-beam=1": ({"lattice-beam": "1.0"}, {}),
}


@dataclass(frozen=True, slots=True)
class Sizes:
    parallel: int
    churn: int  # Vosk, pool on
    churn_pool_off: int  # 0: not measured
    live: int
    whisper_churn: int
    whisper_live: int
    recognizers: int  # bare engine
    bare_audio_s: float  # fed to each bare recognizer
    idle_ttl_s: float  # the served decoders free a recognizer idle this long (default 10 minutes)
    variants: tuple[str, ...]  # of the bare engine


DEFAULT_SIZES = Sizes(4, 2000, 60, 12, 100, 6, 4, 20.0, 3.0, tuple(BARE_VARIANTS))
QUICK_SIZES = Sizes(1, 3, 0, 1, 2, 1, 1, 1.0, 1.0, ("default",))  # Vosk, pool on only


def model_overlay(model_dir: Path, conf: Mapping[str, str]) -> Path:
    """A symlinked copy of the model whose ``conf/model.conf`` overrides ``conf``."""
    if not conf:
        return model_dir
    text = (model_dir / "conf" / "model.conf").read_text(encoding="utf-8")
    for key, value in conf.items():
        text = re.sub(rf"^--{re.escape(key)}=.*$", f"--{key}={value}", text, flags=re.MULTILINE)
    key = hashlib.sha256(f"{model_dir}\0{text}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"bench-vosk-conf-{key}"
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        (staging / "conf").mkdir()
        for entry in [*model_dir.iterdir(), *(model_dir / "conf").iterdir()]:
            if entry.name not in ("conf", "model.conf"):
                (staging / entry.relative_to(model_dir)).symlink_to(entry.resolve())
        (staging / "conf" / "model.conf").write_text(text, encoding="utf-8")
        os.replace(staging, target)
    return target


def measure_bare(variant: str, count: int, audio_s: float) -> dict[str, Any]:
    """K recognizers created and fed on K threads, as the server's threads create them."""
    from decoder_api.config import load_settings
    from decoder_api.engines.base import RecognizerOptions
    from decoder_api.engines.models import resolve_model
    from decoder_api.engines.vosk import VoskEngine, VoskRecognizer
    from decoder_api.sessions.transcripts import stream_pcm

    conf, env = BARE_VARIANTS[variant]
    info = resolve_model("vosk", "ko", None)
    pieces = slices(korean_speech(audio_s * count), audio_s, count)
    before = status_mib(os.getpid(), "VmRSS")
    started = time.perf_counter()
    engine = VoskEngine(
        dataclasses.replace(info, path=str(model_overlay(Path(info.path), conf))),
        load_settings(os.environ).vosk,
    )
    load_s, rss_model = time.perf_counter() - started, status_mib(os.getpid(), "VmRSS")

    def decode(recognizer: VoskRecognizer, pcm: bytes) -> tuple[str, float]:
        started = time.thread_time()
        text = stream_pcm(recognizer, pcm, CHUNK_MS).text
        return text, time.thread_time() - started

    def fresh(pcm: bytes) -> tuple[VoskRecognizer, float]:
        recognizer = engine.create(RecognizerOptions(RATE_HZ))
        return recognizer, decode(recognizer, pcm)[1]

    with ThreadPoolExecutor(count) as threads:
        created = list(threads.map(fresh, pieces))
        rss_held = status_mib(os.getpid(), "VmRSS")
        for recognizer, _ in created:
            recognizer.restart()
        reused = list(threads.map(decode, [r for r, _ in created], pieces))
        for recognizer, _ in created:
            recognizer.close()
        fresh_cpu = [cpu for _, cpu in created]
        del created
        rss_free = status_mib(os.getpid(), "VmRSS")
        for recognizer, _ in threads.map(fresh, pieces):
            recognizer.close()
        rss_second = status_mib(os.getpid(), "VmRSS")
    started = time.perf_counter()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give free heap pages back to the OS
    trim_ms = (time.perf_counter() - started) * 1000
    return {
        "variant": variant,
        "conf": conf,
        "env": env,
        "recognizers": count,
        "audio_s": audio_s,
        "graph": engine.graph,  # static, lookahead
        "load_s": load_s,
        "rss_model_mib": rss_model - before,  # after loading the model
        "rss_per_recognizer_mib": (rss_held - rss_model) / count,  # K held, each fed audio_s of speech
        "fresh_cpu_s": sum(fresh_cpu) / count,  # mean CPU s of a fresh recognizer's audio_s
        "reused_cpu_s": sum(cpu for _, cpu in reused) / count,  # the same audio on the restarted recognizer
        "rss_after_free_mib": rss_free - rss_model,  # over the model, after freeing all K
        "rss_after_second_round_mib": rss_second - rss_model,  # after K more were created, fed and freed
        "rss_after_trim_mib": status_mib(os.getpid(), "VmRSS") - rss_model,  # after malloc_trim(0)
        "trim_ms": trim_ms,
        "transcripts": [text for text, _ in reused],
        "agreement_wer": None,  # word edits against the default variant's transcripts
    }


def agreement(default: Mapping[str, Any], other: Mapping[str, Any]) -> float | None:
    """Word edits of ``other``'s transcripts against the default variant's, per default word."""
    words = sum(len(t.split()) for t in default["transcripts"])
    found = jiwer.process_words(default["transcripts"], other["transcripts"])  # each pair aligned alone
    return (found.substitutions + found.deletions + found.insertions) / words if words else None


def hold_open(stream: VoskStream, pcm: bytes) -> None:
    stream.open()
    for chunk in split_chunks(pcm):
        stream.send(chunk)


def settled_rss(server: DecoderServer) -> float:
    time.sleep(SETTLE_S)
    return server.rss_mib()


def idle_rss(server: DecoderServer, ttl_s: float) -> float:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    time.sleep(ttl_s)
    while pool_stats(server).get("recognizers_idle", 0.0) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"idle recognizers still pooled after {IDLE_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return settled_rss(server)


def measure_server(
    engine: str, pool: bool, churn_count: int, live: int, sizes: Sizes, env: Mapping[str, str], quick: bool
) -> dict[str, Any]:
    speech = speech_for(engine, 120.0)
    short = slices(speech, CHURN_AUDIO_S, churn_count)
    parallel, ttl_s = sizes.parallel, sizes.idle_ttl_s
    settings = {"pool_idle_ttl_s": str(ttl_s)} | (QUICK_POOL if quick else {}) | ({} if pool else POOL_OFF)
    with served(engine, settings, env) as server:
        rss_loaded = server.rss_mib()
        for _ in range(2):
            run_part(server, "ws", short[:parallel], parallel, paced=False)
        rss_warm = settled_rss(server)
        rss_idle = idle_rss(server, ttl_s)
        # the pool warm again before the churn
        run_part(server, "ws", short[:parallel], parallel, paced=False)
        logger.info("churn engine=%s pool=%s sessions=%d", engine, pool, churn_count)
        curve, wall_s, done = [], 0.0, 0  # (sessions so far, RSS MiB) at CURVE_POINTS checkpoints
        for bound in sorted({round(churn_count * i / CURVE_POINTS) for i in range(1, CURVE_POINTS + 1)}):
            wall_s += run_part(server, "ws", short[done:bound], parallel, paced=False)[0].wall_s
            done = bound
            curve.append((done, settled_rss(server)))
        middle = max(1, len(curve) // 2)
        halves = (curve[:middle], curve[middle:] or curve[-1:])
        first, second = (sum(rss for _, rss in half) / len(half) for half in halves)
        streams = [VoskStream(f"{server.ws_url}/v1/stream") for _ in range(live)]
        with ThreadPoolExecutor(live) as threads:  # opened together, each fed some audio, held open
            list(threads.map(hold_open, streams, slices(speech, LIVE_AUDIO_S, live)))
        rss_live = settled_rss(server)
        for stream in streams:
            stream.end()
            stream.close()
        rss_closed, stats = settled_rss(server), pool_stats(server)
        rss_idle_after = idle_rss(server, ttl_s)
    rss_churned = curve[-1][1]
    return {
        "engine": engine,
        "pool": pool,
        "rss_loaded_mib": rss_loaded,  # ready, before any session
        "rss_warm_mib": rss_warm,  # the pool holding the recognizers of the warm-up rounds
        "rss_idle_mib": rss_idle,  # warm, then every idle recognizer freed by the TTL
        "churn_sessions": churn_count,
        "churn_audio_s": CHURN_AUDIO_S,
        "churn_wall_s": wall_s,
        "rss_after_churn_mib": rss_churned,
        "churn_ratio": rss_churned / rss_warm,
        "churn_curve": curve,
        "rss_first_half_mib": first,  # mean RSS at the checkpoints of the churn's first half
        "rss_second_half_mib": second,
        "second_half_ratio": second / first,  # a leak keeps growing, a bounded cache does not
        "live_sessions": live,
        "rss_live_mib": rss_live,
        "rss_per_live_session_mib": (rss_live - rss_churned) / live,
        "rss_after_live_closed_mib": rss_closed,
        "rss_idle_after_mib": rss_idle_after,  # after all of it, every idle recognizer freed by the TTL
        "idle_ratio": rss_idle_after / rss_idle,  # what the sessions left behind (target)
        "pool_stats": stats,  # before the idle recognizers were freed
    }


def mark(ratio: float) -> str:
    return f"{ratio:.3f}" + (" ✓" if ratio <= RETURN_TARGET else " ✗")


def mib(key: str, digits: int = 0) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: f"{row[key]:.{digits}f}"


SERVER_COLUMNS: list[Column] = [
    ("Engine", lambda s: s["engine"]),
    ("Pool", lambda s: "on" if s["pool"] else "off"),
    ("RSS loaded (MiB)", mib("rss_loaded_mib")),
    ("Warm baseline (MiB)", mib("rss_warm_mib")),
    ("Churn", lambda s: f"{s['churn_sessions']} x {s['churn_audio_s']:g} s in {s['churn_wall_s']:.0f} s"),
    ("RSS after churn (MiB)", mib("rss_after_churn_mib")),
    ("After churn / warm", lambda s: f"{s['churn_ratio']:.3f}"),
    ("2nd half / 1st half of churn", lambda s: mark(s["second_half_ratio"])),
    ("Live sessions", lambda s: str(s["live_sessions"])),
    ("RSS per live session (MiB)", mib("rss_per_live_session_mib", 1)),
    ("RSS after they closed (MiB)", mib("rss_after_live_closed_mib")),
    ("Idle before / after (MiB)", lambda s: f"{s['rss_idle_mib']:.0f} / {s['rss_idle_after_mib']:.0f}"),
    ("Idle after / before", lambda s: mark(s["idle_ratio"])),
]
# The static graph against the lookahead pair, in the bare engine: (key, what, unit).
GRAPH_FIGURES = [("rss_per_recognizer_mib", "RSS per recognizer", "MiB"), ("load_s", "model load time", "s")]
GRAPH_FIGURES += [("fresh_cpu_s", "CPU of a new recognizer", "s"), ("rss_model_mib", "model RSS", "MiB")]
# One row per variant: (the variant, the default variant's RSS per recognizer).
BARE_COLUMNS: list[Column] = [
    ("Variant", lambda r: r[0]["variant"].replace("default", f"default ({r[0]['graph']} graph)")),
    ("Model load (s) / RSS (MiB)", lambda r: f"{r[0].get('load_s', 0):.1f} / {r[0]['rss_model_mib']:.0f}"),
    ("RSS per recognizer (MiB)", lambda r: f"{r[0]['rss_per_recognizer_mib']:.1f}"),
    ("vs default", lambda r: f"{r[0]['rss_per_recognizer_mib'] / r[1]:.2f}" if r[1] > 0 else ""),
    (
        "CPU s per audio s, fresh / reused",
        lambda r: "{:.3f} / {:.3f}".format(
            *(r[0][k] / r[0]["audio_s"] for k in ("fresh_cpu_s", "reused_cpu_s"))
        ),
    ),
    ("Freed, held (MiB)", lambda r: f"{r[0]['rss_after_free_mib']:.0f}"),
    ("After a 2nd round (MiB)", lambda r: f"{r[0]['rss_after_second_round_mib']:.0f}"),
    ("After malloc_trim (MiB)", lambda r: f"{r[0]['rss_after_trim_mib']:.0f} ({r[0]['trim_ms']:.0f} ms)"),
    ("Word edits vs default", lambda r: percent(r[0]["agreement_wer"])),
]


def figures_of(servers: Sequence[Mapping[str, Any]], bare: Sequence[Mapping[str, Any]]) -> list[Figure]:
    """Idle RSS after the churn against before it, and the churn's second half against its first (the
    targets); RSS after churn against the warm baseline, and per live session against the bare engine."""
    target = f"ratio <= {RETURN_TARGET:.2f}"
    per_recognizer = bare[0]["rss_per_recognizer_mib"] if bare else None
    figures: list[Figure] = []
    for s in servers:
        where, n = f"{s['engine']}, pool {'on' if s['pool'] else 'off'}", s["churn_sessions"]
        name, idle = f"RSS after {n} sessions, idle recognizers freed, {where}", s["rss_idle_after_mib"]
        met = s["idle_ratio"] <= RETURN_TARGET
        baseline = "idle baseline (warm, before the churn)"
        figures.append(figure(name, "MiB", idle, s["rss_idle_mib"], baseline, "lower", target, met))
        name = f"RSS after {n} sessions, pool holding its recognizers, {where}"
        figures.append(figure(name, "MiB", s["rss_after_churn_mib"], s["rss_warm_mib"], "warm baseline"))
        second, met = s["rss_second_half_mib"], s["second_half_ratio"] <= RETURN_TARGET
        name, baseline = f"RSS in the 2nd half of {n} sessions, {where}", "1st half (mean of checkpoints)"
        first, no_leak = s["rss_first_half_mib"], f"{target} (no leak)"
        figures.append(figure(name, "MiB", second, first, baseline, "lower", no_leak, met))
        if s["engine"] == "vosk" and per_recognizer:
            live, baseline = s["rss_per_live_session_mib"], "bare engine, RSS per recognizer"
            figures.append(figure(f"RSS per live session, {where}", "MiB", live, per_recognizer, baseline))
    variants = {b["variant"]: b for b in bare}
    static, pair = variants.get("default", {}), variants.get("lookahead graph", {})
    for key, what, unit in GRAPH_FIGURES if static.get("graph") == "static" and pair else ():
        name, baseline = f"Vosk on its static graph: {what}", "lookahead graph (HCLr + Gr), same run"
        figures.append(figure(name, unit, static[key], pair[key], baseline))
    return figures


def run(args: argparse.Namespace) -> Result | int:
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.bare:
        print(json.dumps(measure_bare(args.bare, sizes.recognizers, sizes.bare_audio_s), ensure_ascii=False))
        return 0
    env = env_items(args.service_env)
    engines = [args.engine] if args.engine else ["vosk"] if args.quick else ["vosk", "whisper"]
    runs = [("vosk", True, sizes.churn, sizes.live), ("vosk", False, sizes.churn_pool_off, sizes.live)]
    runs.append(("whisper", True, sizes.whisper_churn, sizes.whisper_live))
    servers = [
        measure_server(engine, pool, churn_count, live, sizes, env, args.quick)
        for engine, pool, churn_count, live in runs
        if engine in engines and churn_count  # no churn: not measured
    ]
    bare = []
    for variant in sizes.variants:  # each in a fresh process, the same sizes (``--quick`` passed on)
        logger.info("measuring bare engine variant=%s", variant)
        argv = ["--bare", variant, *(["--quick"] if args.quick else [])]
        bare.append(run_json("bench.memory", *argv, env=BARE_VARIANTS[variant][1]))
    for other in bare[1:]:  # compared with the default variant
        other["agreement_wer"] = agreement(bare[0], other)
    details = {"sizes": dataclasses.asdict(sizes), "servers": servers, "bare": bare, "service_env": env}
    default = bare[0]["rss_per_recognizer_mib"] if bare else 0.0
    bare_title = f"Bare Vosk engine ({sizes.recognizers} recognizers in one process)"
    tables = [column_table("Served decoder", SERVER_COLUMNS, servers)]
    tables.append(column_table(bare_title, BARE_COLUMNS, [(b, default) for b in bare]))
    settings: dict[str, Any] = {"churn_audio_s": CHURN_AUDIO_S, "live_audio_s": LIVE_AUDIO_S}
    settings |= {"bare_audio_s": sizes.bare_audio_s, "idle_ttl_s": sizes.idle_ttl_s}
    settings |= {"return_target": RETURN_TARGET, "curve_points": CURVE_POINTS, "service_env": env or "none"}
    return result("memory", "Memory", args.quick, settings, figures_of(servers, bare), details, tables)


OPTIONS: list[Option] = [
    ("--engine", {"choices": ("vosk", "whisper"), "help": "served decoder: only this engine"}),
    ("--bare", {"choices": tuple(BARE_VARIANTS), "help": "measure one bare variant here; print JSON"}),
    SERVICE_ENV,
]

if __name__ == "__main__":
    sys.exit(main("memory", __doc__, OPTIONS, run))
