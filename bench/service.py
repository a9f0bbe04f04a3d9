"""Service overhead and capacity per pod, against the bare engine measured in the same run.

``python -m bench.service`` measures, for each engine (Vosk with the Korean model on espeak-ng Korean
speech, whisper tiny.en on the English calls of ``data/``):

* **Overhead**: N callers stream their audio as fast as the replies come, in 200 ms chunks, through
  the running service (``python -m decoder_api serve``) over the HTTP v1 API and over the WebSocket,
  and through the bare engine in this process (N threads, each with its own recognizer from a warm
  pool, no network). Throughput is audio seconds per wall second, all callers together; the ratio
  is service / bare (target >= 0.90).
* **Capacity**: callers paced in real time (a 200 ms chunk every 200 ms, each reply awaited). The
  capacity is the largest number of callers for which the p95 chunk latency (chunk sent -> reply
  received) stays under 300 ms and no caller falls behind real time, found by a search over N. It
  is compared with the bare-engine bound: usable cores / bare RTF, the bare RTF being each
  stream's decode time over its audio time while ``cores`` streams decode at once in-process
  (target >= 0.85 of the bound).
* For Vosk, the same callers and audio against the **reference peer**: vosk-server's design
  re-implemented in ``bench/peer_vosk_server.py`` (the original is not installable offline).
* With ``py-spy`` on the PATH (or ``--py-spy``), a sampling **profile** of the gunicorn worker under
  load, with a Redis registry, summarised by where the time goes.

Results go to ``--out`` as ``service.md`` and ``service.json``; the table is printed too.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

import requests
from rich.console import Console
from rich.table import Table

from bench import load
from bench.figures import Figure, figure
from bench.load import (
    BareStream,
    Capacity,
    HttpStream,
    PacedRun,
    RssSampler,
    ServerProcess,
    StreamFactory,
    UnpacedRun,
    WebSocketStream,
)
from bench.report import Machine, machine_info, markdown_table, rich_table, write_outputs
from bench.streams import DATA, english_speech, korean_speech
from decoder_api.config import load_settings
from decoder_api.engines import load_engine
from decoder_api.engines.base import Engine
from decoder_api.engines.pool import PoolSettings, RecognizerPool
from decoder_api.metrics import LAG_BUCKETS_S
from devtools import devstack

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
NAME = "service"
OVERHEAD_TARGET = 0.90
CAPACITY_TARGET = 0.85
P95_LIMIT_MS = 300.0
MAX_CALLERS = 60  # below DECODER_MAX_SESSIONS (64)
PEER_LABEL = "vosk-server design re-implemented in bench/ (the original is not installable offline)"
SERVICE_SETTINGS = {
    "session_rate_per_min": "0",  # the benchmark opens many sessions from one address
    "pool_max_idle": str(MAX_CALLERS),  # every caller of a step finds a warm recognizer at the next
    "log_level": "warning",
}


@dataclass(frozen=True, slots=True)
class EngineSpec:
    name: str
    model: str
    speech: Callable[[float], bytes]
    audio: str
    peer: bool


@dataclass(frozen=True, slots=True)
class Sizes:
    overhead_cores: dict[str, tuple[int, ...]]  # overhead callers as multiples of the cores, per engine
    overhead_audio_s: dict[str, float]  # per caller, per engine
    warmup_audio_s: dict[str, float]  # per caller, per engine: Vosk warms its graph cache on the whole clip
    capacity_audio_s: dict[str, float]  # per caller and step, per engine
    max_steps: int
    keeping_up_steps: int  # the search without a latency limit, when none met it (0: skipped)
    profile_s: float
    overhead_rounds: int  # the best of these rounds counts


CALL_FILES = tuple(sorted(path.name for path in DATA.glob("call*.wav")))
ENGINES = {
    "vosk": EngineSpec(
        "vosk",
        "ko",
        korean_speech,
        "espeak-ng Korean speech (sentences with pauses)",
        True,
    ),
    "whisper": EngineSpec(
        "whisper",
        "tiny.en",
        functools.partial(english_speech, files=CALL_FILES),
        "English calls of data/",
        False,
    ),
}
DEFAULT_SIZES = Sizes(
    overhead_cores={"vosk": (1, 4), "whisper": (1,)},
    overhead_audio_s={"vosk": 20.0, "whisper": 10.0},
    warmup_audio_s={"vosk": 20.0, "whisper": 3.0},
    capacity_audio_s={"vosk": 20.0, "whisper": 15.0},
    max_steps=5,
    keeping_up_steps=2,
    profile_s=15.0,
    overhead_rounds=2,
)
QUICK_SIZES = Sizes(
    overhead_cores={"vosk": (1,), "whisper": (1,)},
    overhead_audio_s={"vosk": 2.0, "whisper": 2.0},
    warmup_audio_s={"vosk": 1.0, "whisper": 1.0},
    capacity_audio_s={"vosk": 2.0, "whisper": 2.0},
    max_steps=1,
    keeping_up_steps=0,
    profile_s=0.0,
    overhead_rounds=1,
)


class Throughput(TypedDict):
    throughput: float  # audio seconds per wall second, all callers
    wall_s: float
    latency_mean_ms: float
    client_cpu_s: float
    errors: int
    ratio: float  # throughput / bare throughput at the same number of callers


class OverheadRow(TypedDict):
    callers: int
    audio_s_per_caller: float
    bare: Throughput
    http: Throughput
    websocket: Throughput
    peer: Throughput | None


class Bound(TypedDict):
    cores: int
    bare_rtf: float  # per stream, with ``cores`` streams decoding at once
    callers: float  # cores / bare_rtf


class CapacityResult(TypedDict):
    callers: int  # p95 latency within the limit and nobody behind
    ratio: float  # callers / bound
    ratio_to_bare_engine: float | None  # callers / the bare engine's capacity (same search, in-process)
    callers_keeping_up: int | None  # nobody behind, latency unbounded; searched only when ``callers`` is 0
    steps: list[dict[str, Any]]
    peak_rss_mib: float


class EngineReport(TypedDict):
    engine: str
    model: str
    audio: str
    overhead: list[OverheadRow]
    bound: Bound
    capacity: dict[str, CapacityResult]  # service_websocket, service_http, peer_websocket
    idle_rss_mib: dict[str, float]  # service, peer: after start, before any call
    service_allocator: str  # the gunicorn worker's: jemalloc (preloaded) or glibc with its arena count


class ProfileRow(TypedDict):
    name: str
    share: float  # of all samples of active threads


class Profile(TypedDict):
    seconds: float
    samples: int
    settings: str
    categories: list[ProfileRow]
    functions: list[ProfileRow]  # where the samples were taken (innermost frame)


class Report(TypedDict):
    name: str
    quick: bool
    chunk_ms: int
    p95_limit_ms: float
    behind_s: float
    targets: dict[str, float]
    peer: str
    machine: Machine
    load_average_1min: tuple[float, float]
    engines: dict[str, EngineReport]
    profile: Profile | None
    service_env: dict[str, str]  # extra environment given to the service (--service-env)
    figures: list[Figure]  # the headline figures, each beside its baseline (bench.plot, bench.summary)


# --- Measurements -----------------------------------------------------------------------------


def throughput(run: UnpacedRun, baseline: UnpacedRun | None) -> Throughput:
    return Throughput(
        throughput=run.throughput,
        wall_s=run.wall_s,
        latency_mean_ms=run.latency_mean_ms,
        client_cpu_s=run.client_cpu_s,
        errors=run.errors,
        ratio=run.throughput / baseline.throughput if baseline else 1.0,
    )


def unpaced(factory: StreamFactory, speech: bytes, callers: int, warmup: bytes | None) -> UnpacedRun:
    """One warm-up round (fills the pool with warm recognizers), then the measured round."""
    if warmup is not None:
        load.run_unpaced(factory, [warmup] * callers)
    return load.run_unpaced(factory, [load.rotated(speech, n, callers) for n in range(callers)])


LAG_METRIC = "decoder_partial_lag_seconds"


def lag_buckets(metrics_url: str) -> dict[float, float]:
    """The service's cumulative partial-lag histogram: upper bound (s) -> partials published."""
    text = requests.get(metrics_url, timeout=10).text
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{LAG_METRIC}_bucket{{"):
            name, value = line.rsplit(" ", 1)
            bound = name.split('le="', 1)[1].split('"', 1)[0]
            buckets[math.inf if bound == "+Inf" else float(bound)] = float(value)
    return buckets


def lag_quantile(before: Mapping[float, float], after: Mapping[float, float], q: float) -> float | None:
    """The bucket bound (s) that the ``q`` quantile of the partials published in between falls under;
    None when none was published or it is beyond the largest finite bound."""
    cumulative = sorted((bound, count - before.get(bound, 0.0)) for bound, count in after.items())
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return None
    found = next(bound for bound, count in cumulative if count >= q * total)
    return None if found == math.inf else found


class PartialLag(TypedDict):
    published: int  # background partials published during the step
    p50_s: float | None  # bucket bounds: the lag is at most this (None: beyond the largest)
    p95_s: float | None


def partial_lag(before: Mapping[float, float], after: Mapping[float, float]) -> PartialLag:
    published = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    return PartialLag(
        published=round(published),
        p50_s=lag_quantile(before, after, 0.50),
        p95_s=lag_quantile(before, after, 0.95),
    )


def capacity(
    factory: StreamFactory,
    speech: bytes,
    bound: float,
    sizes: Sizes,
    warm: Callable[[int], None],
    pid: int,
    metrics_url: str | None = None,
) -> CapacityResult:
    """The capacity search on one path; ``metrics_url`` (the service's) adds each step's partial lag."""
    lags: dict[int, PartialLag] = {}

    def probe(callers: int) -> PacedRun:
        warm(callers)
        before = lag_buckets(metrics_url) if metrics_url else {}
        run = load.run_paced(factory, speech, callers)
        if metrics_url:
            lags[len(lags)] = partial_lag(before, lag_buckets(metrics_url))
        logger.info(
            "  %d callers: p95 %.0f ms, behind %d, errors %d",
            callers,
            run.latency_p95_ms,
            run.behind,
            run.errors,
        )
        return run

    start = min(MAX_CALLERS, max(1, int(bound * CAPACITY_TARGET)))
    keeping_up: Capacity | None = None
    with RssSampler(pid) as rss:
        found: Capacity = load.search_capacity(probe, start, P95_LIMIT_MS, sizes.max_steps, MAX_CALLERS)
        if found.callers == 0 and sizes.keeping_up_steps:  # none within the latency limit: do any keep up?
            logger.info("  no caller within %.0f ms; searching without the latency limit", P95_LIMIT_MS)
            keeping_up = load.search_capacity(probe, 1, math.inf, sizes.keeping_up_steps, MAX_CALLERS)
    steps = [
        asdict(step) | {"search": "latency", "passed": step.passes(P95_LIMIT_MS)} for step in found.steps
    ]
    if keeping_up is not None:
        steps += [
            asdict(step) | {"search": "keeping_up", "passed": step.passes(math.inf)}
            for step in keeping_up.steps
        ]
    for n, step in enumerate(steps):  # probes ran in this order
        step["partial_lag"] = lags.get(n)
    return CapacityResult(
        callers=found.callers,
        ratio=found.callers / bound,
        ratio_to_bare_engine=None,
        callers_keeping_up=keeping_up.callers if keeping_up is not None else None,
        steps=steps,
        peak_rss_mib=rss.peak_mib,
    )


class Warmer:
    """Before a capacity step, a short unpaced round: the service's pool then holds a warm recognizer
    for every caller."""

    def __init__(self, factory: StreamFactory, warmup: bytes, already: int) -> None:
        self._factory = factory
        self._warmup = warmup
        self.warmed = already

    def __call__(self, callers: int) -> None:
        if callers > self.warmed:
            load.run_unpaced(self._factory, [self._warmup] * callers)
            self.warmed = callers


def process_allocator(environ: Mapping[str, str]) -> str:
    """Which malloc a process with this environment uses."""
    if "jemalloc" in environ.get("LD_PRELOAD", ""):
        return "jemalloc (preloaded)"
    return f"glibc malloc, MALLOC_ARENA_MAX={environ.get('MALLOC_ARENA_MAX', 'glibc default')}"


def worker_allocator(pid: int) -> str:
    environ = {name: load.environ_of(pid, name) or "" for name in ("LD_PRELOAD", "MALLOC_ARENA_MAX")}
    return process_allocator({k: v for k, v in environ.items() if v})


def bare_engine(spec: EngineSpec) -> Engine:
    settings = load_settings(os.environ, {"engine": spec.name, "model": spec.model})
    return load_engine(settings)


def measure_engine(
    spec: EngineSpec,
    sizes: Sizes,
    log_dir: Path,
    http_capacity: bool,
    extra_callers: Sequence[int] = (),
    service_env: Mapping[str, str] | None = None,
) -> EngineReport:
    """Bare engine, service and peer side by side: servers started together, overhead paths interleaved."""
    cores = len(os.sched_getaffinity(0))
    counts = sorted({cores, *(cores * k for k in sizes.overhead_cores[spec.name]), *extra_callers})
    capacity_paths = ("websocket", "http") if http_capacity else ("websocket",)
    overhead_s = sizes.overhead_audio_s[spec.name]
    speech = spec.speech(max(overhead_s, sizes.capacity_audio_s[spec.name]))
    overhead_speech = load.repeated_to(speech, overhead_s)
    capacity_speech = load.repeated_to(speech, sizes.capacity_audio_s[spec.name])
    warmup = load.repeated_to(speech, sizes.warmup_audio_s[spec.name])
    settings = SERVICE_SETTINGS | {"engine": spec.name, "model": spec.model}
    service = load.decoder_service(log_dir, settings, service_env)
    peer = peer_server(log_dir) if spec.peer else None
    with contextlib.ExitStack() as servers:
        for server in (service, peer):
            if server is not None:
                servers.callback(server.stop)
                server.launch()  # the servers load their models while this process loads its own
        engine = bare_engine(spec)
        pool = RecognizerPool(engine, PoolSettings(max_idle=MAX_CALLERS, warm=0))
        for server in (service, peer):
            if server is not None:
                server.wait_ready()
        allocator = worker_allocator(load.process_tree(service.pid)[-1])
        idle = {"service": load.rss_mib(service.pid)} | ({"peer": load.rss_mib(peer.pid)} if peer else {})
        port = load.port_of(service)
        paths: dict[str, StreamFactory] = {
            "bare": lambda: BareStream(pool),
            "http": lambda: HttpStream(f"http://127.0.0.1:{port}"),
            "websocket": lambda: WebSocketStream(f"ws://127.0.0.1:{port}/v1/stream"),
        }
        if peer is not None:
            paths["peer"] = peer_factory(peer)
        best = overhead_rounds(spec.name, paths, counts, overhead_speech, warmup, sizes.overhead_rounds)
        rtf = best["bare"][cores].wall_s / overhead_s
        bound = Bound(cores=cores, bare_rtf=rtf, callers=cores / rtf)
        found: dict[str, CapacityResult] = {}
        logger.info("%s: capacity of the bare engine (bound %.1f)", spec.name, bound["callers"])
        bare_warmer = Warmer(paths["bare"], warmup, max(counts))
        found["bare_engine"] = capacity(
            paths["bare"], capacity_speech, bound["callers"], sizes, bare_warmer, os.getpid()
        )
        pool.close()
        engine.close()
        warmer = Warmer(paths["websocket"], warmup, max(counts))
        for path in capacity_paths:
            logger.info("%s: capacity of the service over %s (bound %.1f)", spec.name, path, bound["callers"])
            found[f"service_{path}"] = capacity(
                paths[path],
                capacity_speech,
                bound["callers"],
                sizes,
                warmer,
                service.pid,
                f"http://127.0.0.1:{port}/metrics",
            )
        if peer is not None:
            logger.info("%s: capacity of the peer (bound %.1f)", spec.name, bound["callers"])
            found["peer_websocket"] = capacity(
                paths["peer"], capacity_speech, bound["callers"], sizes, lambda n: None, peer.pid
            )
    bare_capacity = found["bare_engine"]["callers"]
    for key, result in found.items():
        if key != "bare_engine" and bare_capacity > 0:
            result["ratio_to_bare_engine"] = result["callers"] / bare_capacity
    rows = [
        OverheadRow(
            callers=n,
            audio_s_per_caller=overhead_s,
            bare=throughput(best["bare"][n], None),
            http=throughput(best["http"][n], best["bare"][n]),
            websocket=throughput(best["websocket"][n], best["bare"][n]),
            peer=throughput(best["peer"][n], best["bare"][n]) if "peer" in best else None,
        )
        for n in counts
    ]
    return EngineReport(
        engine=spec.name,
        model=spec.model,
        audio=spec.audio,
        overhead=rows,
        bound=bound,
        capacity=found,
        idle_rss_mib=idle,
        service_allocator=allocator,
    )


def overhead_rounds(
    engine: str,
    paths: dict[str, StreamFactory],
    counts: list[int],
    speech: bytes,
    warmup: bytes,
    rounds: int,
) -> dict[str, dict[int, UnpacedRun]]:
    """``rounds`` rounds of every path at every number of callers, interleaved; the best of each.

    Interleaving spreads other work on the machine over all paths alike, and the best round is the
    one least disturbed by it. The first round of each path and number of callers is preceded by a
    warm-up round (the peer has no pool to warm: it pays for new recognizers in every round).
    """
    best: dict[str, dict[int, UnpacedRun]] = {path: {} for path in paths}
    for round_ in range(rounds):
        for n in counts:
            for path, factory in paths.items():
                logger.info("%s: overhead round %d, %s, %d callers", engine, round_ + 1, path, n)
                first = round_ == 0 and path != "peer"
                run = unpaced(factory, speech, n, warmup if first else None)
                if n not in best[path] or run.throughput > best[path][n].throughput:
                    best[path][n] = run
    return best


def peer_server(log_dir: Path) -> ServerProcess:
    port = load.free_port()
    argv = [sys.executable, "-m", "bench.peer_vosk_server", "--port", str(port)]
    return ServerProcess("peer", argv, {}, log_dir / f"peer-{port}.log", load.tcp_ready(port))


def peer_factory(peer: ServerProcess) -> StreamFactory:
    port = load.port_of(peer)
    return lambda: WebSocketStream(f"ws://127.0.0.1:{port}")


# --- Profile ----------------------------------------------------------------------------------

# Innermost frame's file (or function) -> what it is; first match wins, checked from the leaf up.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("vosk/__init__.py", "Kaldi decode (vosk C calls)"),
    ("ctranslate2", "whisper decode"),
    ("faster_whisper", "whisper decode"),
    ("decoder_api/engines/vosk.py", "engine wrapper (dither, Vosk JSON)"),
    ("decoder_api/engines/", "engine wrapper"),
    ("numpy", "engine wrapper (dither, Vosk JSON)"),
    ("redis/", "Redis registry"),
    ("decoder_api/sessions/registry.py", "Redis registry"),
    ("prometheus_client", "metrics"),
    ("json/", "JSON"),
    ("simple_websocket", "WebSocket layer"),
    ("wsproto", "WebSocket layer"),
    ("werkzeug", "HTTP layer (werkzeug/flask/gunicorn)"),
    ("flask", "HTTP layer (werkzeug/flask/gunicorn)"),
    ("gunicorn", "HTTP layer (werkzeug/flask/gunicorn)"),
    ("socket.py", "sockets"),
    ("selectors.py", "sockets"),
    ("ssl.py", "sockets"),
    ("threading.py", "threads and locks"),
    ("queue.py", "threads and locks"),
    ("decoder_api/", "decoder_api (sessions, routes, auth)"),
)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")
PROFILE_TOP = 15


# Innermost functions where a thread waits rather than works (py-spy's idle detection misses them).
WAITING = ("EpollSelector.select", "Condition.wait", "_worker (", "SocketUnreader.chunk", "Base.receive")


def categorise(stack: list[str]) -> str:
    if stack and stack[-1].startswith(WAITING):
        return "waiting (select, condition, queue, socket read)"
    for frame in reversed(stack):
        for needle, category in CATEGORIES:
            if needle in frame:
                return category
    return "other"


def short_frame(frame: str) -> str:
    """``function (path:line)`` -> ``function (package/module.py)``."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    parts = Path(match["file"]).parts
    return f"{match['function']} ({'/'.join(parts[-2:])})"


def summarise_profile(raw: str, seconds: float, settings: str) -> Profile:
    """py-spy's raw (collapsed) stacks: share of samples per category and per innermost function."""
    categories: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        stack = [f for f in stack_text.split(";") if not f.startswith(("process ", "thread "))]
        count = int(count_text)
        categories[categorise(stack)] += count
        if stack:
            functions[short_frame(stack[-1])] += count
    total = sum(categories.values()) or 1
    return Profile(
        seconds=seconds,
        samples=total,
        settings=settings,
        categories=[ProfileRow(name=k, share=v / total) for k, v in categories.most_common()],
        functions=[ProfileRow(name=k, share=v / total) for k, v in functions.most_common(PROFILE_TOP)],
    )


def worker_pid(server: ServerProcess) -> int:
    """The gunicorn worker: the deepest process under the server (master -> worker)."""
    return load.process_tree(server.pid)[-1]


@contextmanager
def redis_server(log_dir: Path) -> Iterator[str]:
    port = load.free_port()
    process = devstack.start_redis(port, log_dir / f"redis-{port}.log")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        devstack.wait_for_redis(url, process=process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def profile_service(py_spy: str, sizes: Sizes, log_dir: Path, service_env: Mapping[str, str]) -> Profile:
    """Vosk behind the service with a Redis registry, 4 callers over HTTP and 4 over the WebSocket."""
    spec = ENGINES["vosk"]
    callers = 4
    speech = spec.speech(sizes.profile_s + 5)
    raw = log_dir / "profile.txt"
    with redis_server(log_dir) as redis_url:
        settings = SERVICE_SETTINGS | {"engine": spec.name, "model": spec.model}
        server = load.decoder_service(log_dir, settings, {**service_env, "REDIS_URL": redis_url})
        with server:
            port = load.port_of(server)
            http_factory: StreamFactory = lambda: HttpStream(f"http://127.0.0.1:{port}")  # noqa: E731
            ws_factory: StreamFactory = lambda: WebSocketStream(f"ws://127.0.0.1:{port}/v1/stream")  # noqa: E731
            load.run_unpaced(
                ws_factory, [load.repeated_to(speech, sizes.warmup_audio_s["vosk"])] * callers * 2
            )
            command = [py_spy, "record", "--pid", str(worker_pid(server)), "--format", "raw", "--rate", "250"]
            command += ["--duration", str(int(sizes.profile_s)), "--output", str(raw), "--nonblocking"]
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)  # let py-spy attach before the load starts
            paced_http = threading.Thread(target=load.run_paced, args=(http_factory, speech, callers))
            paced_http.start()
            load.run_paced(ws_factory, speech, callers)
            paced_http.join()
            _, errors = recorder.communicate(timeout=sizes.profile_s + 60)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')[-500:]}")
    description = (
        f"Vosk (ko), Redis registry on, {callers} real-time callers over HTTP and {callers} over the "
        f"WebSocket, py-spy at 250 Hz for {sizes.profile_s:.0f} s, active threads only"
    )
    return summarise_profile(raw.read_text(encoding="utf-8"), sizes.profile_s, description)


# --- Report -----------------------------------------------------------------------------------


def f1(value: float) -> str:
    return f"{value:.1f}"


def f2(value: float) -> str:
    return f"{value:.2f}"


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f} ({'meets' if ratio >= target else 'below'} {target:.2f})"


