"""The warm recognizer pool: reuse must be indistinguishable from a fresh recognizer."""

from __future__ import annotations

import pytest

from decoder_api.audio import iter_chunks
from decoder_api.engines.base import InvalidAudio, RecognizerOptions
from decoder_api.engines.pool import PoolSettings, PoolStats, RecognizerPool
from decoder_api.engines.vosk import VoskEngine
from decoder_api.engines.whisper import WhisperEngine
from decoder_api.sessions.transcripts import stream_pcm
from tests.conftest import RATE_HZ, SpokenCall

OPTIONS = RecognizerOptions(RATE_HZ, words=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def first_turn_bytes(call: SpokenCall) -> int:
    return call.spans_ms[0][1] * RATE_HZ // 1000 * 2


def test_a_reused_recognizer_decodes_exactly_like_a_fresh_one(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    fresh = stream_pcm(vosk_engine.create(OPTIONS), korean_call.pcm, 200)
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=0))
    first = pool.acquire(OPTIONS)
    stream_pcm(first, korean_call.pcm, 200)
    first.close()
    second = pool.acquire(OPTIONS)
    assert pool.stats().hits == 1
    assert second.partial() == ""
    assert stream_pcm(second, korean_call.pcm, 200) == fresh


def test_nothing_leaks_from_a_call_abandoned_mid_utterance(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    fresh = stream_pcm(vosk_engine.create(OPTIONS), korean_call.pcm, 200)
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=0))
    abandoned = pool.acquire(OPTIONS)
    for chunk in iter_chunks(korean_call.pcm[: first_turn_bytes(korean_call)], 6400):
        abandoned.accept(chunk)
    assert abandoned.partial()
    abandoned.reset()
    abandoned.accept(korean_call.pcm[: first_turn_bytes(korean_call) // 3])
    abandoned.close()
    reused = pool.acquire(OPTIONS)
    assert pool.stats().hits == 1
    assert reused.partial() == ""
    assert stream_pcm(reused, korean_call.pcm, 200) == fresh


def test_recognizers_are_kept_per_option_set(vosk_engine: VoskEngine) -> None:
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=0))
    pool.acquire(OPTIONS).close()
    other = pool.acquire(RecognizerOptions(RATE_HZ, words=False))
    assert pool.stats().misses == 2
    other.close()
    pool.acquire(OPTIONS).close()
    assert pool.stats().hits == 1


def test_a_recognizer_that_raised_is_discarded(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=0))
    borrowed = pool.acquire(OPTIONS)
    borrowed._inner._kaldi = None  # type: ignore[union-attr]  # the engine breaks under us
    with pytest.raises(AttributeError):
        borrowed.accept(korean_call.pcm[:6400])
    borrowed.close()
    assert pool.stats().discarded == 1
    assert pool.stats().idle == 0
    pool.acquire(OPTIONS).close()
    assert pool.stats().misses == 2


def test_bad_client_audio_does_not_discard(vosk_engine: VoskEngine) -> None:
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=0))
    borrowed = pool.acquire(OPTIONS)
    with pytest.raises(InvalidAudio, match="odd byte count"):
        borrowed.accept(b"\0\0\0")
    borrowed.close()
    assert pool.stats().idle == 1


def test_idle_cap_and_trimming(vosk_engine: VoskEngine) -> None:
    clock = FakeClock()
    pool = RecognizerPool(vosk_engine, PoolSettings(max_idle=2, idle_ttl_s=60, warm=0), clock=clock)
    borrowed = [pool.acquire(OPTIONS) for _ in range(3)]
    for recognizer in borrowed:
        recognizer.close()
    assert pool.stats().idle == 2
    clock.now += 30
    assert pool.trim() == 0
    clock.now += 31
    assert pool.trim() == 2
    assert pool.stats().idle == 0


def test_warm_up_fills_the_pool(vosk_engine: VoskEngine) -> None:
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=2, warm_audio_ms=500))
    pool.warm(OPTIONS)
    assert pool.stats().idle == 2
    pool.acquire(OPTIONS).close()
    assert pool.stats().hits == 1
    pool.close()
    assert pool.stats().idle == 0


def test_whisper_recognizers_restart_like_new(
    whisper_engine_for_pool: WhisperEngine, data_pcm: bytes
) -> None:
    options = RecognizerOptions(RATE_HZ, words=True, partials=False)
    fresh = stream_pcm(whisper_engine_for_pool.create(options), data_pcm, 200)
    pool = RecognizerPool(whisper_engine_for_pool, PoolSettings(warm=0))
    used = pool.acquire(options)
    used.accept(data_pcm[: len(data_pcm) // 3 // 2 * 2])
    used.close()
    assert stream_pcm(pool.acquire(options), data_pcm, 200) == fresh


@pytest.fixture(scope="module")
def whisper_engine_for_pool() -> WhisperEngine:
    from decoder_api.engines.models import resolve_model

    return WhisperEngine(resolve_model("whisper", None, None))


@pytest.fixture(scope="module")
def data_pcm() -> bytes:
    from decoder_api.audio import decode_file
    from tests.conftest import DATA

    return decode_file(DATA / "librivox-0930.wav", RATE_HZ).pcm


def test_a_recognizer_worn_by_audio_is_freed_not_reused(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    """Its decoding-graph cache grows with the audio it decodes, so reuse is bounded by audio."""
    pool = RecognizerPool(vosk_engine, PoolSettings(warm=0, max_audio_s=1.0))
    short = pool.acquire(OPTIONS)
    short.accept(korean_call.pcm[:6400])  # 0.2 s
    short.close()
    assert pool.stats().idle == 1
    worn = pool.acquire(OPTIONS)
    assert worn.audio_s == pytest.approx(0.2)
    worn.accept(korean_call.pcm[: RATE_HZ * 2])  # 1 s more
    worn.close()
    assert pool.stats() == PoolStats(idle=0, in_use=0, hits=1, misses=1, discarded=0)
