"""The silence gate: long silences are held back, speech and its surroundings are always sent."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from recorder.vad import (
    ENERGY_THRESHOLDS_DBFS,
    EnergyDetector,
    SilenceGate,
    SpeechDetector,
    WebRtcDetector,
    level_dbfs,
    speech_detector,
)
from tests.conftest import SpokenCall, espeak, silence

RATE = 16000
CHUNK_MS = 200
CHUNK = RATE * CHUNK_MS // 1000 * 2


def chunks_of(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + CHUNK] for i in range(0, len(pcm), CHUNK)]


def detectors() -> list[SpeechDetector]:
    found: list[SpeechDetector] = [EnergyDetector(1)]
    with contextlib.suppress(ImportError):
        found.append(WebRtcDetector(1, RATE))
    return found


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return espeak("안녕하세요", "ko", tmp_path_factory.mktemp("vad"))


def test_energy_levels() -> None:
    assert level_dbfs(silence(20)) == -np.inf
    full = np.full(320, 32767, dtype="<i2").tobytes()
    assert level_dbfs(full) == pytest.approx(0, abs=0.01)
    quiet = np.full(320, 33, dtype="<i2").tobytes()  # about -60 dBFS
    assert not EnergyDetector(1).is_speech(quiet)
    assert EnergyDetector(0).is_speech(np.full(320, 40, dtype="<i2").tobytes())
    assert list(ENERGY_THRESHOLDS_DBFS) == sorted(ENERGY_THRESHOLDS_DBFS)


def test_the_real_vad_is_used_when_installed() -> None:
    chosen = speech_detector(2, RATE)
    assert chosen.name in ("webrtc", "energy")
    assert speech_detector(2, 22050).name == "energy"  # a rate WebRTC does not take


def quiet_chunks(count: int, start: int = 1) -> list[bytes]:
    """Room-tone chunks (noise around -80 dBFS), each different from the others."""
    return [
        (np.random.default_rng(start + i).standard_normal(CHUNK // 2) * 3).astype("<i2").tobytes()
        for i in range(count)
    ]


@pytest.mark.parametrize("detector", detectors(), ids=lambda d: d.name)
def test_long_silence_is_held_back_and_speech_is_never_cut(detector: SpeechDetector, hello: bytes) -> None:
    words = chunks_of(hello)
    words[-1] = words[-1] + bytes(CHUNK - len(words[-1]))
    stream = [*quiet_chunks(2), *words, *quiet_chunks(40, 3), *words, *quiet_chunks(5, 43)]
    index = {chunk: i for i, chunk in enumerate(stream) if chunk not in words}
    gate = SilenceGate(detector, RATE, CHUNK_MS, hangover_ms=1000, preroll_ms=400, keepalive_ms=60_000)
    sent = list(gate.filter(stream))
    assert sent[2 : 2 + len(words)] == words  # the first turn whole, after the leading silence
    silent_sent = [index[c] for c in sent if c in index]
    assert silent_sent == sorted(silent_sent)  # in order, none twice
    assert len(silent_sent) == len(set(silent_sent))
    assert sent.count(words[0]) == 2  # the second turn too
    assert gate.held_ms == (len(stream) - len(sent)) * CHUNK_MS
    assert gate.held_ms >= 5000  # most of the 8 s pause (not the hangover, nor the preroll)


def test_gate_with_identical_chunks_keeps_order_and_counts() -> None:
    """Chunks are identified by position: a gate that sees silence only sends hangover and keepalives."""
    stream = [bytes(CHUNK)] * 100  # 20 s of digital silence
    gate = SilenceGate(EnergyDetector(1), RATE, CHUNK_MS, hangover_ms=1000, preroll_ms=400, keepalive_ms=5000)
    sent = list(gate.filter(stream))
    # 1 s hangover (5 chunks), then one chunk every 5 s
    assert len(sent) == 5 + (100 - 5) // 25
    assert gate.held_ms == (100 - len(sent)) * CHUNK_MS


def test_preroll_is_sent_before_speech_resumes() -> None:
    loud = np.full(CHUNK // 2, 8000, dtype="<i2").tobytes()
    quiet = [np.full(CHUNK // 2, i, dtype="<i2").tobytes() for i in range(20)]  # distinct silent chunks
    stream = [loud, *quiet, loud]
    gate = SilenceGate(
        EnergyDetector(1), RATE, CHUNK_MS, hangover_ms=400, preroll_ms=400, keepalive_ms=60_000
    )
    sent = list(gate.filter(stream))
    assert sent == [loud, quiet[0], quiet[1], quiet[18], quiet[19], loud]


def test_korean_call_gated_keeps_every_turn(korean_call: SpokenCall, tmp_path: Path) -> None:
    """With the default 2 s hangover, the call's 1.2 s pauses are sent whole."""
    stream = chunks_of(korean_call.pcm)
    gate = SilenceGate(speech_detector(1, RATE), RATE, CHUNK_MS)
    assert list(gate.filter(stream)) == stream
