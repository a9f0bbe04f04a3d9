"""One quick run of every benchmark, shared by the smoke tests of this package.

``quick_results`` runs every benchmark at ``--quick`` size once per test session into a temporary
directory, in lanes that run at once (most benchmarks wait on their processes or on real-time audio
for much of their run), then the plot and the summary: the Kafka path against the suite's broker,
the service beside a fake peer that speaks the Vosk WebSocket protocol the way vosk-server does
(control messages compared as exact strings). The tests read what the run wrote.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bench import plot, summary
from devtools.clients import EOF
from devtools.processes import ROOT, free_port, stop_group

QUICK_TIMEOUT_S = 300


# Benchmarks one after the other in each lane; accuracy reads the engines.json of the same run.
LANES = (("engines", "accuracy", "churn"), ("memory",), ("kafka_path",), ("recovery", "service"))


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
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_peer: str
) -> tuple[Path, str]:
    """(results directory, the run's output) of every benchmark at ``--quick`` size; the lane of the
    Kafka path starts once the suite's broker is up, the others while it starts."""
    out = tmp_path_factory.mktemp("bench-quick")
    options = {"service": ["--peer-url", f"fake-peer={fake_peer}"]}
    started: list[subprocess.Popen[str]] = []
    stopping = threading.Event()

    def lane(names: tuple[str, ...]) -> str:
        output = ""
        for name in names:
            if not stopping.is_set():
                started.append(run("-m", f"bench.{name}", *options.get(name, []), out=out))
                output += finish(started[-1])
        return output

    with ThreadPoolExecutor(len(LANES)) as lanes:
        try:
            running = [lanes.submit(lane, names) for names in LANES if "kafka_path" not in names]
            options["kafka_path"] = ["--bootstrap", request.getfixturevalue("kafka_bootstrap")]
            running += [lanes.submit(lane, names) for names in LANES if "kafka_path" in names]
            output = "".join(f.result() for f in as_completed(running))
        finally:  # when a run failed first: the whole group of every other, with the decoders it runs
            stopping.set()
            for process in started:
                stop_group(process, timeout_s=30)
    assert plot.main(["--out", str(out)]) == 0 and summary.main(["--out", str(out)]) == 0
    return out, output


def load(out: Path, benchmark: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / f"{benchmark}.json").read_text(encoding="utf-8"))
    return result