def overhead_rows(result: EngineReport) -> list[list[str]]:
    rows = []
    for row in result["overhead"]:
        bare = row["bare"]
        rows.append(
            [f"{row['callers']}", "bare engine", f2(bare["throughput"]), f1(bare["latency_mean_ms"]), "1.00"]
        )
        named = [("HTTP v1", row["http"]), ("WebSocket", row["websocket"])]
        if row["peer"] is not None:
            named.append(("peer (vosk-server design)", row["peer"]))
        for label, measured in named:
            rows.append(
                [
                    f"{row['callers']}",
                    label,
                    f2(measured["throughput"]),
                    f1(measured["latency_mean_ms"]),
                    verdict(measured["ratio"], OVERHEAD_TARGET),
                ]
            )
    return rows


CAPACITY_LABELS = {
    "bare_engine": "bare engine, in-process",
    "service_websocket": "service, WebSocket",
    "service_http": "service, HTTP v1",
    "peer_websocket": "peer (vosk-server design)",
}


def capacity_rows(result: EngineReport) -> list[list[str]]:
    bound = result["bound"]
    rows = [["bare-engine bound", f1(bound["callers"]), "1.00", "", "", "", ""]]
    for key, found in result["capacity"].items():
        best = [s for s in found["steps"] if s["callers"] == found["callers"]]
        step = best[0] if best else found["steps"][0]
        callers = str(found["callers"])
        if found["callers_keeping_up"] is not None:
            callers += f" ({found['callers_keeping_up']} keep up with no latency limit)"
        rows.append(
            [
                CAPACITY_LABELS[key],
                callers,
                verdict(found["ratio"], CAPACITY_TARGET),
                "" if found["ratio_to_bare_engine"] is None else f2(found["ratio_to_bare_engine"]),
                f"{step['callers']}: {step['latency_p50_ms']:.0f} / {step['latency_p95_ms']:.0f}",
                f"{step['first_chunk_p50_ms']:.0f} / {step['first_chunk_max_ms']:.0f}",
                f"{found['peak_rss_mib']:.0f}",
            ]
        )
    return rows


