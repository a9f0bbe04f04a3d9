"""Speech and stream clients for the churn and memory benchmarks.

Audio: Korean speech from espeak-ng for the Vosk model (``korean_speech``) and the English
files of ``data/`` for Whisper (``english_speech``), both as 16 kHz PCM looped to any length,
so a 2-second session and a 60-second session carry the same kind of audio.

Clients: one session over the Vosk-protocol WebSocket (``/v1/stream``) or the native HTTP
API (``/v1/sessions``), sent in chunks either paced in real time or as fast as the server
answers. Each returns a ``SessionTiming``: when its first reply came and how long every
chunk's reply took.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import requests
import websocket

from bench.figures import percentile
from decoder_api.audio import chunk_bytes, decode_file, iter_chunks

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RATE_HZ = 16000
BYTES_PER_S = RATE_HZ * 2
CHUNK_MS = 200
TIMEOUT_S = 120.0
KOREAN_SENTENCES = (
    "안녕하세요 고객센터입니다 무엇을 도와드릴까요",
    "네 주문하신 상품의 배송 상태를 확인해 드리겠습니다",
    "잠시만 기다려 주세요 감사합니다",
    "오늘 날씨가 정말 좋습니다",
)
ENGLISH_FILES = ("librivox-0870.wav", "librivox-0880.wav", "librivox-0890.wav", "librivox-0920.wav")
PAUSE_S = 0.6

Protocol = Literal["ws", "http"]


def silence(seconds: float) -> bytes:
    return b"\0\0" * int(RATE_HZ * seconds)


def loop_to(pcm: bytes, seconds: float) -> bytes:
    """``pcm`` repeated and cut to ``seconds`` (whole samples)."""
    size = int(seconds * RATE_HZ) * 2
    return (pcm * (size // len(pcm) + 1))[:size]


def espeak_korean(text: str, workdir: Path, speed: int = 140) -> bytes:
    """``text`` spoken by espeak-ng's Korean voice, as 16 kHz PCM."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: install the Debian package espeak-ng")
    wav = workdir / f"ko-{hashlib.sha1(text.encode()).hexdigest()[:12]}-{speed}.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-s", str(speed), "-w", str(wav), text], check=True)
    return decode_file(wav, RATE_HZ).pcm


