"""Streaming recognition on faster-whisper (CTranslate2 Whisper) with Silero VAD endpointing.

Whisper decodes whole utterances, not a running stream, so this module turns it into a streaming
recognizer:

* client PCM (8-48 kHz) is resampled to 16 kHz by a stateful ``soxr.ResampleStream``;
* faster-whisper's bundled Silero VAD ONNX model scores fixed 512-sample windows, with its
  recurrent state kept per stream, so chunk boundaries never change a decision;
* an utterance runs from the first speech window (plus a short pre-roll) until
  ``endpoint_silence_ms`` of silence or ``max_utterance_ms``; it is then decoded once for the final;
* while an utterance is open it is re-decoded for a partial every ``partial_interval_ms`` of audio;
  with ``background_partials`` (the default) that decode runs on a worker thread (see ``partials``)
  on the audio heard when the worker starts, and a chunk is answered with the newest partial
  already decoded, so replies never wait for one. Partials are greedy and encode a shorter window
  than finals (see ``WhisperEngine.decode_greedy``); finals are decoded as before.

Every time is counted in samples of the 16 kHz stream, which starts with the client's stream, so
``Final``/``Word`` times are milliseconds of stream time and do not depend on the wall clock.

Phrases cannot constrain Whisper's output: they are passed as faster-whisper ``hotwords``, a
prompt that *biases* decoding towards those words but never restricts it to them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens
from faster_whisper.vad import get_vad_model

from decoder_api.engines.base import (
    Final,
    InvalidOptions,
    ModelInfo,
    RecognizerOptions,
    UnsupportedSampleRate,
    Word,
    pcm_to_float,
    samples_to_ms,
)
from decoder_api.engines.partials import BackgroundPartials, PartialJob
from decoder_api.engines.settings import WhisperSettings
from decoder_api.errors import ModelNotFound

logger = logging.getLogger(__name__)

WHISPER_RATE_HZ = 16000
MIN_CLIENT_RATE_HZ = 8000
MAX_CLIENT_RATE_HZ = 48000
VAD_WINDOW_SAMPLES = 512
VAD_CONTEXT_SAMPLES = 64
VAD_STATE_SHAPE = (1, 1, 128)
VAD_HYSTERESIS = 0.15
PRE_ROLL_MS = 200
POST_ROLL_MS = 200
MAX_HOTWORDS_CHARS = 800
MAX_BEAM_SIZE = 20
# Whisper's encoder window is 30 s of 10 ms frames. A partial encodes its audio padded to 15 s only:
# the encoder is most of a partial's cost, and with a shorter window tiny.en repeats short
# utterances over and over ("Good morning. Good morning. ...") where the full window does not.
WINDOW_FRAMES = 3000
PARTIAL_WINDOW_FRAMES = 1500
# A partial's text is capped at this many tokens per second of audio (plus a few), far above
# speech, so that a decode stuck repeating itself stops early instead of at Whisper's 448 tokens.
PARTIAL_TOKENS_PER_S = 10
PARTIAL_EXTRA_TOKENS = 8
# faster-whisper's defaults for dropping a segment as silence, applied to partials as to finals.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
PARTIAL_THREADS = 1  # background partial decodes at a time

# Text with no letter or digit ("", ".", " - ") or a lone annotation ("[BLANK_AUDIO]", "(silence)")
# is what Whisper produces on near-silence; it is never a transcript.
_NON_SPEECH_TEXT = re.compile(r"[\W_]*|\s*[\[(][^\])]*[\])]\s*")


@dataclass(frozen=True)
class TimedWord:
    """A word of one decode; times in seconds from the start of the decoded audio."""

    word: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True)
class Transcript:
    """The result of decoding one piece of audio."""

    text: str
    words: tuple[TimedWord, ...] = ()


class WhisperEngine:
    """One faster-whisper model per process, shared (thread-safely) by every recognizer."""

    name = "whisper"
    graph = ""  # no decoding graph: a sequence-to-sequence model

    def __init__(
        self,
        model: ModelInfo,
        settings: WhisperSettings | None = None,
        on_partial_lag: Callable[[float], None] | None = None,
    ) -> None:
        """``on_partial_lag`` is told, for each background partial published, how many seconds of
        audio the stream had moved on since the audio that partial covers."""
        self.model = model
        self.settings = settings or WhisperSettings()
        background = self.settings.background_partials
        # The background partials get CTranslate2 workers of their own: with only the finals' workers,
        # a partial waits behind every final being decoded, and a final behind the partial.
        workers = self.settings.num_workers + (PARTIAL_THREADS if background else 0)
        self._whisper = load_whisper_model(model, self.settings, workers)
        self._vad_session: Any = get_vad_model().session
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer,
            self._whisper.model.is_multilingual,
            task="transcribe",
            language=self.settings.language,
        )
        self._suppressed_tokens = get_suppressed_tokens(self._tokenizer, [-1])
        self._closed = False
        self.on_partial_lag = on_partial_lag
        self.partials = BackgroundPartials(self.decode_partial, PARTIAL_THREADS) if background else None
        logger.info("whisper engine loaded model=%s compute_type=%s", model.name, self.settings.compute_type)

    def create(self, options: RecognizerOptions) -> WhisperRecognizer:
        """A new streaming recognizer; raises UnsupportedSampleRate or InvalidOptions."""
        if self._closed:
            raise RuntimeError("whisper engine is closed")
        return WhisperRecognizer(self, options)

    def new_vad(self) -> SileroVad:
        """Per-stream VAD state over the shared ONNX session."""
        return SileroVad(self._vad_session, self.settings.vad_threshold)

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        final: bool,
        words: bool,
        hotwords: str | None,
        beam_size: int | None = None,
    ) -> Transcript:
        """Decode 16 kHz float32 audio (at most 30 s) in one blocking call.

        Finals use ``beam_size`` or else the configured one; partials, which are thrown away a
        second later, are greedy and, unless they ask for words, encode a shorter window (see
        ``decode_greedy``).
        """
        started = time.perf_counter()
        if final or words:
            segments, _info = self._whisper.transcribe(
                audio,
                language=self.settings.language,
                beam_size=(beam_size or self.settings.beam_size) if final else 1,
                temperature=0.0,
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=not words,
                word_timestamps=words,
                hotwords=hotwords,
            )
            transcript = build_transcript(list(segments))
        else:
            transcript = Transcript(self.decode_greedy(audio, hotwords))
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug(
            "decoded audio_ms=%d final=%s elapsed_ms=%.0f",
            samples_to_ms(len(audio), WHISPER_RATE_HZ),
            final,
            elapsed_ms,
        )
        return transcript

    def decode_greedy(self, audio: np.ndarray, hotwords: str | None) -> str:
        """Text of a greedy decode of 16 kHz float32 ``audio`` (at most 30 s) without timestamps, its
        encoder window the audio padded to ``PARTIAL_WINDOW_FRAMES`` rather than 30 s: under half
        the cost of a final's window, and on the calls of ``data/`` the same text but for a trailing
        word or punctuation mark now and then."""
        whisper = self._whisper
        features = whisper.feature_extractor(audio)[..., :-1]  # the frame past the end goes, as in transcribe
        frames = min(max(features.shape[-1], PARTIAL_WINDOW_FRAMES), WINDOW_FRAMES)
        prompt = whisper.get_prompt(self._tokenizer, [], without_timestamps=True, hotwords=hotwords)
        new_tokens = PARTIAL_EXTRA_TOKENS + math.ceil(PARTIAL_TOKENS_PER_S * len(audio) / WHISPER_RATE_HZ)
        result = whisper.model.generate(
            whisper.encode(pad_or_trim(features, frames)),
            [prompt],
            beam_size=1,
            max_length=min(len(prompt) + new_tokens, whisper.max_length),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed_tokens,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # as faster-whisper has it
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
            return ""
        text = self._tokenizer.decode(tokens).strip()
        return "" if is_non_speech(text) else text

    def decode_partial(self, audio: np.ndarray, hotwords: str | None) -> str:
        """Text of a partial re-decode of ``audio`` (no word times)."""
        return self.transcribe(audio, final=False, words=False, hotwords=hotwords).text

    def close(self) -> None:
        """Unload the model; recognizers created by this engine become unusable."""
        if not self._closed:
            self._closed = True
            if self.partials is not None:
                self.partials.close()
            self._whisper.model.unload_model()


def load_whisper_model(model: ModelInfo, settings: WhisperSettings, num_workers: int) -> WhisperModel:
    """Load the CTranslate2 Whisper model directory at ``model.path`` for CPU inference (never downloads),
    able to run ``num_workers`` decodes at once (each worker past the first added ~20 MB RSS with tiny.en)."""
    if not os.path.isdir(model.path):
        raise ModelNotFound(f"whisper model {model.name!r} has no directory at its path", model=model.name)
    try:
        return WhisperModel(
            str(model.path),
            device="cpu",
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelNotFound(f"cannot load whisper model {model.name!r}", model=model.name) from err


def check_options(options: RecognizerOptions) -> None:
    """Reject options this engine cannot honour."""
    rate = options.sample_rate_hz
    if not MIN_CLIENT_RATE_HZ <= rate <= MAX_CLIENT_RATE_HZ:
        raise UnsupportedSampleRate(
            f"sample rate must be {MIN_CLIENT_RATE_HZ}-{MAX_CLIENT_RATE_HZ} Hz; got {rate}",
            sample_rate_hz=rate,
        )
    if options.max_alternatives != 0:
        raise InvalidOptions("the whisper engine does not produce alternatives; use max_alternatives=0")
    if options.phrases is not None:
        check_phrases(options.phrases)
    if options.beam_size is not None and not 1 <= options.beam_size <= MAX_BEAM_SIZE:
        raise InvalidOptions(f"beam_size must be 1-{MAX_BEAM_SIZE}; got {options.beam_size}")


def check_phrases(phrases: tuple[str, ...]) -> None:
    """Phrases must be non-blank and short enough to fit Whisper's prompt."""
    if any(not phrase.strip() for phrase in phrases):
        raise InvalidOptions("phrases must not be blank")
    if len(hotwords_for(phrases) or "") > MAX_HOTWORDS_CHARS:
        raise InvalidOptions(f"phrases are too long for whisper (max {MAX_HOTWORDS_CHARS} characters in all)")


