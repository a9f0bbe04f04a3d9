"""The Vosk engine on the real Korean model with real (synthetic) Korean speech."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.engines.base import (
    Final,
    InvalidAudio,
    InvalidOptions,
    RecognizerOptions,
    UnsupportedSampleRate,
)
from decoder_api.engines.vosk import VoskEngine, VoskRecognizer, read_model_rates
from decoder_api.sessions.transcripts import stream_pcm
from tests.conftest import RATE_HZ, SpokenCall


def feed(recognizer: VoskRecognizer, pcm: bytes, chunk_ms: int = 200) -> tuple[list[Final], list[str]]:
    finals: list[Final] = []
    partials: list[str] = []
    for chunk in iter_chunks(pcm, chunk_bytes(RATE_HZ, chunk_ms)):
        finals.extend(recognizer.accept(chunk))
        partials.append(recognizer.partial())
    return finals, partials


def test_partials_evolve_while_audio_streams(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    recognizer = vosk_engine.create(RecognizerOptions(RATE_HZ))
    _, partials = feed(recognizer, korean_call.pcm)
    distinct = [p for i, p in enumerate(partials) if p and (i == 0 or p != partials[i - 1])]
    assert len(distinct) >= 4, partials
    assert any(len(b.split()) > len(a.split()) for a, b in itertools.pairwise(distinct))


def test_finals_appear_at_pauses(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    recognizer = vosk_engine.create(RecognizerOptions(RATE_HZ))
    finals, _ = feed(recognizer, korean_call.pcm)
    finals += recognizer.flush()
    assert [f.utterance for f in finals] == list(range(len(korean_call.turns)))
    for final, (start, end) in zip(finals, korean_call.spans_ms, strict=True):
        assert final.text
        assert start - 300 <= final.start_ms < final.end_ms <= end + 300


def test_phrase_list_constrains_recognition(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    options = RecognizerOptions(RATE_HZ, phrases=korean_call.turns)
    recognizer = vosk_engine.create(options)
    finals = stream_pcm(recognizer, korean_call.pcm, chunk_ms=200).finals
    vocabulary = {w for turn in korean_call.turns for w in turn.split()}
    assert finals[0].text == korean_call.turns[0]
    assert all(set(f.text.split()) <= vocabulary for f in finals)


def test_phrase_list_of_unknown_words_is_refused(vosk_engine: VoskEngine) -> None:
    with pytest.raises(InvalidOptions):
        vosk_engine.create(RecognizerOptions(RATE_HZ, phrases=("zzqx", "qqzz")))


def test_word_times_are_monotonic_and_inside_the_audio(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    recognizer = vosk_engine.create(RecognizerOptions(RATE_HZ, words=True))
    finals = stream_pcm(recognizer, korean_call.pcm, chunk_ms=250).finals
    words = [w for f in finals for w in f.words or ()]
    assert len(words) >= len(korean_call.turns)
    assert all(0 <= w.start_ms <= w.end_ms <= korean_call.duration_ms for w in words)
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(words))
    assert all(0.0 <= w.conf <= 1.0 for w in words)
    for final in finals:
        assert final.words
        assert final.start_ms == final.words[0].start_ms
        assert final.end_ms == final.words[-1].end_ms


def test_words_are_omitted_unless_asked_for(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    finals = stream_pcm(vosk_engine.create(RecognizerOptions(RATE_HZ)), korean_call.pcm, 200).finals
    assert finals
    assert all(f.words is None for f in finals)


def test_flush_finalises_trailing_speech(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    first_turn_end = korean_call.spans_ms[0][1] * RATE_HZ // 1000 * 2
    recognizer = vosk_engine.create(RecognizerOptions(RATE_HZ))
    finals, _ = feed(recognizer, korean_call.pcm[:first_turn_end])
    assert finals == []
    assert recognizer.partial()
    flushed = recognizer.flush()
    assert [f.utterance for f in flushed] == [0]
    assert recognizer.partial() == ""
    assert recognizer.flush() == []


def test_reset_discards_the_open_utterance_and_keeps_the_clock(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    first_turn_end = korean_call.spans_ms[0][1] * RATE_HZ // 1000 * 2
    recognizer = vosk_engine.create(RecognizerOptions(RATE_HZ, words=True))
    feed(recognizer, korean_call.pcm[:first_turn_end])
    recognizer.reset()
    assert recognizer.partial() == ""
    rest = korean_call.pcm[first_turn_end:]
    finals = stream_pcm(recognizer, rest, chunk_ms=200).finals
    assert finals[0].utterance == 0
    assert len(finals) == len(korean_call.turns) - 1
    start, end = korean_call.spans_ms[1]
    assert start - 300 <= finals[0].start_ms < finals[0].end_ms <= end + 300


def test_two_recognizers_in_threads_do_not_interfere(
    vosk_engine: VoskEngine, korean_call: SpokenCall
) -> None:
    halves = (korean_call.pcm, korean_call.pcm[: len(korean_call.pcm) // 2])
    alone = [stream_pcm(vosk_engine.create(RecognizerOptions(RATE_HZ)), pcm, 200).text for pcm in halves]

    def decode(pcm: bytes) -> str:
        return stream_pcm(vosk_engine.create(RecognizerOptions(RATE_HZ)), pcm, 200).text

    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(decode, [*halves, *halves]))
    assert together == [*alone, *alone]


def test_other_sample_rates_within_the_model_range(vosk_engine: VoskEngine) -> None:
    assert read_model_rates(Path(vosk_engine.model.path)) == vosk_engine.rates
    assert vosk_engine.rates.native_hz == RATE_HZ
    assert vosk_engine.create(RecognizerOptions(8000)).sample_rate_hz == 8000
    with pytest.raises(UnsupportedSampleRate):
        vosk_engine.create(RecognizerOptions(96000))
    with pytest.raises(UnsupportedSampleRate):
        vosk_engine.create(RecognizerOptions(100))


def test_odd_byte_count_is_rejected(vosk_engine: VoskEngine) -> None:
    recognizer = vosk_engine.create(RecognizerOptions(RATE_HZ))
    with pytest.raises(InvalidAudio):
        recognizer.accept(b"\0\0\0")
    assert recognizer.accept(b"") == []
    assert recognizer.accept(b"\0\0") == []


def test_decoding_is_deterministic(vosk_engine: VoskEngine, korean_call: SpokenCall) -> None:
    runs = [
        stream_pcm(vosk_engine.create(RecognizerOptions(RATE_HZ, words=True)), korean_call.pcm, 200)
        for _ in "abc"
    ]
    assert runs[0].finals == runs[1].finals == runs[2].finals


@pytest.mark.parametrize("cut_fraction", [0.2, 0.45, 0.7, 0.95])
def test_replaying_the_audio_since_the_last_final_reproduces_the_call(
    vosk_engine: VoskEngine, korean_call: SpokenCall, cut_fraction: float
) -> None:
    """What a takeover does: a new recognizer resumes at the last final and replays the tail."""
    options = RecognizerOptions(RATE_HZ, words=True)
    size = chunk_bytes(RATE_HZ, 200)
    chunks = list(iter_chunks(korean_call.pcm, size))
    uninterrupted = stream_pcm(vosk_engine.create(options), korean_call.pcm, 200).finals
    owner = vosk_engine.create(options)
    finals: list[Final] = []
    tail_start = 0
    for index, chunk in enumerate(chunks[: int(len(chunks) * cut_fraction)]):
        done = owner.accept(chunk)
        if done:
            finals += done
            tail_start = index + 1
    successor = vosk_engine.create(options)
    successor.resume(tail_start * size // 2, len(finals))
    for chunk in chunks[tail_start:]:
        finals += successor.accept(chunk)
    finals += successor.flush()
    assert tuple(finals) == uninterrupted
