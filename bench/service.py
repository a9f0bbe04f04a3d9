"""Service overhead and capacity per pod, against the bare engine measured in the same run, beside any peer.

``python -m bench.service``: for Vosk (Korean) and whisper tiny.en, callers through ``python -m
decoder_api serve`` over HTTP v1 and the WebSocket and through the bare engine in this process, as
fast as the replies come (overhead) and paced in real time (capacity); ``--peer-url [LABEL=]URL``
sets any running server that speaks the Vosk WebSocket protocol beside our Vosk rows; with py-spy,
a profile of the worker under load. How it measures is in ``bench/METHOD.md``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.churn import QUICK_POOL
from bench.results import (
    SERVICE_ENV,
    Column,
    Figure,
    Option,
    Result,
    column_table,
    env_items,
    figure,
    latency_summary,
    main,
    result,
    table,
)
from bench.speech import CALLS, english_speech, korean_speech, rotated, whole_chunks
from decoder_api.allocator import running_allocator
from decoder_api.config import load_settings
from decoder_api.engines import load_engine
from decoder_api.engines.base import RecognizerOptions
from decoder_api.engines.pool import PoolSettings, RecognizerPool
from decoder_api.metrics import LAG_BUCKETS_S
from devtools.clients import CHUNK_MS, RATE_HZ, HttpSession, Session, VoskStream, run_callers
from devtools.processes import (
    DecoderServer,
    RssSampler,
    decoder_env,
    free_port,
    listening_pid,
    on_serve_allocator,
    process_tree,
    start_decoder,
    start_redis,
    tree_rss_mib,
)

logger = logging.getLogger(__name__)

OVERHEAD_TARGET = 0.90
CAPACITY_TARGET = 0.85
LIVE_RSS_TARGET = 0.5  # RSS per live call, ours / a peer's
P95_LIMIT_MS = 300.0
BEHIND_S = 1.0  # a paced caller whose last reply comes this long after its chunk was due fell behind
MAX_CALLERS = 60  # below DECODER_MAX_SESSIONS (64)
SERVICE_SETTINGS = {"pool_max_idle": str(MAX_CALLERS), "log_level": "warning"}
VOSK_CONFIG = {"sample_rate": RATE_HZ, "words": 1}


@dataclass(frozen=True, slots=True)
class EngineSpec:
    name: str
    model: str
    speech: Callable[[float], bytes]
    audio: str


@dataclass(frozen=True, slots=True)
class Sizes:
    """Of one engine's run; seconds of audio per caller."""

    overhead_cores: tuple[int, ...]  # overhead callers as multiples of the cores
    overhead_audio_s: float
    warmup_audio_s: float  # Vosk warms its graph cache on the whole clip
    capacity_audio_s: float  # per step
    max_steps: int
    keeping_up_steps: int  # the search without a latency limit, when none met it (0: skipped)
    overhead_rounds: int  # the best of these rounds counts
    live_audio_s: float = 0.0  # per live call of the RSS round (0: no such round)


ENGINES = {
    "vosk": EngineSpec("vosk", "ko", korean_speech, "espeak-ng Korean speech (sentences with pauses)"),
    "whisper": EngineSpec(
        "whisper", "tiny.en", functools.partial(english_speech, files=CALLS), "English calls of data/"
    ),
}
SIZES = {
    "vosk": Sizes((1, 4), 20.0, 20.0, 20.0, 5, 2, 2, 60.0),
    "whisper": Sizes((1,), 10.0, 3.0, 15.0, 5, 2, 2),
}
QUICK_SIZES = Sizes((1,), 1.0, 0.4, 1.0, max_steps=1, keeping_up_steps=0, overhead_rounds=1, live_audio_s=1.0)
LIVE_CALLERS = 8
PROFILE_S = 15.0


class BareSession:
    """The engine alone, in this process: a recognizer from the pool, ``accept`` + ``partial`` per chunk."""

    def __init__(self, pool: RecognizerPool) -> None:
        self.pool = pool
        self.recognizer: Any = None

    def open(self) -> BareSession:
        self.recognizer = self.pool.acquire(RecognizerOptions(sample_rate_hz=RATE_HZ, words=True))
        return self

    def send(self, pcm: bytes) -> dict[str, Any]:
        return {"partial": self.recognizer.partial(), "finals": len(self.recognizer.accept(pcm))}

    def end(self) -> dict[str, Any]:
        return {"finals": len(self.recognizer.flush())}

    def close(self) -> None:
        if self.recognizer is not None:
            self.recognizer.close()