def hotwords_for(phrases: tuple[str, ...] | None) -> str | None:
    """The hotwords prompt for the phrases: it biases Whisper towards them, it does not restrict it."""
    if not phrases:
        return None
    return ", ".join(phrase.strip() for phrase in phrases)


def build_transcript(segments: list[Any]) -> Transcript:
    """Join faster-whisper segments; near-silence hallucinations become empty text."""
    text = " ".join(segment.text.strip() for segment in segments).strip()
    if is_non_speech(text):
        return Transcript(text="")
    words = tuple(
        TimedWord(word.word.strip(), float(word.start), float(word.end), float(word.probability))
        for segment in segments
        for word in segment.words or ()
        if word.word.strip()
    )
    return Transcript(text=text, words=words)


def is_non_speech(text: str) -> bool:
    """True for empty, punctuation-only or bracketed-annotation text."""
    return _NON_SPEECH_TEXT.fullmatch(text) is not None


def ms_to_samples(ms: int) -> int:
    """Milliseconds to a sample count of the 16 kHz stream."""
    return ms * WHISPER_RATE_HZ // 1000


def pre_roll_windows() -> int:
    """VAD windows kept before speech starts: the pre-roll plus the window that triggers."""
    return math.ceil(ms_to_samples(PRE_ROLL_MS) / VAD_WINDOW_SAMPLES) + 1