def korean_speech(seconds: float) -> bytes:
    """espeak-ng Korean sentences separated by pauses, looped to ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as tmp:
        spoken = b"".join(espeak_korean(text, Path(tmp)) + silence(PAUSE_S) for text in KOREAN_SENTENCES)
    return loop_to(spoken, seconds)


def english_speech(seconds: float, files: Sequence[str] = ENGLISH_FILES) -> bytes:
    """Files of ``data/`` (LibriVox sentences by default) separated by pauses, looped to ``seconds``."""
    spoken = b"".join(decode_file(DATA / name, RATE_HZ).pcm + silence(PAUSE_S) for name in files)
    return loop_to(spoken, seconds)


def speech_for(engine: str, seconds: float) -> bytes:
    return korean_speech(seconds) if engine == "vosk" else english_speech(seconds)


def slices(pcm: bytes, seconds: float, count: int) -> list[bytes]:
    """``count`` consecutive ``seconds``-long pieces of ``pcm`` (wrapping around)."""
    size = int(seconds * RATE_HZ) * 2
    looped = loop_to(pcm, len(pcm) / BYTES_PER_S + seconds)
    starts = [(i * size) % len(pcm) for i in range(count)]
    return [looped[start : start + size] for start in starts]


@dataclass(slots=True)
class SessionTiming:
    """One session as its client saw it; times in seconds."""

    audio_s: float
    first_reply_s: float = (
        0.0  # from starting the session (connect / open request) to the first chunk's reply
    )
    replies_s: list[float] = field(default_factory=list)  # each chunk: sent -> its reply arrived
    wall_s: float = 0.0  # start of the session to its last reply (including end of stream)
    error: str | None = None


class LatencySummary(TypedDict):
    count: int
    p50_ms: float
    p95_ms: float
    max_ms: float


def summarize(values_s: Sequence[float]) -> LatencySummary:
    """Percentiles in milliseconds (zeros when there are no values)."""
    if not values_s:
        return LatencySummary(count=0, p50_ms=0.0, p95_ms=0.0, max_ms=0.0)
    ms = sorted(v * 1000 for v in values_s)
    return LatencySummary(count=len(ms), p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95), max_ms=ms[-1])


class Pacer:
    """Real-time pacing: chunk ``i`` is not sent before ``start + i * chunk_s`` (None: no pacing)."""

    def __init__(self, chunk_s: float | None) -> None:
        self._chunk_s = chunk_s
        self._start = time.perf_counter()

    def wait(self, index: int) -> None:
        if self._chunk_s is None:
            return
        delay = self._start + index * self._chunk_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def ws_session(ws_url: str, pcm: bytes, paced: bool, chunk_ms: int = CHUNK_MS) -> SessionTiming:
    """One Vosk-protocol stream: binary chunks, one reply each, then ``eof``."""
    timing = SessionTiming(audio_s=len(pcm) / BYTES_PER_S)
    started = time.perf_counter()
    ws = websocket.create_connection(f"{ws_url}/v1/stream", timeout=TIMEOUT_S)
    try:
        pacer = Pacer(chunk_ms / 1000 if paced else None)
        for index, chunk in enumerate(iter_chunks(pcm, chunk_bytes(RATE_HZ, chunk_ms))):
            pacer.wait(index)
            sent = time.perf_counter()
            ws.send_binary(chunk)
            reply = json.loads(ws.recv())
            timing.replies_s.append(time.perf_counter() - sent)
            if index == 0:
                timing.first_reply_s = time.perf_counter() - started
            if "error" in reply:
                timing.error = str(reply["error"])
        ws.send(json.dumps({"eof": 1}))
        ws.recv()
    finally:
        ws.close()
    timing.wall_s = time.perf_counter() - started
    return timing


def http_session(
    http: requests.Session, url: str, pcm: bytes, paced: bool, chunk_ms: int = CHUNK_MS
) -> SessionTiming:
    """One native-API session: open, PCM chunks, end, delete."""
    timing = SessionTiming(audio_s=len(pcm) / BYTES_PER_S)
    started = time.perf_counter()
    opened = http.post(f"{url}/v1/sessions", json={"sample_rate": RATE_HZ}, timeout=TIMEOUT_S)
    opened.raise_for_status()
    body = opened.json()
    base = f"{url}/v1/sessions/{body['session_id']}"
    headers = {"X-Session-Token": body["token"], "Content-Type": "application/octet-stream"}
    pacer = Pacer(chunk_ms / 1000 if paced else None)
    for index, chunk in enumerate(iter_chunks(pcm, chunk_bytes(RATE_HZ, chunk_ms))):
        pacer.wait(index)
        sent = time.perf_counter()
        reply = http.post(f"{base}/audio", data=chunk, headers=headers, timeout=TIMEOUT_S)
        timing.replies_s.append(time.perf_counter() - sent)
        if index == 0:
            timing.first_reply_s = time.perf_counter() - started
        if reply.status_code != 200:
            timing.error = str(reply.status_code)
    http.post(f"{base}/end", headers=headers, timeout=TIMEOUT_S).raise_for_status()
    http.delete(base, headers=headers, timeout=TIMEOUT_S)
    timing.wall_s = time.perf_counter() - started
    return timing


SessionRunner = Callable[[bytes], SessionTiming]


def session_runner(protocol: Protocol, url: str, ws_url: str, paced: bool) -> SessionRunner:
    """A callable running one session of the given audio; HTTP keeps one connection per caller."""
    if protocol == "ws":
        return lambda pcm: ws_session(ws_url, pcm, paced)
    http = requests.Session()
    return lambda pcm: http_session(http, url, pcm, paced)


def run_parallel(
    streams: int, work: Sequence[bytes], make_runner: Callable[[], SessionRunner]
) -> list[SessionTiming]:
    """``streams`` clients in threads; stream ``i`` runs sessions ``work[i::streams]`` back to back."""
    results: list[list[SessionTiming]] = [[] for _ in range(streams)]
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            run = make_runner()
            results[index] = [run(pcm) for pcm in work[index::streams]]
        except BaseException as exc:  # reported by the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return [timing for stream in results for timing in stream]
