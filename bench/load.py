"""Load for the service benchmarks: audio, one client per transport, server processes, two drivers.

Every transport is a ``Stream``: the native HTTP API (``/v1/sessions``), the Vosk-protocol
WebSocket (our ``/v1/stream`` or the re-implemented vosk-server peer) and the bare engine in this
process (a recognizer borrowed from a ``RecognizerPool``, no network). The drivers run one thread
per caller over any of them:

* ``run_unpaced``: every caller sends its chunks as fast as the replies come back (throughput);
* ``run_paced``: every caller sends a chunk each ``CHUNK_MS`` of wall time, as a live call does,
  and times each reply (latency, keeping up with real time).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import websocket

from bench.figures import percentile
from decoder_api.engines.base import RecognizerOptions
from decoder_api.engines.pool import RecognizerPool

ROOT = Path(__file__).resolve().parent.parent
RATE_HZ = 16000
CHUNK_MS = 200
CHUNK_BYTES = RATE_HZ * 2 * CHUNK_MS // 1000
BEHIND_S = 1.0  # a paced caller whose last reply comes this long after its audio ended fell behind
READY_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 60.0


# --- Audio ------------------------------------------------------------------------------------


def repeated_to(pcm: bytes, seconds: float) -> bytes:
    """``pcm`` repeated and cut to ``seconds``, a whole number of chunks."""
    chunks = max(1, round(seconds * 1000 / CHUNK_MS))
    size = chunks * CHUNK_BYTES
    return (pcm * (size // len(pcm) + 1))[:size]


def rotated(pcm: bytes, caller: int, callers: int) -> bytes:
    """Caller ``caller``'s copy of the audio, started at its own offset so callers are not in lockstep."""
    chunks = len(pcm) // CHUNK_BYTES
    offset = (chunks * caller // max(1, callers)) * CHUNK_BYTES
    return pcm[offset:] + pcm[:offset]


def audio_seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE_HZ


def split_chunks(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]


# --- Streams ----------------------------------------------------------------------------------


class Stream(Protocol):
    """One call on one transport: open it, send chunks (each answered), end it."""

    def open(self) -> None: ...

    def send(self, pcm: bytes) -> dict[str, Any]: ...

    def end(self) -> None: ...


StreamFactory = Callable[[], Stream]


class HttpStream:
    """The native API: ``POST /v1/sessions``, one ``POST .../audio`` per chunk, ``POST .../end``.

    ``http.client`` on one keep-alive connection: the lightest client the standard library has,
    so the client's own CPU (it shares the machine) stays small.
    """

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._conn: http.client.HTTPConnection | None = None
        self._path = ""
        self._headers: dict[str, str] = {}
        self._seq = 0

    def open(self) -> None:
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=REPLY_TIMEOUT_S)
        self._conn.connect()
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = json.dumps({"sample_rate": RATE_HZ, "words": True}).encode()
        created = self._request("/v1/sessions", body, {"Content-Type": "application/json"}, 201)
        self._path = f"/v1/sessions/{created['session_id']}"
        self._headers = {"X-Session-Token": created["token"], "Content-Type": "application/octet-stream"}

    def send(self, pcm: bytes) -> dict[str, Any]:
        headers = self._headers | {"X-Chunk-Seq": str(self._seq)}
        self._seq += 1
        return self._request(f"{self._path}/audio", pcm, headers, 200)

    def end(self) -> None:
        try:
            self._request(
                f"{self._path}/end", b"", {"X-Session-Token": self._headers["X-Session-Token"]}, 200
            )
        finally:
            if self._conn is not None:
                self._conn.close()

    def _request(self, path: str, body: bytes, headers: dict[str, str], expected: int) -> dict[str, Any]:
        assert self._conn is not None, "open() first"
        self._conn.request("POST", path, body=body, headers=headers)
        response = self._conn.getresponse()
        data = response.read()
        if response.status != expected:
            raise RuntimeError(f"POST {path}: {response.status} {data[:200]!r}")
        reply: dict[str, Any] = json.loads(data)
        return reply