class SileroVad:
    """Silero VAD run window by window, keeping the recurrent state and context of one stream."""

    def __init__(self, session: Any, threshold: float) -> None:
        self._session = session
        self.threshold = threshold
        self.silence_threshold = max(threshold - VAD_HYSTERESIS, 0.01)
        self.reset()

    def reset(self) -> None:
        """Forget all audio seen so far."""
        self._h = np.zeros(VAD_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(VAD_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT_SAMPLES, dtype=np.float32)

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of the next 512-sample window of 16 kHz audio."""
        frame = np.concatenate([self._context, window])[np.newaxis, :]
        prob, self._h, self._c = self._session.run(None, {"input": frame, "h": self._h, "c": self._c})
        self._context = window[-VAD_CONTEXT_SAMPLES:].copy()
        return float(np.asarray(prob).ravel()[0])


@dataclass
class OpenUtterance:
    """Audio and endpoint state of the utterance being heard; positions are 16 kHz stream samples."""

    start: int
    windows: list[np.ndarray]
    size: int
    speech_samples: int = VAD_WINDOW_SAMPLES
    silence_start: int | None = None
    last_partial_at: int = 0

    @classmethod
    def opened_with(cls, windows: list[np.ndarray], end: int) -> OpenUtterance:
        """An utterance whose first speech window is the last of ``windows`` (the rest is pre-roll)."""
        size = sum(len(window) for window in windows)
        return cls(start=end - size, windows=windows, size=size, last_partial_at=end - size)

    @property
    def end(self) -> int:
        return self.start + self.size

    def append(self, window: np.ndarray) -> None:
        self.windows.append(window)
        self.size += len(window)

    def audio(self, end: int) -> np.ndarray:
        """The utterance audio up to stream position ``end``."""
        return np.concatenate(self.windows)[: end - self.start]


class WhisperRecognizer:
    """One stream's state: resampler, VAD, the open utterance and the latest partial."""

    def __init__(self, engine: WhisperEngine, options: RecognizerOptions) -> None:
        check_options(options)
        self._engine = engine
        self._settings = engine.settings
        self._words = options.words
        self._partials = options.partials
        self._hotwords = hotwords_for(options.phrases)
        self._beam_size = options.beam_size
        self._rate_hz = options.sample_rate_hz
        self._vad = engine.new_vad()
        self._pre_roll: deque[np.ndarray] = deque(maxlen=pre_roll_windows())
        self._closed = False
        # The partial and what it covers may be written by a background worker: guarded by this lock,
        # and a worker's text is taken only for the utterance (generation) it was decoded from. The
        # open utterance is set under it too, so that a worker reads it with its generation.
        self._partial_lock = threading.Lock()
        self._generation = 0
        self._partial = ""
        self._partial_end = 0
        self._start_stream()

    def _start_stream(self) -> None:
        self._resampler = self._new_resampler()
        self._vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0
        self._pre_roll.clear()
        self._utterance: OpenUtterance | None = None
        self._clear_partial()
        self._next_index = 0

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    def accept(self, pcm: bytes) -> list[Final]:
        """Feed PCM; return the utterances this chunk completed (usually none)."""
        self._check_open()
        finals = self._consume(self._resample(pcm, last=False))
        if self._partials:
            self._refresh_partial()
        return finals

    def partial(self) -> str:
        """Text of the latest re-decode of the open utterance ("" when none is open)."""
        with self._partial_lock:
            return self._partial

    def horizon_ms(self) -> int:
        """The open utterance's start; with none open, the earliest start one opened next can have
        (the VAD position less the pre-roll windows it would take along)."""
        if self._utterance is not None:
            return samples_to_ms(self._utterance.start, WHISPER_RATE_HZ)
        pre_roll = sum(len(window) for window in self._pre_roll)
        return samples_to_ms(max(self._position - pre_roll, 0), WHISPER_RATE_HZ)

    def flush(self) -> list[Final]:
        """End of stream: finalise the open utterance if it holds enough speech."""
        self._check_open()
        finals = self._consume(self._resample(b"", last=True))
        tail = self._take_pending()
        if self._utterance is not None and len(tail):
            self._utterance.append(tail)
        final = self._finish_utterance()
        self._vad.reset()
        return finals if final is None else [*finals, final]

    def reset(self) -> None:
        """Discard the open utterance and VAD state without a final; the stream clock keeps running."""
        self._check_open()
        self._take_pending()
        self._drop_utterance()
        self._vad.reset()

    def restart(self) -> None:
        """Back to the state of a new recognizer: stream clock and utterance index at zero."""
        self.resume(0, 0)

    def resume(self, position_samples: int, next_utterance: int) -> None:
        """Continue a stream decoded elsewhere up to ``position_samples`` (client rate)."""
        self._check_open()
        self._start_stream()
        self._position = position_samples * WHISPER_RATE_HZ // self._rate_hz
        self._next_index = next_utterance

    def replay(self, pcm: bytes) -> list[Final]:
        return self.accept(pcm)

    def close(self) -> None:
        """Free the buffers; the recognizer is unusable afterwards."""
        self._closed = True
        self._pending = np.zeros(0, dtype=np.float32)
        self._drop_utterance()  # also cancels a background partial still waiting

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("recognizer is closed")

    def _new_resampler(self) -> soxr.ResampleStream | None:
        if self._rate_hz == WHISPER_RATE_HZ:
            return None
        return soxr.ResampleStream(self._rate_hz, WHISPER_RATE_HZ, 1, dtype="float32")

    def _resample(self, pcm: bytes, *, last: bool) -> np.ndarray:
        """Client PCM (validated) as 16 kHz float32 samples; ``last`` drains the resampler."""
        samples = pcm_to_float(pcm)
        if self._resampler is None:
            return samples
        resampled = np.asarray(self._resampler.resample_chunk(samples, last=last), dtype=np.float32)
        if last:
            self._resampler.clear()
        return resampled

    def _take_pending(self) -> np.ndarray:
        """The samples short of a whole VAD window, removed from the buffer; the clock moves past them."""
        tail, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        self._position += len(tail)
        return tail

    def _consume(self, samples: np.ndarray) -> list[Final]:
        """Run every whole VAD window through the endpointer; keep the remainder for later."""
        buffered = np.concatenate([self._pending, samples])
        whole = len(buffered) - len(buffered) % VAD_WINDOW_SAMPLES
        finals = []
        for offset in range(0, whole, VAD_WINDOW_SAMPLES):
            final = self._step(buffered[offset : offset + VAD_WINDOW_SAMPLES].copy())
            if final is not None:
                finals.append(final)
        self._pending = buffered[whole:].copy()
        return finals

    def _step(self, window: np.ndarray) -> Final | None:
        """Advance the endpointer by one window; return a final when an utterance ends."""
        start = self._position
        self._position += len(window)
        prob = self._vad.probability(window)
        utterance = self._utterance
        if utterance is None:
            self._pre_roll.append(window)
            if prob >= self._vad.threshold:
                opened = OpenUtterance.opened_with(list(self._pre_roll), self._position)
                with self._partial_lock:  # a background worker reads it with the generation
                    self._utterance = opened
                self._pre_roll.clear()
            return None
        utterance.append(window)
        self._track_speech(utterance, prob, start)
        return self._finish_utterance() if self._endpoint_reached(utterance) else None

    def _track_speech(self, utterance: OpenUtterance, prob: float, start: int) -> None:
        """Silero-style hysteresis: silence starts below the lower threshold, speech resets it."""
        if prob >= self._vad.threshold:
            utterance.speech_samples += VAD_WINDOW_SAMPLES
            utterance.silence_start = None
        elif prob < self._vad.silence_threshold and utterance.silence_start is None:
            utterance.silence_start = start

    def _endpoint_reached(self, utterance: OpenUtterance) -> bool:
        """Enough silence after speech, or one more window would pass max_utterance_ms."""
        silence_start = utterance.silence_start
        endpoint_samples = ms_to_samples(self._settings.endpoint_silence_ms)
        if silence_start is not None and self._position - silence_start >= endpoint_samples:
            return True
        return utterance.size + VAD_WINDOW_SAMPLES > ms_to_samples(self._settings.max_utterance_ms)

    def _finish_utterance(self) -> Final | None:
        """Close the open utterance and decode it; None when it held too little speech or no text."""
        utterance = self._utterance
        self._drop_utterance()
        if utterance is None or utterance.speech_samples < ms_to_samples(self._settings.min_speech_ms):
            return None
        end = utterance.end
        if utterance.silence_start is not None:
            end = min(end, utterance.silence_start + ms_to_samples(POST_ROLL_MS))
        transcript = self._engine.transcribe(
            utterance.audio(end),
            final=True,
            words=self._words,
            hotwords=self._hotwords,
            beam_size=self._beam_size,
        )
        if not transcript.text:
            logger.debug("utterance had no text start_ms=%d", samples_to_ms(utterance.start, WHISPER_RATE_HZ))
            return None
        return self._make_final(transcript, utterance.start, end)

    def _make_final(self, transcript: Transcript, start: int, end: int) -> Final:
        start_ms = samples_to_ms(start, WHISPER_RATE_HZ)
        end_ms = samples_to_ms(end, WHISPER_RATE_HZ)
        words = stream_words(transcript.words, start_ms, end_ms) if self._words else None
        final = Final(self._next_index, transcript.text, start_ms, end_ms, words)
        self._next_index += 1
        logger.debug("final utterance=%d start_ms=%d end_ms=%d", final.utterance, start_ms, end_ms)
        return final

    def _drop_utterance(self) -> None:
        with self._partial_lock:
            self._utterance = None
        self._clear_partial()
        self._pre_roll.clear()

    def _clear_partial(self) -> None:
        """No partial, and none decoded for an earlier utterance will be taken."""
        with self._partial_lock:
            self._generation += 1
            self._partial = ""
            self._partial_end = 0
        if self._engine.partials is not None:
            self._engine.partials.cancel(self)

    def _refresh_partial(self) -> None:
        """Re-decode the open utterance once enough new audio (and speech) arrived since the last time;
        in the background, ask for it (the worker takes the audio there is when it starts)."""
        utterance = self._utterance
        if utterance is None or utterance.speech_samples < ms_to_samples(self._settings.min_speech_ms):
            return
        if utterance.end - utterance.last_partial_at < ms_to_samples(self._settings.partial_interval_ms):
            return
        background = self._engine.partials
        if background is None:
            utterance.last_partial_at = end = utterance.end
            self._partial = self._engine.decode_partial(utterance.audio(end), self._hotwords)
            return
        background.submit(self, self._take_partial_job)

    def _take_partial_job(self) -> PartialJob | None:
        """On a background worker as it starts: the open utterance up to its newest window (None
        once it has ended). ``accept`` may be appending to it meanwhile; an utterance's windows are
        only ever appended, and its ``end`` counts a window after it was appended, so the audio up
        to the ``end`` read here is whole."""
        with self._partial_lock:
            generation, utterance = self._generation, self._utterance
        if utterance is None:
            return None
        utterance.last_partial_at = end = utterance.end
        audio = utterance.audio(end)
        return PartialJob(audio, self._hotwords, lambda text: self._publish_partial(generation, end, text))

    def _publish_partial(self, generation: int, end: int, text: str) -> None:
        """Take a background decode of the utterance up to ``end`` if that utterance is still open
        and nothing newer was taken."""
        with self._partial_lock:
            if generation != self._generation or end <= self._partial_end:
                return
            self._partial, self._partial_end = text, end
            lag_s = max(self._position - end, 0) / WHISPER_RATE_HZ
        if self._engine.on_partial_lag is not None:
            self._engine.on_partial_lag(lag_s)


def stream_words(words: tuple[TimedWord, ...], start_ms: int, end_ms: int) -> tuple[Word, ...]:
    """Words in stream milliseconds, clamped into [start_ms, end_ms] and made monotonic."""
    result = []
    previous_end = start_ms
    for timed in words:
        word_start = min(max(start_ms + round(timed.start_s * 1000), previous_end), end_ms)
        word_end = min(max(start_ms + round(timed.end_s * 1000), word_start), end_ms)
        result.append(Word(timed.word, word_start, word_end, timed.probability))
        previous_end = word_end
    return tuple(result)