@dataclass(frozen=True, slots=True)
class Target:
    session: Callable[[], Session]
    pid: int | None
    metrics: DecoderServer | None = None  # our service: its partial-lag histogram per capacity step
    warmed: list[int] | None = None  # callers its pool (shared by our paths to it) holds warm; peers: None


def parse_peers(values: Sequence[str]) -> dict[str, str]:
    """``[LABEL=]URL`` items (each may be a comma list) -> label: URL; the label defaults to host:port."""
    peers = {}
    for item in (part.strip() for value in values for part in value.split(",") if part.strip()):
        label, _, url = item.rpartition("=") if "=" in item.split("://")[0] else ("", "", item)
        peers[label or urllib.parse.urlsplit(url).netloc] = url
    return peers


def call_round(path: Target, speech: bytes, callers: int, paced: bool = False) -> dict[str, Any]:
    """``callers`` calls, each on its own rotation of ``speech``: unpaced, all start together and send as
    fast as the replies come (throughput); paced, in real time, started over one chunk period (latency)."""
    work = [[rotated(speech, n, callers)] for n in range(callers)]
    run = run_callers(work, path.session, paced, stagger_s=CHUNK_MS / 1000 / callers if paced else 0.0)
    latencies = [s for t in run.done for s in t.latencies_s]
    if paced:
        latency = latency_summary(latencies or [0.0])
        first = latency_summary([t.first_reply_s for t in run.done] or [0.0])  # open -> its first reply
        return (
            {"callers": callers, "audio_s_per_caller": len(speech) / 2 / RATE_HZ}
            | {f"latency_{q}_ms": latency[f"{q}_ms"] for q in ("p50", "p95", "max")}
            | {f"first_chunk_{q}_ms": first[f"{q}_ms"] for q in ("p50", "max")}
            | {"behind": sum(1 for t in run.done if t.end_lag_s > BEHIND_S)}
            | {"max_end_lag_s": max((t.end_lag_s for t in run.done), default=0.0)}
            | {"errors": run.errors, "client_cpu_s": run.client_cpu_s}
        )
    if not run.done:
        raise RuntimeError(f"every call failed: {run.timings[0].error}")
    wall = max(t.wall_s for t in run.done)
    return {
        "throughput": sum(t.audio_s for t in run.done) / wall,  # audio seconds per wall second, all callers
        "wall_s": wall,
        "latency_mean_ms": 1000 * sum(latencies) / len(latencies),
        "client_cpu_s": run.client_cpu_s,
        "errors": run.errors,
        "ratio": 1.0,  # over the bare engine with the same callers (set once both are measured)
    }


def search_capacity(
    probe: Callable[[int], dict[str, Any]], start: int, p95_limit_ms: float, max_steps: int, search: str
) -> tuple[int, list[dict[str, Any]]]:
    """The largest passing number of callers and every step, tagged with ``search``: from ``start`` up by
    x1.5 (or down by x0.6) until the verdict flips, then bisection, within ``max_steps`` probes, or
    twice that while the largest pass and the smallest failure are not neighbours; going down goes on
    until a number passes or 1 failed, so 0: not even one passed."""
    steps: list[dict[str, Any]] = []
    passed, failed = 0, None
    n = max(1, start)
    while len(steps) < max_steps or (
        failed is not None and failed - passed > 1 and (passed == 0 or len(steps) < 2 * max_steps)
    ):
        step = probe(n)
        ok = step["errors"] == 0 and step["behind"] == 0 and step["latency_p95_ms"] <= p95_limit_ms
        steps.append(step | {"search": search, "passed": ok})
        if ok:
            passed = max(passed, n)
        else:
            failed = n if failed is None else min(failed, n)
        if failed is None:
            if n >= MAX_CALLERS:
                break
            n = min(MAX_CALLERS, max(n + 1, round(n * 1.5)))
        elif passed == 0 and failed > 1:
            n = max(1, min(failed - 1, round(failed * 0.6)))
        elif failed - passed > 1:
            n = (passed + failed) // 2
        else:
            break
    return passed, steps


