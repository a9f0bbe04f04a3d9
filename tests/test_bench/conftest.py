"""One quick run of every benchmark, shared by the smoke tests of this package.

``quick_results`` runs ``python -m bench --quick`` once per test session into a temporary directory,
in two groups at once (the Kafka path and recovery mostly wait on their processes and on real-time
audio while the others compute): the Kafka path against the suite's broker, the service beside a
fake peer that speaks the Vosk WebSocket protocol the way vosk-server does (control messages
compared as exact strings). The tests read what the run wrote.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from devtools.clients import EOF
from devtools.processes import ROOT, free_port, stop_group

QUICK_TIMEOUT_S = 300


def run(*argv: str, out: Path) -> subprocess.Popen[str]:
    command = [sys.executable, *argv, "--quick", "--out", str(out)]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=QUICK_TIMEOUT_S)
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="session")
def fake_peer() -> Iterator[str]:
    """A Vosk-protocol server that answers every chunk with an empty partial: the peer path's plumbing."""

    async def recognize(ws: ServerConnection) -> None:
        async for message in ws:
            if message == EOF:
                await ws.send('{"text" : ""}')
                return
            if isinstance(message, bytes):
                await ws.send('{"partial" : ""}')

    port, stop = free_port(), threading.Event()

    async def main() -> None:
        async with serve(recognize, "127.0.0.1", port):
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{port}"
    stop.set()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def quick_results(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, fake_peer: str
) -> tuple[Path, str]:
    """(results directory, the run's output) of every benchmark at ``--quick`` size."""
    out = tmp_path_factory.mktemp("bench-quick")
    computing = run(
        "-m", "bench", *(f"--only={n}" for n in ("engines", "churn", "memory", "accuracy")), out=out
    )
    try:
        output = finish(run("-m", "bench.kafka_path", "--bootstrap", kafka_bootstrap, out=out))
        output += finish(run("-m", "bench.recovery", out=out))
        output += finish(run("-m", "bench.service", "--peer-url", f"fake-peer={fake_peer}", out=out))
        output += finish(computing)
    finally:  # when another run failed first: the whole group, with the benchmark it runs
        stop_group(computing, timeout_s=30)
    return out, output + finish(run("-m", "bench", "--only=plot", "--only=summary", out=out))


def load(out: Path, benchmark: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / f"{benchmark}.json").read_text(encoding="utf-8"))
    return result
