"""Simulated callers against a running decoder: concurrency, no cross-talk, clean stops."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from devtools.processes import DecoderServer
from tests.conftest import espeak, join_turns
from tests.reference import ReferenceEngine
from tests.test_recorder.conftest import ROOT, json_lines, offline_finals, recorder, write_wav

CALLS = {
    "call_a.wav": ("안녕하세요", "감사합니다"),
    "call_b.wav": ("네 알겠습니다",),
    "call_c.wav": ("오늘 날씨가 좋습니다", "안녕하세요"),
}


@pytest.fixture(scope="module")
def call_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three short Korean calls, and one WAV that is not a call (so it is never played)."""
    data = tmp_path_factory.mktemp("calls")
    speech = tmp_path_factory.mktemp("speech")
    for name, turns in CALLS.items():
        write_wav(data / name, join_turns(turns, [espeak(t, "ko", speech) for t in turns], 800).pcm)
    write_wav(data / "not-a-call.wav", b"\0\0" * 16000)
    return data


@pytest.fixture(scope="module")
def expected(call_dir: Path, reference_engine: ReferenceEngine) -> dict[str, str]:
    """Each call's transcript as the decoder's recognizer makes it on its own."""
    import wave

    transcripts = {}
    for name in CALLS:
        with wave.open(str(call_dir / name)) as wav:
            transcripts[name] = " ".join(offline_finals(reference_engine, wav.readframes(wav.getnframes())))
    return transcripts


def active_sessions(server: DecoderServer) -> int:
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(r"^decoder_active_sessions (\S+)$", text, re.MULTILINE)
    assert match is not None
    return int(float(match.group(1)))


class MetricsWatcher(threading.Thread):
    """The most sessions the decoder had open at once while the watcher ran."""

    def __init__(self, server: DecoderServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, active_sessions(self.server))


def test_five_callers_run_concurrently_without_cross_talk(
    vosk_server: DecoderServer, call_dir: Path, expected: dict[str, str]
) -> None:
    watcher = MetricsWatcher(vosk_server)
    watcher.start()
    args = ("-H", vosk_server.url, "-S", "--data", str(call_dir), "--callers", "5", "--calls", "10")
    done = recorder(*args, "--pause-s", "0.2,0.6", "--stats-s", "2", "--json", timeout_s=120)
    watcher.done.set()
    watcher.join()
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events = json_lines(done.stdout)
    ends = [e for e in events if e["type"] == "end"]
    assert len(ends) == 10
    for end in ends:
        assert end["error"] is None
        assert end["transcript"] == expected[end["source"]], end
        assert end["user_id"] == f"recorder-{end['caller']}"
    assert len({e["session_id"] for e in ends}) == 10
    assert {e["caller"] for e in ends} == {1, 2, 3, 4, 5}
    stats = [e for e in events if e["type"] == "stats"]
    assert stats[-1]["final"] is True
    assert stats[-1] | {"elapsed_s": 0, "mean_latency_ms": 0} == {
        "type": "stats",
        "final": True,
        "elapsed_s": 0,
        "active": 0,
        "max_active": 5,
        "started": 10,
        "completed": 10,
        "failed": 0,
        "finals": sum(1 for e in events if e["type"] == "final"),
        "mean_latency_ms": 0,
    }
    assert any(not s["final"] for s in stats)  # periodic statistics while running
    assert watcher.peak >= 5
    assert active_sessions(vosk_server) == 0


def test_sigint_ends_the_open_calls(vosk_server: DecoderServer, call_dir: Path) -> None:
    args = ["-H", vosk_server.url, "-S", "--data", str(call_dir), "--callers", "2", "--json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "recorder", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    events = json_lines(out.decode())
    ends = [e for e in events if e["type"] == "end"]
    assert len(ends) == 2
    assert all(e["error"] is None and e["audio_ms"] > 0 for e in ends)
    assert events[-1]["type"] == "stats"
    assert events[-1]["active"] == 0
    assert active_sessions(vosk_server) == 0


def test_duration_bounds_a_run(vosk_server: DecoderServer, call_dir: Path) -> None:
    started = time.monotonic()
    done = recorder("-H", vosk_server.url, "-S", "--data", str(call_dir), "--duration", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 15
    assert [e["type"] for e in json_lines(done.stdout)].count("end") == 1


def test_failed_calls_are_counted_and_reported(call_dir: Path) -> None:
    args = ("-H", "127.0.0.1:1", "--retry-s", "0", "-S", "--data", str(call_dir), "--callers", "2")
    done = recorder(*args, "--calls", "3", "--pause-s", "0", "--json")
    assert done.returncode == 1
    assert done.stderr == (
        "error: 3 of 3 calls failed; last: "
        "cannot reach the decoder at http://127.0.0.1:1: connection refused\n"
    )
    final = json_lines(done.stdout)[-1]
    assert (final["type"], final["started"], final["failed"], final["active"]) == ("stats", 3, 3, 0)