class WebSocketStream:
    """The Vosk server protocol: a config frame, one binary frame per chunk (one reply each), eof."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._ws: websocket.WebSocket | None = None

    def open(self) -> None:
        self._ws = websocket.create_connection(
            self._url, timeout=REPLY_TIMEOUT_S, sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
        )
        self._ws.send(json.dumps({"config": {"sample_rate": RATE_HZ, "words": 1}}))

    def send(self, pcm: bytes) -> dict[str, Any]:
        assert self._ws is not None, "open() first"
        self._ws.send_binary(pcm)
        return self._reply()

    def end(self) -> None:
        assert self._ws is not None, "open() first"
        try:
            self._ws.send(json.dumps({"eof": 1}))
            self._reply()
        finally:
            self._ws.close(timeout=2)

    def _reply(self) -> dict[str, Any]:
        assert self._ws is not None
        data = self._ws.recv()
        reply: dict[str, Any] = json.loads(data)
        if "error" in reply:
            raise RuntimeError(f"{self._url}: {reply}")
        return reply


class BareStream:
    """The engine alone, in this process: a recognizer from the pool, ``accept`` + ``partial`` per chunk."""

    def __init__(self, pool: RecognizerPool) -> None:
        self._pool = pool
        self._recognizer: Any = None

    def open(self) -> None:
        self._recognizer = self._pool.acquire(RecognizerOptions(sample_rate_hz=RATE_HZ, words=True))

    def send(self, pcm: bytes) -> dict[str, Any]:
        finals = self._recognizer.accept(pcm)
        return {"partial": self._recognizer.partial(), "finals": len(finals)}

    def end(self) -> None:
        try:
            self._recognizer.flush()
        finally:
            self._recognizer.close()


# --- Drivers ----------------------------------------------------------------------------------


@dataclass(slots=True)
class CallTiming:
    """One caller's call: seconds from the start of ``open`` to the first reply, each chunk's latency."""

    audio_s: float = 0.0
    open_s: float = 0.0
    first_reply_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    end_lag_s: float = 0.0  # paced: last reply after the audio's real-time end
    wall_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class UnpacedRun:
    callers: int
    audio_s: float
    wall_s: float
    client_cpu_s: float
    errors: int
    latency_mean_ms: float  # per chunk, as the client saw it

    @property
    def throughput(self) -> float:
        """Audio seconds decoded per wall second, all callers together."""
        return self.audio_s / self.wall_s


@dataclass(frozen=True, slots=True)
class PacedRun:
    callers: int
    audio_s_per_caller: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    first_chunk_p50_ms: float  # from the start of opening the call to the reply to its first chunk
    first_chunk_max_ms: float
    behind: int  # callers whose last reply came over BEHIND_S after their audio ended
    max_end_lag_s: float
    errors: int
    client_cpu_s: float

    def passes(self, p95_limit_ms: float) -> bool:
        return self.errors == 0 and self.behind == 0 and self.latency_p95_ms <= p95_limit_ms


def _run_callers(
    factory: StreamFactory, audios: Sequence[bytes], call: Callable[[Stream, bytes, int, float], CallTiming]
) -> tuple[list[CallTiming], float, float]:
    """Open a stream per caller, release them together, run ``call``; (timings, wall s, client CPU s)."""
    timings: list[CallTiming] = [CallTiming() for _ in audios]
    gate = threading.Barrier(len(audios) + 1)
    start_at = [0.0]

    def caller(n: int) -> None:
        stream = factory()
        try:
            gate.wait()
            timings[n] = call(stream, audios[n], n, start_at[0])
        except Exception as exc:  # a failed call is counted, never hidden
            timings[n] = CallTiming(error=f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(len(audios))]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    start_at[0] = time.perf_counter() + 0.05
    gate.wait()
    for thread in threads:
        thread.join()
    wall = max((t.wall_s for t in timings if t.error is None), default=0.0)
    return timings, wall, time.process_time() - cpu


def _unpaced_call(stream: Stream, pcm: bytes, n: int, start_at: float) -> CallTiming:
    timing = CallTiming(audio_s=audio_seconds(pcm))
    started = time.perf_counter()
    stream.open()
    timing.open_s = time.perf_counter() - started
    for chunk in split_chunks(pcm):
        sent = time.perf_counter()
        stream.send(chunk)
        timing.latencies_s.append(time.perf_counter() - sent)
        if len(timing.latencies_s) == 1:
            timing.first_reply_s = time.perf_counter() - started
    stream.end()
    timing.wall_s = time.perf_counter() - started
    return timing


def run_unpaced(factory: StreamFactory, audios: Sequence[bytes]) -> UnpacedRun:
    """Every caller streams its audio as fast as the replies come; all start together."""
    timings, wall, cpu = _run_callers(factory, audios, _unpaced_call)
    done = [t for t in timings if t.error is None]
    errors = [t.error for t in timings if t.error is not None]
    if not done:
        raise RuntimeError(f"every call failed: {errors[0]}")
    latency_ms = statistics.fmean(s * 1000 for t in done for s in t.latencies_s)
    return UnpacedRun(len(audios), sum(t.audio_s for t in done), wall, cpu, len(errors), latency_ms)


def _paced_call(stream: Stream, pcm: bytes, n: int, start_at: float, callers: int) -> CallTiming:
    timing = CallTiming(audio_s=audio_seconds(pcm))
    chunk_s = CHUNK_MS / 1000
    t0 = start_at + n * chunk_s / callers  # callers spread over one chunk period
    delay = t0 - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    opened = time.perf_counter()
    stream.open()
    timing.open_s = time.perf_counter() - opened
    origin = time.perf_counter()  # the call's audio starts now; chunk k is complete at (k + 1) periods
    for k, chunk in enumerate(split_chunks(pcm)):
        due = origin + (k + 1) * chunk_s
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        stream.send(chunk)
        replied = time.perf_counter()
        timing.latencies_s.append(replied - sent)
        if k == 0:
            timing.first_reply_s = replied - opened - chunk_s  # the wait for the chunk's audio is not latency
    timing.end_lag_s = time.perf_counter() - (origin + timing.audio_s)
    stream.end()
    timing.wall_s = time.perf_counter() - opened
    return timing


def run_paced(factory: StreamFactory, pcm: bytes, callers: int) -> PacedRun:
    """``callers`` calls at real-time pace, started over one chunk period, each on its own copy of ``pcm``."""
    audios = [rotated(pcm, n, callers) for n in range(callers)]

    def call(stream: Stream, audio: bytes, n: int, start_at: float) -> CallTiming:
        return _paced_call(stream, audio, n, start_at, callers)

    timings, _, cpu = _run_callers(factory, audios, call)
    done = [t for t in timings if t.error is None]
    latencies_ms = sorted(ms * 1000 for t in done for ms in t.latencies_s) or [0.0]
    first_ms = [t.first_reply_s * 1000 for t in done] or [0.0]
    return PacedRun(
        callers=callers,
        audio_s_per_caller=audio_seconds(pcm),
        latency_p50_ms=statistics.median(latencies_ms),
        latency_p95_ms=percentile(latencies_ms, 95),
        latency_max_ms=latencies_ms[-1],
        first_chunk_p50_ms=statistics.median(first_ms),
        first_chunk_max_ms=max(first_ms),
        behind=sum(1 for t in done if t.end_lag_s > BEHIND_S),
        max_end_lag_s=max((t.end_lag_s for t in done), default=0.0),
        errors=len(timings) - len(done),
        client_cpu_s=cpu,
    )


# --- Capacity search --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capacity:
    callers: int  # the largest number that passed (0: not even one)
    steps: list[PacedRun]


def search_capacity(
    probe: Callable[[int], PacedRun], start: int, p95_limit_ms: float, max_steps: int, limit: int = 1_000_000
) -> Capacity:
    """The largest passing number of callers: from ``start`` up by x1.5 (or down by x0.6) until the
    verdict flips, then bisection, within ``max_steps`` probes; going down continues past
    ``max_steps`` until a number passes or 1 failed, so 0 always means that not even one caller passed."""
    steps: list[PacedRun] = []
    passed, failed = 0, None
    n = max(1, start)
    while len(steps) < max_steps or (passed == 0 and failed is not None and failed > 1):
        run = probe(n)
        steps.append(run)
        if run.passes(p95_limit_ms):
            passed = max(passed, n)
        else:
            failed = n if failed is None else min(failed, n)
        if failed is None:
            if n >= limit:
                break
            n = min(limit, max(n + 1, round(n * 1.5)))
        elif passed == 0 and failed > 1:
            n = max(1, min(failed - 1, round(failed * 0.6)))
        elif failed - passed > 1:
            n = (passed + failed) // 2
        else:
            break
    return Capacity(passed, steps)


# --- Server processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (gunicorn's master and worker)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        children = Path(f"/proc/{current}/task/{current}/children")
        try:
            todo += [int(c) for c in children.read_text(encoding="ascii").split()]
        except OSError:
            continue
    return found


def environ_of(pid: int, name: str) -> str | None:
    """The value of environment variable ``name`` in the process ``pid`` (None when unset or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{name}=".encode()
    found = next((item[len(prefix) :] for item in raw.split(b"\0") if item.startswith(prefix)), None)
    return found.decode(errors="replace") if found is not None else None


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants together, MiB."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text(encoding="ascii")
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


class RssSampler:
    """The peak of ``rss_mib(pid)`` sampled every ``interval_s`` on a background thread."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self.peak_mib = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak_mib = max(self.peak_mib, rss_mib(self._pid))


@dataclass
class ServerProcess:
    """A server in its own process group; ``ready`` says when it answers."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log: Path
    ready: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start the process without waiting for it to answer (start several, then wait for each)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            if self.ready():
                return
            time.sleep(0.1)  # readiness poll interval
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {READY_TIMEOUT_S:.0f} s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]

    def stop(self) -> None:
        stop_group(self.process)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(process: subprocess.Popen[Any] | None, timeout_s: float = 30) -> None:
    """SIGTERM the process group of ``process`` (started in a session of its own), SIGKILL it if it
    has not exited within ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def http_ready(url: str) -> Callable[[], bool]:
    """True once ``GET url`` answers 200."""
    parsed = urllib.parse.urlsplit(url)

    def ready() -> bool:
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=1)
        try:
            conn.request("GET", parsed.path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    return ready


def tcp_ready(port: int) -> Callable[[], bool]:
    """True once something accepts connections on ``port``."""

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return ready


def decoder_service(
    log_dir: Path, settings: Mapping[str, str], extra_env: Mapping[str, str] | None = None
) -> ServerProcess:
    """``python -m decoder_api serve`` on a free port, with ``DECODER_<KEY>`` settings (and ``extra_env``)."""
    port = free_port()
    env = {f"DECODER_{key.upper()}": value for key, value in settings.items()} | dict(extra_env or {})
    argv = [sys.executable, "-m", "decoder_api", "serve", "--port", str(port)]
    return ServerProcess(
        "decoder", argv, env, log_dir / f"decoder-{port}.log", http_ready(f"http://127.0.0.1:{port}/readyz")
    )


def port_of(server: ServerProcess) -> int:
    return int(server.argv[server.argv.index("--port") + 1])