def lag_buckets(server: DecoderServer) -> dict[float, float]:
    """The service's cumulative partial-lag histogram: upper bound (s) -> partials published."""
    samples = server.metrics("decoder_partial_lag_seconds_bucket{").items()
    return {float(name.split('le="', 1)[1].split('"', 1)[0]): value for name, value in samples}  # +Inf: inf


def partial_lag(before: Mapping[float, float], after: Mapping[float, float]) -> dict[str, Any]:
    """Partials published in between, and the bucket bounds (s) their p50 and p95 fall under (None:
    beyond the largest finite bound, or nothing published)."""
    cumulative = sorted((bound, count - before.get(bound, 0.0)) for bound, count in after.items())
    total = cumulative[-1][1] if cumulative else 0.0
    quantiles = [
        next(bound for bound, count in cumulative if count >= q * total) if total > 0 else math.inf
        for q in (0.50, 0.95)
    ]
    p50, p95 = (None if bound == math.inf else bound for bound in quantiles)
    published = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    return {"published": round(published), "p50_s": p50, "p95_s": p95}


def capacity(path: Target, speech: bytes, bound: float, sizes: Sizes, warmup: bytes) -> dict[str, Any]:

    def probe(callers: int) -> dict[str, Any]:
        if path.warmed is not None and callers > path.warmed[0]:  # a short round: a warm recognizer each
            run_callers([[warmup]] * callers, path.session)
            path.warmed[0] = callers
        before = lag_buckets(path.metrics) if path.metrics else {}
        step = call_round(path, speech, callers, paced=True)
        step["partial_lag"] = partial_lag(before, lag_buckets(path.metrics)) if path.metrics else None
        logger.info("  %d callers: p95 %.0f ms, behind %d", callers, step["latency_p95_ms"], step["behind"])
        return step

    start, keeping_up = min(MAX_CALLERS, max(1, int(bound * CAPACITY_TARGET))), None
    with RssSampler(path.pid) as rss:
        callers, steps = search_capacity(probe, start, P95_LIMIT_MS, sizes.max_steps, "latency")
        if callers == 0 and sizes.keeping_up_steps:  # none within the latency limit: do any keep up?
            logger.info("  no caller within %.0f ms; searching without the latency limit", P95_LIMIT_MS)
            keeping_up, more = search_capacity(probe, 1, math.inf, sizes.keeping_up_steps, "keeping_up")
            steps += more
    return {
        "callers": callers,  # p95 latency within the limit and nobody behind
        "ratio": callers / bound,
        "ratio_to_bare_engine": None,  # callers / the bare engine's capacity (same search, in-process)
        "callers_keeping_up": keeping_up,  # only searched when callers is 0
        "steps": steps,
        "peak_rss_mib": rss.peak_mib if path.pid else None,
    }


def live_rss(path: Target, speech: bytes, idle_mib: float) -> dict[str, Any]:
    """Memory per live call: ``LIVE_CALLERS`` real-time calls of ``speech`` at once, the first calls of
    the server; (its peak RSS meanwhile - its RSS before any call) / the calls."""
    with RssSampler(path.pid) as rss:
        step = call_round(path, speech, LIVE_CALLERS, paced=True)
    per_call = (rss.peak_mib - idle_mib) / LIVE_CALLERS
    return {"callers": LIVE_CALLERS, "peak_rss_mib": rss.peak_mib, "per_call_mib": per_call} | step