def lag_cell(lag: PartialLag | None) -> str:
    if not lag or not lag["published"]:
        return ""
    beyond = f"> {LAG_BUCKETS_S[-1]:g}"
    p50, p95 = (f"<= {v:g}" if v is not None else beyond for v in (lag["p50_s"], lag["p95_s"]))
    return f"{lag['published']}: {p50} / {p95}"


def step_rows(result: EngineReport) -> list[list[str]]:
    return [
        [
            CAPACITY_LABELS[key],
            str(step["callers"]),
            f"{step['latency_p50_ms']:.0f} / {step['latency_p95_ms']:.0f} / {step['latency_max_ms']:.0f}",
            f"{step['behind']} (max lag {step['max_end_lag_s']:.2f} s)",
            str(step["errors"]),
            lag_cell(step.get("partial_lag")),
            ("pass" if step["passed"] else "fail")
            + (" (no latency limit)" if step["search"] == "keeping_up" else ""),
        ]
        for key, found in result["capacity"].items()
        for step in found["steps"]
    ]


OVERHEAD_HEADER = ["Callers", "Path", "Audio s per wall s", "Mean chunk latency (ms)", "Ratio to bare"]
CAPACITY_HEADER = [
    "Path",
    "Callers",
    "Ratio to bound",
    "Ratio to bare capacity",
    "At that N: latency p50 / p95 (ms)",
    "First chunk p50 / max (ms)",
    "Peak RSS (MiB)",
]
STEP_HEADER = [
    "Path",
    "Callers",
    "Latency p50 / p95 / max (ms)",
    "Behind",
    "Errors",
    "Background partials: count, lag p50 / p95 (s)",
    "Verdict",
]


