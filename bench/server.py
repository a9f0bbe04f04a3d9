"""A decoder served by ``python -m decoder_api serve`` for benchmarks, and what it costs the machine.

CPU time is read from ``/proc/<pid>/stat`` (user + system, every thread) of the gunicorn master
and its worker; RSS is the worker's (``VmRSS`` of ``/proc/<pid>/status``), which is where the
model and the recognizers live.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from devtools.processes import DecoderServer, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MODELS = {"vosk": "ko", "whisper": "tiny.en"}
POOL_OFF = {"pool_max_idle": "0", "pool_warm": "0"}


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text(encoding="ascii").split()] if path.exists() else []


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {name}")


class ServedDecoder:
    """A running decoder: its URLs, CPU time and the worker's memory."""

    def __init__(self, server: DecoderServer) -> None:
        self.server = server
        self.url = server.url
        self.ws_url = server.ws_url

    @property
    def worker_pid(self) -> int:
        workers = children(self.server.pid())
        if not workers:
            raise RuntimeError("the decoder has no gunicorn worker")
        return workers[0]

    def cpu_s(self) -> float:
        master = self.server.pid()
        return sum(process_cpu_s(pid) for pid in [master, *children(master)])

    def rss_mib(self) -> float:
        return status_kib(self.worker_pid, "VmRSS") / 1024

    def pool_stats(self) -> dict[str, float]:
        """The pool gauges of ``/metrics``: recognizers idle / in use, acquisitions by outcome."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        stats: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("decoder_pool_recognizers{", "decoder_pool_acquired{")):
                name, value = line.rsplit(" ", 1)
                label = name.split('"')[1]
                stats[f"{name.split('{')[0].removeprefix('decoder_pool_')}_{label}"] = float(value)
        return stats


@contextmanager
def served(
    engine: str, settings: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Iterator[ServedDecoder]:
    """A decoder for ``engine`` with ``DECODER_<KEY>`` ``settings`` (plus raw ``env``), stopped on exit."""
    decoder_env = {
        f"DECODER_{k.upper()}": v
        for k, v in {
            "engine": engine,
            "model": MODELS[engine],
            "session_rate_per_min": "0",
            "max_sessions": "256",
            **settings,
        }.items()
    }
    with tempfile.TemporaryDirectory(prefix="bench-decoder-") as logs:
        port = free_port()
        server = DecoderServer(port, {**decoder_env, **(env or {})}, Path(logs) / "decoder.log")
        server.start()
        try:
            yield ServedDecoder(server)
        finally:
            server.stop()