def measure_engine(
    spec: EngineSpec, log_dir: Path, args: argparse.Namespace, peers: Mapping[str, str]
) -> dict[str, Any]:
    sizes, service_env = QUICK_SIZES if args.quick else SIZES[spec.name], env_items(args.service_env)
    cores = len(os.sched_getaffinity(0))
    counts = sorted({cores, *(cores * k for k in sizes.overhead_cores)})
    overhead_s = sizes.overhead_audio_s
    speech = spec.speech(max(overhead_s, sizes.capacity_audio_s))
    warmup = whole_chunks(speech, sizes.warmup_audio_s)
    capacity_speech = whole_chunks(speech, sizes.capacity_audio_s)
    port, quick = free_port(), QUICK_POOL if args.quick else {}
    env = decoder_env(SERVICE_SETTINGS | {"engine": spec.name, "model": spec.model} | quick, service_env)
    service = DecoderServer(port, env, log_dir / f"decoder-{port}.log")
    with service.launch():  # the service loads its model while this process loads its own
        engine = load_engine(load_settings(os.environ, {"engine": spec.name, "model": spec.model}))
        pool = RecognizerPool(engine, PoolSettings(max_idle=MAX_CALLERS, warm=0))
        service.wait_ready()
        ws_url, warmed = f"{service.ws_url}/v1/stream", [max(counts)]  # warm after the overhead rounds
        paths = {
            "bare": Target(lambda: BareSession(pool), os.getpid(), None, [max(counts)]),
            "http": Target(lambda: HttpSession(service.url), service.pid(), service, warmed),
            "websocket": Target(lambda: VoskStream(ws_url, VOSK_CONFIG), service.pid(), service, warmed),
        }
        service_allocator = running_allocator(Path(f"/proc/{process_tree(service.pid())[-1]}/maps"))
        idle = {"service": tree_rss_mib(service.pid())}  # and each peer found here: before any call
        for label, url in peers.items():
            pid = listening_pid(url)
            paths[f"peer {label}"] = Target(functools.partial(VoskStream, url, VOSK_CONFIG), pid)
            idle |= {label: tree_rss_mib(pid)} if pid else {}
        live, whose = {}, {"websocket": "service"} | {f"peer {k}": k for k in peers if k in idle}
        if sizes.live_audio_s:  # first, so the calls meet a server that has served none before
            speech_60 = whole_chunks(spec.speech(sizes.live_audio_s), sizes.live_audio_s)
            live = {key: live_rss(paths[key], speech_60, idle[who]) for key, who in whose.items()}
        best = overhead_rounds(spec.name, paths, counts, whole_chunks(speech, overhead_s), warmup, sizes)
        rtf = best["bare"][cores]["wall_s"] / overhead_s  # bare RTF with `cores` streams at once
        bound = {"cores": cores, "bare_rtf": rtf, "callers": cores / rtf}
        logger.info("%s: capacity searches (bound %.1f)", spec.name, bound["callers"])
        found = {"bare_engine": capacity(paths["bare"], capacity_speech, bound["callers"], sizes, warmup)}
        pool.close()
        engine.close()
        services = ["service_websocket", *(["service_http"] if args.http_capacity else [])]
        for key in [*services, *(name for name in paths if name.startswith("peer "))]:
            path = paths[key.removeprefix("service_")]
            found[key] = capacity(path, capacity_speech, bound["callers"], sizes, warmup)
    for key, res in found.items():
        if key != "bare_engine" and found["bare_engine"]["callers"] > 0:
            res["ratio_to_bare_engine"] = res["callers"] / found["bare_engine"]["callers"]
    rows = [
        {"callers": n, "audio_s_per_caller": overhead_s, "bare": best["bare"][n]}
        | {path: best[path][n] for path in ("http", "websocket")}
        | {"peers": {p.removeprefix("peer "): best[p][n] for p in best if p.startswith("peer ")}}
        for n in counts
    ]
    return {
        "engine": spec.name,
        "model": spec.model,
        "audio": spec.audio,
        "overhead": rows,
        "bound": bound,
        "capacity": found,  # bare_engine, service_websocket, service_http, "peer <label>"
        "idle_rss_mib": idle,  # service and peers: after start, before any call
        "service_allocator": service_allocator,  # the gunicorn worker's
        "bare_allocator": running_allocator(),  # this process's, which the bare engine runs in
        "live_calls": live,  # websocket and "peer <label>": RSS per live call
    }


