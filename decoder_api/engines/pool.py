"""A pool of warm recognizers, so short calls cost what long calls cost.

A new Vosk ``KaldiRecognizer`` spends 1.5-2 CPU-seconds warming its decoding-graph cache and
its memory is not given back to the OS after it is freed, so a service that creates one per
call falls behind and grows under churn. The pool hands out recognizers that have already
decoded, keyed by their options, and takes them back ``restart()``-ed, which makes them
decode exactly as a new one would. A recognizer that raised is discarded, never reused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from decoder_api.engines.base import Engine, Final, InvalidAudio, Recognizer, RecognizerOptions

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """``max_idle`` recognizers are kept between calls (all option sets together); one unused
    for ``idle_ttl_s`` is freed; ``warm`` are created and warmed when the pool starts.

    One that has decoded ``max_audio_s`` of audio in its life is freed instead of reused: a
    Vosk recognizer's decoding-graph cache grows with every second it decodes (about 60 MiB
    after 10 s, 150 MiB after 100 s), so without this the pool would bound how many
    recognizers exist but not how much memory each holds.
    """

    max_idle: int = 8
    idle_ttl_s: float = 600.0
    warm: int = 2
    warm_audio_ms: int = 3000
    max_audio_s: float = 120.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    idle: int
    in_use: int
    hits: int
    misses: int
    discarded: int


@dataclass(slots=True)
class _Idle:
    recognizer: Recognizer
    options: RecognizerOptions
    since: float
    audio_s: float  # decoded in its life


class RecognizerPool:
    """Warm recognizers of one engine, borrowed by sessions and given back on close."""

    def __init__(
        self, engine: Engine, settings: PoolSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._idle: list[_Idle] = []
        self._lock = threading.Lock()
        self._in_use = 0
        self._hits = self._misses = self._discarded = 0
        self._closed = False

    def acquire(self, options: RecognizerOptions) -> PooledRecognizer:
        """A recognizer for ``options``: a warm one when the pool has it, else a new one."""
        key = options
        with self._lock:
            found = self._take(key)
            self._in_use += 1
            self._hits += found is not None
            self._misses += found is None
        try:
            inner = found.recognizer if found else self._engine.create(options)
        except BaseException:
            with self._lock:
                self._in_use -= 1
            raise
        return PooledRecognizer(inner, options, self._give_back, found.audio_s if found else 0.0)

    def warm(self, options: RecognizerOptions) -> None:
        """Create ``settings.warm`` recognizers for ``options`` and decode a little audio on each."""
        noise = warm_up_audio(options.sample_rate_hz, self._settings.warm_audio_ms)
        borrowed = [self.acquire(options) for _ in range(self._settings.warm)]
        for recognizer in borrowed:
            recognizer.accept(noise)
            recognizer.flush()
        for recognizer in borrowed:
            recognizer.close()

    def trim(self) -> int:
        """Free recognizers idle for longer than the TTL; returns how many."""
        cutoff = self._clock() - self._settings.idle_ttl_s
        with self._lock:
            stale = [i for i in self._idle if i.since < cutoff]
            self._idle = [i for i in self._idle if i.since >= cutoff]
        for item in stale:
            item.recognizer.close()
        return len(stale)

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(len(self._idle), self._in_use, self._hits, self._misses, self._discarded)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for item in idle:
            item.recognizer.close()

    def _take(self, key: RecognizerOptions) -> _Idle | None:
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index].options == key:
                return self._idle.pop(index)
        return None

    def _give_back(
        self, recognizer: Recognizer, options: RecognizerOptions, healthy: bool, audio_s: float
    ) -> None:
        worn = audio_s >= self._settings.max_audio_s
        reusable = healthy and not worn and self._restart(recognizer)
        evicted: list[_Idle] = []
        with self._lock:
            self._in_use -= 1
            if reusable and not self._closed and self._settings.max_idle > 0:
                self._idle.append(_Idle(recognizer, options, self._clock(), audio_s))
                keep = self._settings.max_idle
                evicted, self._idle = self._idle[:-keep], self._idle[-keep:]
                kept = True
            else:
                kept = False
                self._discarded += not healthy
        for item in evicted:
            item.recognizer.close()
        if not kept:
            recognizer.close()

    def _restart(self, recognizer: Recognizer) -> bool:
        try:
            recognizer.restart()
            return True
        except Exception:
            logger.exception("recognizer_restart_failed")
            return False


def warm_up_audio(sample_rate_hz: int, duration_ms: int) -> bytes:
    """Deterministic low-level noise with a few louder bursts, enough to exercise the decoder."""
    rng = np.random.default_rng(1)
    samples = rng.normal(0, 300, sample_rate_hz * duration_ms // 1000)
    envelope = 1 + 8 * (np.sin(np.arange(samples.size) * 2 * np.pi * 3 / sample_rate_hz) > 0.7)
    return np.clip(samples * envelope, -32768, 32767).astype("<i2").tobytes()


class PooledRecognizer:
    """A borrowed recognizer; ``close()`` returns it to the pool unless it failed."""

    def __init__(
        self,
        inner: Recognizer,
        options: RecognizerOptions,
        give_back: Callable[[Recognizer, RecognizerOptions, bool, float], None],
        audio_s: float = 0.0,
    ) -> None:
        self._inner: Recognizer | None = inner
        self._options = options
        self._give_back = give_back
        self._healthy = True
        self.audio_s = audio_s  # decoded by the inner recognizer in its life, this borrower included

    @property
    def sample_rate_hz(self) -> int:
        return self._options.sample_rate_hz

    def accept(self, pcm: bytes) -> list[Final]:
        self.audio_s += len(pcm) / 2 / self._options.sample_rate_hz
        return self._guarded(lambda r: r.accept(pcm))

    def replay(self, pcm: bytes) -> list[Final]:
        self.audio_s += len(pcm) / 2 / self._options.sample_rate_hz
        return self._guarded(lambda r: r.replay(pcm))

    def partial(self) -> str:
        return self._guarded(lambda r: r.partial())

    def horizon_ms(self) -> int:
        return self._guarded(lambda r: r.horizon_ms())

    def flush(self) -> list[Final]:
        return self._guarded(lambda r: r.flush())

    def reset(self) -> None:
        self._guarded(lambda r: r.reset())

    def restart(self) -> None:
        self._guarded(lambda r: r.restart())

    def resume(self, position_samples: int, next_utterance: int) -> None:
        self._guarded(lambda r: r.resume(position_samples, next_utterance))

    def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            self._give_back(inner, self._options, self._healthy, self.audio_s)

    def _guarded(self, call: Callable[[Recognizer], T]) -> T:
        if self._inner is None:
            raise RuntimeError("the recognizer was returned to its pool")
        try:
            return call(self._inner)
        except InvalidAudio:
            raise
        except BaseException:
            self._healthy = False
            raise
