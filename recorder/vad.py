"""Voice activity detection for the microphone: long silences are not sent, speech never is cut.

The detector is WebRTC's VAD (the ``webrtcvad-wheels`` package) when it is installed and the
rate is one it takes (8, 16, 32 or 48 kHz); otherwise an energy detector. ``-a/--aggressiveness``
is WebRTC's mode (0 = least eager to call audio silence … 3 = most); for the energy detector it
picks the level below which a 20 ms frame counts as silence:

    =====  ==========
    mode   threshold
    =====  ==========
    0      -60 dBFS
    1      -50 dBFS
    2      -45 dBFS
    3      -40 dBFS
    =====  ==========

``SilenceGate`` sends every chunk that holds any speech, the ``hangover_ms`` of silence after
speech (so the decoder can end the utterance), and ``preroll_ms`` of silence before speech
resumes (so no onset is clipped). Past the hangover it holds chunks back, except one every
``keepalive_ms`` so the server does not expire an idle session. Chunks are never reordered or
sent twice; the decoder's timeline simply skips the silence that was held back.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

FRAME_MS = 20
WEBRTC_RATES_HZ = frozenset({8000, 16000, 32000, 48000})
ENERGY_THRESHOLDS_DBFS = (-60.0, -50.0, -45.0, -40.0)


class SpeechDetector(Protocol):
    name: str

    def is_speech(self, frame: bytes) -> bool:
        """Whether one ``FRAME_MS`` frame of s16le mono PCM holds speech."""
        ...


class WebRtcDetector:
    name = "webrtc"

    def __init__(self, aggressiveness: int, rate_hz: int) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self._rate_hz = rate_hz

    def is_speech(self, frame: bytes) -> bool:
        return bool(self._vad.is_speech(frame, self._rate_hz))


class EnergyDetector:
    name = "energy"

    def __init__(self, aggressiveness: int) -> None:
        self.threshold_dbfs = ENERGY_THRESHOLDS_DBFS[aggressiveness]

    def is_speech(self, frame: bytes) -> bool:
        return level_dbfs(frame) >= self.threshold_dbfs


def level_dbfs(pcm: bytes) -> float:
    """RMS level relative to full scale (-inf for digital silence)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    rms = math.sqrt(float(np.mean(samples * samples))) if samples.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def speech_detector(aggressiveness: int, rate_hz: int) -> SpeechDetector:
    """WebRTC's VAD when available for this rate, else the energy detector."""
    if rate_hz in WEBRTC_RATES_HZ:
        try:
            return WebRtcDetector(aggressiveness, rate_hz)
        except ImportError:
            logger.info("webrtcvad is not installed; using the energy detector")
    return EnergyDetector(aggressiveness)


class SilenceGate:
    """Drops long silences from a chunk stream; see the module docstring."""

    def __init__(
        self,
        detector: SpeechDetector,
        rate_hz: int,
        chunk_ms: int,
        hangover_ms: int = 2000,
        preroll_ms: int = 400,
        keepalive_ms: int = 10_000,
    ) -> None:
        self.detector = detector
        self.held_ms = 0
        self._frame_bytes = rate_hz * FRAME_MS // 1000 * 2
        self._rate_hz = rate_hz
        self._hangover_ms = hangover_ms
        self._keepalive_ms = keepalive_ms
        self._preroll_chunks = max(1, math.ceil(preroll_ms / chunk_ms))
        self._preroll: deque[bytes] = deque()

    def filter(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        silent_ms = 0
        since_sent_ms = 0
        for chunk in chunks:
            chunk_ms = len(chunk) // 2 * 1000 // self._rate_hz
            if self.has_speech(chunk):
                while self._preroll:
                    yield self._preroll.popleft()
                silent_ms = since_sent_ms = 0
                yield chunk
                continue
            silent_ms += chunk_ms
            since_sent_ms += chunk_ms
            if silent_ms <= self._hangover_ms or since_sent_ms >= self._keepalive_ms:
                while self._preroll:
                    self._drop(self._preroll.popleft())
                since_sent_ms = 0
                yield chunk
                continue
            if len(self._preroll) == self._preroll_chunks:
                self._drop(self._preroll.popleft())
            self._preroll.append(chunk)
        while self._preroll:
            self._drop(self._preroll.popleft())

    def has_speech(self, chunk: bytes) -> bool:
        """Any speech frame makes the chunk speech (a short final frame counts as silence)."""
        size = self._frame_bytes
        frames = (chunk[i : i + size] for i in range(0, len(chunk) - size + 1, size))
        return any(self.detector.is_speech(frame) for frame in frames)

    def _drop(self, chunk: bytes) -> None:
        self.held_ms += len(chunk) // 2 * 1000 // self._rate_hz
