"""Real service processes for tests: ``python -m decoder_api serve`` on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from devtools import devstack

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DecoderServer:
    """A gunicorn-served decoder; ``url`` is its base URL."""

    port: int
    env: Mapping[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> DecoderServer:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "decoder_api", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll /readyz until it answers 200 (the model has loaded) or the process dies."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"decoder exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy
                pass
            time.sleep(0.1)
        raise TimeoutError(f"decoder not ready after {READY_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def start_decoder(log_dir: Path, env: Mapping[str, str] | None = None, **settings: str) -> DecoderServer:
    """Start a decoder with ``DECODER_<KEY>`` settings, e.g. ``engine="vosk"``, and the unprefixed
    variables in ``env`` (the contract's ``KAFKA_*``, e.g.).

    The session-creation rate limit is off unless asked for: a whole test suite opens
    hundreds of sessions from one address against the shared servers.
    """
    prefixed = {f"DECODER_{k.upper()}": v for k, v in {"session_rate_per_min": "0", **settings}.items()}
    port = free_port()
    return DecoderServer(port, {**prefixed, **(env or {})}, log_dir / f"decoder-{port}.log").start()


@dataclass
class RedisServer:
    """A redis-server on loopback that tests can stop, kill and restart: throwaway, or ``durable``
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


def start_redis(workdir: Path) -> RedisServer:
    return RedisServer(free_port(), workdir).start()