def overhead_rounds(
    engine: str, paths: Mapping[str, Target], counts: list[int], speech: bytes, warmup: bytes, sizes: Sizes
) -> dict[str, dict[int, dict[str, Any]]]:
    """Rounds of every path at every number of callers, interleaved (other work on the machine then
    falls on all paths alike); the best of each. Our paths' first round follows a warm-up round that
    fills the pools (a peer's own warm-up, if it has any, is measured as it runs)."""
    best: dict[str, dict[int, dict[str, Any]]] = {path: {} for path in paths}
    for round_ in range(sizes.overhead_rounds):
        for n in counts:
            for name, path in paths.items():
                logger.info("%s: overhead round %d, %s, %d callers", engine, round_ + 1, name, n)
                if round_ == 0 and path.warmed is not None:
                    run_callers([[warmup]] * n, path.session)
                run = call_round(path, speech, n)
                if n not in best[name] or run["throughput"] > best[name][n]["throughput"]:
                    best[name][n] = run
    for name in paths:  # the ratios of the best rounds
        for n, run in best[name].items():
            run["ratio"] = run["throughput"] / best["bare"][n]["throughput"]
    return best


# Innermost frame's file (or function) -> what it is; first match wins, checked from the leaf up.
CATEGORIES = {
    "Kaldi decode (vosk C calls)": ("vosk/__init__.py",),
    "whisper decode": ("ctranslate2", "faster_whisper"),
    "engine wrapper (dither, Vosk JSON)": ("decoder_api/engines/vosk.py", "numpy"),
    "engine wrapper": ("decoder_api/engines/",),
    "Redis registry": ("redis/", "decoder_api/sessions/registry.py"),
    "metrics": ("prometheus_client",),
    "JSON": ("json/",),
    "WebSocket layer": ("simple_websocket", "wsproto"),
    "HTTP layer (werkzeug/flask/gunicorn)": ("werkzeug", "flask", "gunicorn"),
    "sockets": ("socket.py", "selectors.py", "ssl.py"),
    "threads and locks": ("threading.py", "queue.py"),
    "decoder_api (sessions, routes, auth)": ("decoder_api/",),
}
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")
# Innermost functions where a thread waits rather than works (py-spy's idle detection misses them).
WAITING = ("EpollSelector.select", "Condition.wait", "_worker (", "SocketUnreader.chunk", "Base.receive")


def categorise(stack: list[str]) -> str:
    if stack and stack[-1].startswith(WAITING):
        return "waiting (select, condition, queue, socket read)"
    for frame in reversed(stack):
        for category, needles in CATEGORIES.items():
            if any(needle in frame for needle in needles):
                return category
    return "other"


def short_frame(frame: str) -> str:
    """``function (path:line)`` -> ``function (package/module.py)``."""
    match = FRAME.match(frame)
    return frame if match is None else f"{match['function']} ({'/'.join(Path(match['file']).parts[-2:])})"


