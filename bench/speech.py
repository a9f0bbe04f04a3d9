"""Speech for the benchmarks, as 16 kHz PCM looped to any length.

Korean from espeak-ng for the Vosk model (``korean_speech``; the Korean model is the only Vosk
model installed) and files of ``data/`` for Whisper (``english_speech``), so a 2-second session
and a 60-second one carry the same kind of audio.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from decoder_api.audio import decode_file
from devtools.clients import CHUNK_MS, RATE_HZ

DATA = Path(__file__).resolve().parent.parent / "data"
KOREAN_SENTENCES = (
    "안녕하세요 고객센터입니다 무엇을 도와드릴까요",
    "네 주문하신 상품의 배송 상태를 확인해 드리겠습니다",
    "잠시만 기다려 주세요 감사합니다",
    "오늘 날씨가 정말 좋습니다",
)
LIBRIVOX = ("librivox-0870.wav", "librivox-0880.wav", "librivox-0890.wav", "librivox-0920.wav")
CALLS = tuple(sorted(path.name for path in DATA.glob("call*.wav")))
PAUSE_S = 0.6
CHUNK_BYTES = RATE_HZ * 2 * CHUNK_MS // 1000


def silence(seconds: float) -> bytes:
    return b"\0\0" * int(RATE_HZ * seconds)


def loop_to(pcm: bytes, seconds: float) -> bytes:
    size = int(seconds * RATE_HZ) * 2
    return (pcm * (size // len(pcm) + 1))[:size]


def whole_chunks(pcm: bytes, seconds: float) -> bytes:
    """``pcm`` repeated and cut to ``seconds`` rounded to a whole number of chunks."""
    return loop_to(pcm, max(1, round(seconds * 1000 / CHUNK_MS)) * CHUNK_MS / 1000)


def espeak_korean(text: str, workdir: Path, speed: int = 140) -> bytes:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: install the Debian package espeak-ng")
    wav = workdir / f"ko-{hashlib.sha1(text.encode()).hexdigest()[:12]}-{speed}.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-s", str(speed), "-w", str(wav), text], check=True)
    return decode_file(wav, RATE_HZ).pcm


def korean_speech(seconds: float) -> bytes:
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as tmp:
        spoken = b"".join(espeak_korean(text, Path(tmp)) + silence(PAUSE_S) for text in KOREAN_SENTENCES)
    return loop_to(spoken, seconds)


def english_speech(seconds: float, files: Sequence[str] = LIBRIVOX) -> bytes:
    spoken = b"".join(decode_file(DATA / name, RATE_HZ).pcm + silence(PAUSE_S) for name in files)
    return loop_to(spoken, seconds)


def speech_for(engine: str, seconds: float) -> bytes:
    return korean_speech(seconds) if engine == "vosk" else english_speech(seconds)


def slices(pcm: bytes, seconds: float, count: int) -> list[bytes]:
    """``count`` consecutive ``seconds``-long pieces of ``pcm`` (wrapping around)."""
    size = int(seconds * RATE_HZ) * 2
    looped = loop_to(pcm, len(pcm) / 2 / RATE_HZ + seconds)
    return [looped[(i * size) % len(pcm) :][:size] for i in range(count)]


def rotated(pcm: bytes, caller: int, callers: int) -> bytes:
    """Caller ``caller``'s copy of ``pcm``, started at its own offset so callers are not in lockstep."""
    offset = (len(pcm) // CHUNK_BYTES * caller // max(1, callers)) * CHUNK_BYTES
    return pcm[offset:] + pcm[:offset]