def render_markdown(report: Report) -> str:
    machine = report["machine"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    lines = [
        "# Service overhead and capacity per pod" + (" (quick: tiny sizes)" if report["quick"] else ""),
        "",
        f"Measured with `python -m bench.service` on {machine['date']}.",
        "",
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['platform']}; load average (1 min) before / after: "
        + " / ".join(f2(v) for v in report["load_average_1min"]),
        f"- **Software:** Python {machine['python']}; {libraries}",
        f"- **Peer:** {report['peer']}",
        f"- **Chunks:** {report['chunk_ms']} ms of 16 kHz PCM; targets: service/bare throughput >= "
        f"{report['targets']['overhead']:.2f}, capacity >= {report['targets']['capacity']:.2f} of the bound",
    ]
    for result in report["engines"].values():
        bound = result["bound"]
        idle = ", ".join(f"{k} {v:.0f} MiB" for k, v in result["idle_rss_mib"].items())
        lines += [
            "",
            f"## {result['engine']} ({result['model']}), {result['audio']}",
            "",
            f"### Overhead: {result['overhead'][0]['audio_s_per_caller']:.0f} s of audio per caller, "
            "as fast as possible",
            "",
            *markdown_table(OVERHEAD_HEADER, overhead_rows(result)),
            "",
            f"### Capacity: real-time callers, p95 latency <= {report['p95_limit_ms']:.0f} ms, nobody behind",
            "",
            f"Bound: {bound['cores']} cores / bare RTF {bound['bare_rtf']:.3f} (each stream's, with "
            f"{bound['cores']} decoding at once) = {bound['callers']:.1f} callers. RSS after start, "
            f"before any call: {idle}. The service's worker runs on "
            f"{result['service_allocator']}; the benchmark's own process (the bare engine) on "
            f"{process_allocator(dict(os.environ))}.",
            "",
            *markdown_table(CAPACITY_HEADER, capacity_rows(result)),
            "",
            "Every step of the search:",
            "",
            *markdown_table(STEP_HEADER, step_rows(result)),
        ]
    if report["profile"] is not None:
        lines += profile_markdown(report["profile"])
    lines += ["", "## How to read it", "", *NOTES]
    return "\n".join(lines) + "\n"