def summarise_profile(raw: str, seconds: float, settings: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: share of samples per category and per innermost function."""
    categories: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if stack_text and count_text.isdigit():
            stack = [f for f in stack_text.split(";") if not f.startswith(("process ", "thread "))]
            categories[categorise(stack)] += int(count_text)
            if stack:
                functions[short_frame(stack[-1])] += int(count_text)
    total = sum(categories.values()) or 1
    return {
        "seconds": seconds,
        "samples": total,
        "settings": settings,
        "categories": [{"name": k, "share": v / total} for k, v in categories.most_common()],
        "functions": [{"name": k, "share": v / total} for k, v in functions.most_common(15)],
    }


def profile_service(py_spy: str, log_dir: Path, service_env: Mapping[str, str]) -> dict[str, Any]:
    callers, raw, seconds = 4, log_dir / "profile.txt", PROFILE_S
    speech = whole_chunks(korean_speech(seconds + 5), seconds + 5)
    redis = start_redis(log_dir / "redis")
    try:
        env = {**service_env, "REDIS_URL": redis.url}
        with start_decoder(log_dir, env, **SERVICE_SETTINGS, engine="vosk", model="ko") as server:
            http = Target(lambda: HttpSession(server.url), None)
            ws = Target(lambda: VoskStream(f"{server.ws_url}/v1/stream", VOSK_CONFIG), None)
            run_callers([[whole_chunks(speech, SIZES["vosk"].warmup_audio_s)]] * callers * 2, ws.session)
            command = [py_spy, "record", "--pid", str(server.worker_pid), "--format", "raw", "--rate", "250"]
            command += ["--duration", str(int(seconds)), "--output", str(raw), "--nonblocking"]
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)  # let py-spy attach before the load starts
            over_http = threading.Thread(target=call_round, args=(http, speech, callers, True))
            over_http.start()
            call_round(ws, speech, callers, paced=True)
            over_http.join()
            _, errors = recorder.communicate(timeout=seconds + 60)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')[-500:]}")
    finally:
        redis.stop()
    description = (
        f"Vosk (ko), Redis registry on, {callers} real-time callers over HTTP and {callers} over the "
        f"WebSocket, py-spy at 250 Hz for {seconds:.0f} s, active threads only"
    )
    return summarise_profile(raw.read_text(encoding="utf-8"), seconds, description)


CAPACITY_LABELS = {
    "bare_engine": "bare engine, in-process",
    "service_websocket": "service, WebSocket",
    "service_http": "service, HTTP v1",
}


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f} ({'meets' if ratio >= target else 'below'} {target:.2f})"


def overhead_rows(res: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for row in res["overhead"]:
        named = [("bare engine", row["bare"]), ("HTTP v1", row["http"]), ("WebSocket", row["websocket"])]
        for label, m in named + [(f"peer {k}", v) for k, v in row["peers"].items()]:
            ratio = "1.00" if label == "bare engine" else verdict(m["ratio"], OVERHEAD_TARGET)
            speed, latency = f"{m['throughput']:.2f}", f"{m['latency_mean_ms']:.1f}"
            rows.append([str(row["callers"]), label, speed, latency, ratio])
    return rows


def lag_cell(lag: Mapping[str, Any] | None) -> str:
    if not lag or not lag["published"]:
        return ""
    beyond = f"> {LAG_BUCKETS_S[-1]:g}"
    p50, p95 = (beyond if v is None else f"<= {v:g}" for v in (lag["p50_s"], lag["p95_s"]))
    return f"{lag['published']}: {p50} / {p95}"


OVERHEAD_HEADER = ["Callers", "Path", "Audio s per wall s", "Mean chunk latency (ms)", "Ratio to bare"]
CAPACITY_HEADER = ["Path", "Callers", "Ratio to bound", "Ratio to bare capacity"]
CAPACITY_HEADER += ["At that N: latency p50 / p95 (ms)", "First chunk p50 / max (ms)", "Peak RSS (MiB)"]
# One row per server of the live-call round: (path, its round).
LIVE_COLUMNS: list[Column] = [
    ("Path", lambda r: CAPACITY_LABELS.get(f"service_{r[0]}", r[0])),
    ("Audio s per call", lambda r: f"{r[1]['audio_s_per_caller']:g}"),
    ("Peak RSS (MiB)", lambda r: f"{r[1]['peak_rss_mib']:.0f}"),
    ("(Peak - RSS before any call) / calls (MiB)", lambda r: f"{r[1]['per_call_mib']:.1f}"),
    ("Latency p95 (ms), behind", lambda r: f"{r[1]['latency_p95_ms']:.0f}, {r[1]['behind']}"),
]
VERDICTS = {True: "pass", False: "fail", "latency": "", "keeping_up": " (no latency limit)"}
LATENCY_CELL = "{latency_p50_ms:.0f} / {latency_p95_ms:.0f} / {latency_max_ms:.0f}"
# One row per step of a search: (path, step).
STEP_COLUMNS: list[Column] = [
    ("Path", lambda r: CAPACITY_LABELS.get(r[0], r[0])),
    ("Callers", lambda r: str(r[1]["callers"])),
    ("Latency p50 / p95 / max (ms)", lambda r: LATENCY_CELL.format(**r[1])),
    ("Behind", lambda r: f"{r[1]['behind']} (max lag {r[1]['max_end_lag_s']:.2f} s)"),
    ("Errors", lambda r: str(r[1]["errors"])),
    ("Background partials: count, lag p50 / p95 (s)", lambda r: lag_cell(r[1].get("partial_lag"))),
    ("Verdict", lambda r: VERDICTS[r[1]["passed"]] + VERDICTS[r[1]["search"]]),
]


def engine_tables(res: Mapping[str, Any]) -> list[Any]:
    title = f"{res['engine']} ({res['model']}), {res['audio']}"
    audio = res["overhead"][0]["audio_s_per_caller"]
    rows = [["bare-engine bound", f"{res['bound']['callers']:.1f}", "1.00", "", "", "", ""]]
    for key, found in res["capacity"].items():
        at = next((s for s in found["steps"] if s["callers"] == found["callers"]), found["steps"][0])
        up, to_bare, rss = found["callers_keeping_up"], found["ratio_to_bare_engine"], found["peak_rss_mib"]
        more = "" if up is None else f" ({up} keep up with no latency limit)"
        label, ratio = CAPACITY_LABELS.get(key, key), verdict(found["ratio"], CAPACITY_TARGET)
        cells = [label, f"{found['callers']}{more}", ratio, "" if to_bare is None else f"{to_bare:.2f}"]
        cells += [f"{at['callers']}: {at['latency_p50_ms']:.0f} / {at['latency_p95_ms']:.0f}"]
        cells += [f"{at['first_chunk_p50_ms']:.0f} / {at['first_chunk_max_ms']:.0f}"]
        rows.append([*cells, "n/a" if rss is None else f"{rss:.0f}"])
    steps = [(key, step) for key, f in res["capacity"].items() for step in f["steps"]]
    fast = f"Overhead, {title}: {audio:g} s of audio per caller, as fast as possible"
    real_time = f"Capacity, {title}: real-time callers, p95 latency <= {P95_LIMIT_MS:.0f} ms, nobody behind"
    live_title = f"Memory per live call, {title}: {LIVE_CALLERS} real-time calls, the server's first"
    live = list(res.get("live_calls", {}).items())
    return [
        table(fast, OVERHEAD_HEADER, overhead_rows(res)),
        table(real_time, CAPACITY_HEADER, rows),
        column_table(f"Every step of the capacity search, {res['engine']}", STEP_COLUMNS, steps),
    ] + ([column_table(live_title, LIVE_COLUMNS, live)] if live else [])


def goal(target: float, ratio: float, targeted: bool) -> tuple[str, bool | None]:
    """The target and whether ``ratio`` meets it, for the service's paths (the peers carry none)."""
    return (f"ratio >= {target:.2f}", ratio >= target) if targeted else ("", None)


def headline_figures(engines: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
    """Throughput of each path against the bare engine at the same number of callers, and each
    capacity against the bound; the service's paths carry the targets, the peers are for comparison."""
    figures: list[Figure] = []
    for name, res in engines.items():
        for row in res["overhead"]:
            paths = [("HTTP v1", row["http"], True), ("WebSocket", row["websocket"], True)]
            for label, m, targeted in paths + [(f"peer {k}", m, False) for k, m in row["peers"].items()]:
                title = f"{name}: throughput over {label}, {row['callers']} callers"
                bare, met = row["bare"]["throughput"], goal(OVERHEAD_TARGET, m["ratio"], targeted)
                baseline = "bare engine, same callers"
                figures.append(figure(title, "audio s/s", m["throughput"], bare, baseline, "higher", *met))
        busiest = max(res["overhead"], key=lambda row: row["callers"])
        live, target = res.get("live_calls", {}), f"ratio <= {LIVE_RSS_TARGET:.2f}"
        for key, peer in [(k, m) for k, m in live.items() if k.startswith("peer ") and "websocket" in live]:
            ours, theirs = live["websocket"]["per_call_mib"], peer["per_call_mib"]
            met = ours <= LIVE_RSS_TARGET * theirs
            figures.append(
                figure(f"{name}: RSS per live call", "MiB", ours, theirs, key, "lower", target, met)
            )
        for key, found in res["capacity"].items():
            targeted = key.startswith("service_")
            title, callers = f"{name}: capacity, {CAPACITY_LABELS.get(key, key)}", float(found["callers"])
            if targeted and busiest["callers"] > res["bound"]["cores"]:
                # The bound takes each stream's cost with one stream per core; with many streams at once
                # each costs more: the bare engine's throughput then is the real-time callers it carries.
                streams = f"bare engine's audio s/s with {busiest['callers']} streams at once"
                many, bare = f"{title}, against many streams", busiest["bare"]["throughput"]
                figures.append(figure(many, "callers", callers, bare, streams, "higher"))
            met, bound = goal(CAPACITY_TARGET, found["ratio"], targeted), res["bound"]["callers"]
            figures.append(figure(title, "callers", callers, bound, "cores ÷ bare RTF", "higher", *met))
    return figures


def profile_tables(profile: Mapping[str, Any]) -> list[Any]:
    kinds = (("category", "Category", "categories", "{}"), ("function", "Function", "functions", "`{}`"))
    return [
        table(
            f"Where the service spends its time: {kind} (innermost frame)",
            [header, "Share of samples"],
            [[cell.format(r["name"]), f"{r['share'] * 100:.1f} %"] for r in profile[key]],
        )
        for kind, header, key, cell in kinds
    ]


def report(details: Mapping[str, Any], quick: bool, settings: Mapping[str, Any]) -> Result:
    tables, notes = [], []
    for res in details["engines"].values():
        tables += engine_tables(res)
        bound = res["bound"]
        idle = ", ".join(f"{k} {v:.0f} MiB" for k, v in res["idle_rss_mib"].items())
        notes.append(
            f"- {res['engine']}: bound {bound['cores']} cores / bare RTF {bound['bare_rtf']:.3f} = "
            f"{bound['callers']:.1f} callers. RSS after start, before any call: {idle}. The service's worker "
            f"runs on {res['service_allocator']}, the bare engine (in the benchmark's process) on "
            f"{res.get('bare_allocator', 'glibc')}."
        )
    if profile := details.get("profile"):
        tables += profile_tables(profile)
        notes.append(f"- Profile: {profile['settings']}; {profile['samples']} samples.")
    peers = settings["peers"]
    found, none = ", ".join(f"{k} at `{v}`" for k, v in peers.items()), "- No peer was given (`--peer-url`)"
    notes.append(f"- Peers: {found}" if peers else f"{none}, so this run has no peer rows.")
    figures, title = headline_figures(details["engines"]), "Service overhead and capacity per pod"
    return result("service", title, quick, settings, figures, details, tables, notes)


def run(args: argparse.Namespace) -> Result:
    peers, service_env = parse_peers(args.peer_url), env_items(args.service_env)
    on_serve_allocator(service_env)  # the bare engine, in this process, allocates as the service does
    py_spy = None if args.no_profile or args.quick else shutil.which("py-spy")
    if py_spy is None and not (args.quick or args.no_profile):
        logger.warning("py-spy not found: no profile (pip install py-spy)")
    names = [args.engine] if args.engine else ["vosk"] if args.quick else list(ENGINES)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        engines = {}
        for name in names:
            engines[name] = measure_engine(ENGINES[name], Path(tmp), args, peers if name == "vosk" else {})
        profile = profile_service(py_spy, Path(tmp), service_env) if py_spy else None
    settings: dict[str, Any] = {"chunk_ms": CHUNK_MS, "p95_limit_ms": P95_LIMIT_MS, "behind_s": BEHIND_S}
    settings |= {"overhead_target": OVERHEAD_TARGET, "capacity_target": CAPACITY_TARGET}
    settings |= {"live_callers": LIVE_CALLERS, "live_rss_target": LIVE_RSS_TARGET}
    settings |= {"peers": peers, "service_env": service_env}
    return report({"engines": engines, "profile": profile}, args.quick, settings)


OPTIONS: list[Option] = [
    ("--engine", {"choices": tuple(ENGINES), "help": "measure only this engine"}),
    ("--http-capacity", {"action": "store_true", "help": "capacity over HTTP v1 too (+~1.5 min)"}),
    ("--peer-url", {"action": "append", "default": [], "metavar": "[LABEL=]URL", "help": "a Vosk peer"}),
    SERVICE_ENV,
    ("--no-profile", {"action": "store_true", "help": "skip the profile"}),
]

if __name__ == "__main__":
    sys.exit(main("service", __doc__, OPTIONS, run))
