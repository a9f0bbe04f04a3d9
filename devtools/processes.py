"""The one harness that runs the components as processes: for the tests, the benchmarks and the demo.

Each process runs in a process group of its own with its output in a log file; ``start`` waits
for a readiness condition (never a fixed time) and fails with the log's tail when the process
exits first; ``stop`` sends SIGTERM to the group and SIGKILL after a timeout; ``kill``, ``pause``
and ``resume`` stand for a lost node, a stalled one and its return. ``DecoderServer`` is
``python -m decoder_api serve`` on a free port: this is the only place that starts one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import requests

from decoder_api.allocator import allocator_env, running_allocator
from devtools import devstack
from devtools.devstack import free_port

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0
POLL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

__all__ = [
    "READY_TIMEOUT_S",
    "ROOT",
    "DecoderServer",
    "RedisServer",
    "RssSampler",
    "ServiceProcess",
    "decoder_command",
    "decoder_env",
    "free_port",
    "http_ready",
    "listening_pid",
    "on_serve_allocator",
    "process_tree",
    "scrape_metrics",
    "start_decoder",
    "start_redis",
    "status_mib",
    "stop_group",
    "tree_rss_mib",
]


def http_ready(url: str) -> Callable[[], bool]:
    """True once ``GET url`` answers 200."""

    def ready() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:  # not listening yet, or busy
            return False

    return ready


def stop_group(
    process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout_s: float = 60
) -> int:
    """Send ``sig`` to the process group of ``process``; SIGKILL it if it has not exited in ``timeout_s``."""
    if process is None:
        return 0
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


@dataclass
class ServiceProcess:
    """``python <argv>`` in a process group of its own, ``env`` added to this process's environment."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log: Path
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def launch(self) -> Self:
        """Start the process without waiting for it (start several, then wait for each)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *self.argv],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Self:
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the readiness condition until it holds; fail with the log's tail if the process exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            if self.ready is None or self.ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s: {self.tail()}")
            time.sleep(POLL_S)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pid(self) -> int:
        assert self.process is not None, "launch() first"
        return self.process.pid

    def tail(self, n_chars: int = 2000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-n_chars:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Stop the whole group (SIGTERM, then SIGKILL after ``timeout_s``); the exit status."""
        return stop_group(self.process, sig, timeout_s)

    def kill(self) -> None:
        """SIGKILL the whole group at once: a lost node."""
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the group: a stalled node (``resume`` lets it go on)."""
        os.killpg(self.pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid(), signal.SIGCONT)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process and its children (all threads)."""
        return sum(_process_cpu_s(pid) for pid in [self.pid(), *_children(self.pid())])

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def decoder_command(port: int) -> list[str]:
    """The arguments after ``python`` that serve the decoder on ``port``."""
    return ["-m", "decoder_api", "serve", "--port", str(port)]


class DecoderServer(ServiceProcess):
    """``python -m decoder_api serve`` (gunicorn: a master and one worker); ready when /readyz is 200."""

    def __init__(self, port: int, env: Mapping[str, str], log: Path, name: str = "decoder") -> None:
        self.port = port
        super().__init__(name, decoder_command(port), env, log, http_ready(f"http://127.0.0.1:{port}/readyz"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def worker_pid(self) -> int:
        workers = _children(self.pid())
        if not workers:
            raise RuntimeError("the decoder has no gunicorn worker")
        return workers[0]

    def rss_mib(self) -> float:
        """The worker's resident memory (where the model and the recognizers live)."""
        return _status_kib(self.worker_pid, "VmRSS") / 1024

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """The readiness status and body; (0, {}) while nothing answers."""
        try:
            response = requests.get(f"{self.url}/readyz", timeout=5)
        except requests.ConnectionError:
            return 0, {}
        return response.status_code, response.json()

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled Prometheus sample of /metrics, or None when absent."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def metrics(self, prefix: str = "decoder_") -> dict[str, float]:
        """Every sample of /metrics whose name starts with ``prefix`` (name with labels → value)."""
        return scrape_metrics(f"{self.url}/metrics", prefix)


def scrape_metrics(url: str, prefix: str) -> dict[str, float]:
    """The Prometheus samples at ``url`` whose name starts with ``prefix`` (name with labels → value)."""
    samples: dict[str, float] = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        if line.startswith(prefix) and " " in line:
            name, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def decoder_env(settings: Mapping[str, str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``DECODER_<KEY>`` variables from ``settings`` (``engine="vosk"``) plus the unprefixed ``env``.

    The session-creation rate limit is off unless asked for: a test suite or a benchmark opens
    hundreds of sessions from one address.
    """
    prefixed = {f"DECODER_{k.upper()}": v for k, v in {"session_rate_per_min": "0", **settings}.items()}
    return {**prefixed, **(env or {})}


def on_serve_allocator(env: Mapping[str, str] | None = None) -> str:
    """Run this process on the memory allocator ``serve`` gives the decoder for ``env`` (this
    environment plus ``env``, whose ``DECODER_ALLOCATOR`` is honoured): if it differs from the
    one loaded here, the process starts over with the same command line under that allocator
    (``os.execve``: nothing after this call has run yet). What runs in-process, a bare engine
    measured beside the service for instance, then allocates as the service does. Returns the
    allocator now loaded."""
    environ = {**os.environ, **(env or {})}
    wanted = allocator_env(environ.get("DECODER_ALLOCATOR") or None, environ)
    preload = wanted.get("LD_PRELOAD")
    if preload and "LD_PRELOAD" not in os.environ:  # set by the restart, so it restarts once
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **wanted})
    return running_allocator()


def start_decoder(log_dir: Path, env: Mapping[str, str] | None = None, **settings: str) -> DecoderServer:
    """A started, ready decoder on a free port with ``DECODER_<KEY>`` ``settings`` (``engine="vosk"``)
    and the unprefixed variables in ``env`` (the contract's ``KAFKA_*``, e.g.)."""
    port = free_port()
    return DecoderServer(port, decoder_env(settings, env), log_dir / f"decoder-{port}.log").start()


@dataclass
class RedisServer:
    """A redis-server on loopback that can be stopped, killed and restarted: throwaway, or ``durable``
    (an append-only file in ``workdir``, so a killed server restarts with its data)."""

    port: int
    workdir: Path
    durable: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"redis-{self.port}.log"
        self.process = devstack.start_redis(self.port, log, durable=self.durable)
        devstack.wait_for_redis(self.url, process=self.process)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_redis(workdir: Path, durable: bool = False) -> RedisServer:
    return RedisServer(free_port(), workdir, durable).start()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (gunicorn's master and worker, e.g.)."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += _children(found[-1])
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants together, MiB (0 for those gone meanwhile)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += _status_kib(member, "VmRSS")
    return total / 1024


def listening_pid(url: str) -> int | None:
    """The local process listening on ``url``'s port , or None when not found here."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0") or parsed.port is None:
        return None
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table_path).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == parsed.port:
                    inodes.add(f"socket:[{fields[9]}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
    return None


class RssSampler:
    """The peak of ``tree_rss_mib(pid)`` sampled every ``interval_s`` on a background thread."""

    def __init__(self, pid: int | None, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_mib = tree_rss_mib(pid) if pid else 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while self.pid and not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, tree_rss_mib(self.pid))


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii").split()]
    except OSError:  # gone meanwhile
        return []


def _process_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:  # exited meanwhile
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def status_mib(pid: int, name: str) -> float:
    """A memory field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    return _status_kib(pid, name) / 1024


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {name}")