def profile_markdown(profile: Profile) -> list[str]:
    return [
        "",
        "## Where the service spends its time",
        "",
        f"{profile['settings']}; {profile['samples']} samples.",
        "",
        *markdown_table(
            ["Category (innermost frame)", "Share of samples"],
            [[row["name"], f"{row['share'] * 100:.1f} %"] for row in profile["categories"]],
        ),
        "",
        *markdown_table(
            ["Function (innermost frame)", "Share of samples"],
            [[f"`{row['name']}`", f"{row['share'] * 100:.1f} %"] for row in profile["functions"]],
        ),
    ]


NOTES = [
    "- Throughput is audio seconds decoded per wall second by all callers together, from their common "
    "start to the last one's end (opening and ending each call included). The bare engine runs in the "
    "benchmark's process: one thread per caller, each with its own recognizer from a warm pool (the "
    "service's pool), 200 ms chunks through `accept` + `partial`, no network. Before each measured round a "
    "short round of the same callers warms the pool, for the bare engine and the service alike.",
    "- The service is `python -m decoder_api serve` (gunicorn, one worker, threads) without Redis or Kafka; "
    "its clients run in the benchmark's process on the same cores (a keep-alive `http.client` connection "
    "per HTTP caller, `websocket-client` per WebSocket caller), so the ratio also pays for the client's CPU.",
    f"- The peer is the {PEER_LABEL}: a `websockets` asyncio server, one shared `Model`, a new "
    "`KaldiRecognizer` per connection, each message decoded with `run_in_executor` on a pool of "
    "`os.cpu_count()` threads, the same JSON protocol. It creates a recognizer per call, so its numbers "
    "include the warm-up of each new recognizer that our service's pool avoids; it keeps Kaldi's own dither.",
    "- Capacity: each caller sends a 200 ms chunk every 200 ms of wall time and waits for its reply; "
    "the callers start spread over one chunk period. Latency is chunk sent -> reply received. A caller "
    f"is behind when its last reply comes over {load.BEHIND_S:.1f} s after its audio ended. The search "
    "starts at 0.85 x the bound, grows by x1.5 (or shrinks by x0.6) until the verdict flips, then "
    "bisects, within a fixed number of steps.",
    "- The bound is usable cores / bare RTF, the bare RTF being each stream's decode wall time over its "
    "audio time while as many streams as cores decode at once in-process; i.e. the real-time streams the "
    "cores could carry with nothing but the engine. It assumes the cores can be kept 100 % busy, which a "
    "latency limit does not allow; the *bare engine, in-process* row is the same capacity search run on "
    "the engine alone (paced `BareStream` callers, no network), the practical ceiling the service is "
    "compared with in *Ratio to bare capacity*. The bound also takes each stream's cost with one stream "
    "per core: with many streams interleaved, each stream's recognizer brings its own decoding-graph cache "
    "through the CPU caches and costs more, so the summary also sets each service capacity beside the "
    "bare engine's throughput with the largest number of streams of the overhead table (audio s per "
    "wall s: the real-time callers it could carry at that concurrency).",
    "- Whisper re-decodes the open utterance for a partial once per second of audio. The service does that "
    "on a background thread (`DECODER_WHISPER_BACKGROUND_PARTIALS`, on by default): a chunk is answered at "
    "once with the newest partial already decoded, so the reply latency above no longer includes a "
    "decode, and how stale a partial is shows in its own column: *lag* is the audio the stream had "
    "moved on since the audio a partial covers, when it was published (from the service's "
    "`decoder_partial_lag_seconds` histogram, as bucket bounds); under load partials come less often "
    "and cover more audio each, and replies stay fast.",
    "- When not even one caller meets the latency limit, a second search without it says how many callers "
    "keep up with real time.",
    "- RSS is of the server's whole process tree (gunicorn master + worker), sampled every 0.25 s; for the "
    "bare engine it is the benchmark's own process (the model, recognizers and the clients' threads).",
    "- The service runs as `python -m decoder_api serve` starts it, including its allocator "
    "(`DECODER_ALLOCATOR`, shown per engine above); `--service-env DECODER_ALLOCATOR=glibc` (any "
    "KEY=VALUE) measures it with another. Kaldi allocates on every chunk from many threads: glibc with "
    "few arenas costs latency under load, jemalloc does not. The bare engine runs in this process, "
    "on glibc's allocator, so a service on jemalloc can beat it.",
    "- Overhead and capacity of the service over HTTP v1 use one keep-alive connection per caller; "
    "`--http-capacity` adds the HTTP capacity search (off by default to keep the run short).",
    "- Numbers on a machine shared with other work are noisy: compare ratios measured in the same run.",
]


def print_tables(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    for result in report["engines"].values():
        title = f"{result['engine']} ({result['model']})"
        for name, header, rows in (
            (f"Overhead, {title}", OVERHEAD_HEADER, overhead_rows(result)),
            (f"Capacity per pod, {title}", CAPACITY_HEADER, capacity_rows(result)),
        ):
            console.print(rich_table(name + (" (quick)" if report["quick"] else ""), header, rows, {0, 1}))
    if report["profile"] is not None:
        table = Table(title="Profile of the service under load")
        table.add_column("Category")
        table.add_column("Share", justify="right")
        for category in report["profile"]["categories"]:
            table.add_row(category["name"], f"{category['share'] * 100:.1f} %")
        console.print(table)


CAPACITY_LABELS = {
    "bare_engine": "bare engine, in-process",
    "service_websocket": "service, WebSocket",
    "service_http": "service, HTTP v1",
    "peer_websocket": "peer (vosk-server design)",
}
PATH_LABELS = {"http": "HTTP v1", "websocket": "WebSocket", "peer": "peer (vosk-server design)"}


def headline_figures(engines: Mapping[str, EngineReport]) -> list[Figure]:
    """Throughput of each path against the bare engine at the same number of callers, and each
    capacity against the bound; the service's paths carry the targets, the peer is for comparison."""
    figures: list[Figure] = []
    for name, result in engines.items():
        for row in result["overhead"]:
            paths = {"http": row["http"], "websocket": row["websocket"], "peer": row["peer"]}
            for path, measured in paths.items():
                label = PATH_LABELS[path]
                if measured is None:
                    continue
                targeted = path != "peer"
                figures.append(
                    figure(
                        f"{name}: throughput over {label}, {row['callers']} callers",
                        "audio s/s",
                        measured["throughput"],
                        row["bare"]["throughput"],
                        "bare engine, same callers",
                        better="higher",
                        target=f"ratio >= {OVERHEAD_TARGET:.2f}" if targeted else "",
                        met=measured["ratio"] >= OVERHEAD_TARGET if targeted else None,
                    )
                )
        busiest = max(result["overhead"], key=lambda row: row["callers"], default=None)
        for key, found in result["capacity"].items():
            targeted = key.startswith("service_")
            title, callers = f"{name}: capacity, {CAPACITY_LABELS.get(key, key)}", float(found["callers"])
            if targeted and busiest is not None and busiest["callers"] > result["bound"]["cores"]:
                # The bound assumes each stream costs what it costs with one stream per core; with
                # many streams interleaved each costs more. The bare engine's own throughput with
                # that many streams at once is how many real-time callers it could carry.
                streams = f"bare engine's audio s/s with {busiest['callers']} streams at once"
                many = busiest["bare"]["throughput"]
                against = f"{title}, against many streams"
                figures.append(figure(against, "callers", callers, many, streams, "higher"))
            figures.append(
                figure(
                    title,
                    "callers",
                    callers,
                    result["bound"]["callers"],
                    "cores ÷ bare RTF",
                    better="higher",
                    target=f"ratio >= {CAPACITY_TARGET:.2f}" if targeted else "",
                    met=found["ratio"] >= CAPACITY_TARGET if targeted else None,
                )
            )
    return figures


def write_report(report: Report, out: Path) -> list[Path]:
    return write_outputs(out, NAME, render_markdown(report), report)


# --- Entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (bench/results)")
    parser.add_argument("--engine", choices=tuple(ENGINES), help="measure only this engine")
    parser.add_argument(
        "--callers",
        type=int,
        nargs="*",
        default=[],
        help="overhead: more numbers of callers (besides cores, and 4 x cores for Vosk)",
    )
    parser.add_argument("--http-capacity", action="store_true", help="capacity over HTTP v1 too (+~1.5 min)")
    parser.add_argument(
        "--service-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service, e.g. MALLOC_ARENA_MAX=16",
    )
    parser.add_argument("--py-spy", help="py-spy executable for the profile (default: py-spy on the PATH)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    names = [args.engine] if args.engine else list(ENGINES)
    py_spy = None if args.no_profile or args.quick else (args.py_spy or shutil.which("py-spy"))
    service_env = dict(item.split("=", 1) for item in args.service_env if "=" in item)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        log_dir = Path(tmp)
        engines = {
            name: measure_engine(ENGINES[name], sizes, log_dir, args.http_capacity, args.callers, service_env)
            for name in names
        }
        profile = None
        if py_spy is not None:
            logger.info("profiling the service with %s", py_spy)
            profile = profile_service(py_spy, sizes, log_dir, service_env)
        elif not args.quick and not args.no_profile:
            logger.warning("py-spy not found: no profile (pip install py-spy, or --py-spy PATH)")
    report = Report(
        name=NAME,
        quick=args.quick,
        chunk_ms=load.CHUNK_MS,
        p95_limit_ms=P95_LIMIT_MS,
        behind_s=load.BEHIND_S,
        targets={"overhead": OVERHEAD_TARGET, "capacity": CAPACITY_TARGET},
        peer=PEER_LABEL,
        machine=machine_info(),
        load_average_1min=(load_before, os.getloadavg()[0]),
        engines=engines,
        profile=profile,
        service_env=service_env,
        figures=headline_figures(engines),
    )
    for path in write_report(report, args.out):
        logger.info("wrote %s", path)
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
