"""The recognizer contract every engine implements.

Audio enters as raw signed 16-bit little-endian mono PCM at the rate the recognizer was
created for. Results leave as plain dataclasses: engine-specific formats (Vosk's JSON
strings, faster-whisper segments) are parsed inside the engine module and never leak out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contract.events import Word  # one word type from the engine to the event
from decoder_api.errors import DecoderError

BYTES_PER_SAMPLE = 2


@dataclass(frozen=True, slots=True)
class Final:
    """A finished utterance. ``words`` is None unless word output was requested; ``channel`` and
    ``speaker`` are set only in a multi-channel (stereo) session, which decodes each channel on a
    recognizer of its own."""

    utterance: int
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] | None = None
    channel: int | None = None
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class RecognizerOptions:
    """Per-stream options a client may choose (never a model, path or broker).

    ``partials=False`` lets an engine skip work done only for interim results (offline
    transcription); finals are the same either way. ``beam_size`` (None: the engine's setting) is
    the beam of a final's decode, for engines that have one (whisper).
    """

    sample_rate_hz: int = 16000
    words: bool = False
    phrases: tuple[str, ...] | None = None
    max_alternatives: int = 0
    partials: bool = True
    beam_size: int | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model the service can load: which engine runs it, where it lives, what it speaks."""

    name: str
    engine: str
    language: str
    path: str
    source: str
    size_bytes: int = 0
    aliases: tuple[str, ...] = field(default_factory=tuple)


class Recognizer(Protocol):
    """One audio stream's decoder state. Not thread-safe: one caller at a time."""

    @property
    def sample_rate_hz(self) -> int: ...

    def accept(self, pcm: bytes) -> list[Final]:
        """Feed PCM; return the utterances this chunk completed (usually none)."""
        ...

    def partial(self) -> str:
        """The current hypothesis of the open utterance ("" when there is none)."""
        ...

    def horizon_ms(self) -> int:
        """Stream time before which no final still to come can start: the open utterance's start,
        else (nothing open) about where decoding stands. A stereo session releases one channel's
        finals once the other channel's horizon has passed their start, so they come in order."""
        ...

    def flush(self) -> list[Final]:
        """End of stream: finalise the open utterance, if it has any words."""
        ...

    def reset(self) -> None:
        """Discard the open utterance without a final; the stream clock keeps running."""
        ...

    def restart(self) -> None:
        """Return to the state of a newly created recognizer (clock and utterance index at zero).

        Lets a pool reuse a warm recognizer: what it decodes next must be exactly what a
        fresh recognizer would decode.
        """
        ...

    def resume(self, position_samples: int, next_utterance: int) -> None:
        """Continue a stream whose audio before ``position_samples`` was decoded elsewhere
        (e.g. by an instance that died): drop any open utterance, set the stream clock and
        the next utterance index. Audio replayed from the last final then decodes as it did
        on the original recognizer (exactly so for Vosk)."""
        ...

    def replay(self, pcm: bytes) -> list[Final]:
        """Decode tail audio again after ``resume``: as ``accept``, but never refused for
        capacity, because the audio was admitted when it was first sent."""
        ...

    def close(self) -> None:
        """Release engine resources; the recognizer is unusable afterwards."""
        ...


class Engine(Protocol):
    """A loaded model shared by every stream in the process."""

    name: str
    model: ModelInfo
    graph: str  # the decoding graph searched (Vosk: static, lookahead or model); "" when none applies

    def create(self, options: RecognizerOptions) -> Recognizer:
        """A new recognizer; raises UnsupportedSampleRate or InvalidOptions."""
        ...

    def close(self) -> None: ...


class UnsupportedSampleRate(DecoderError):
    code = "unsupported_sample_rate"


class InvalidAudio(DecoderError):
    code = "invalid_audio"


class InvalidOptions(DecoderError):
    code = "invalid_options"


def samples_to_ms(samples: int, sample_rate_hz: int) -> int:
    """Convert a sample count to whole milliseconds."""
    return samples * 1000 // sample_rate_hz


def check_pcm(pcm: bytes) -> None:
    """Reject PCM that is not whole 16-bit samples."""
    if len(pcm) % BYTES_PER_SAMPLE:
        raise InvalidAudio(f"PCM must be whole 16-bit samples; got an odd byte count ({len(pcm)})")


def pcm_to_float(pcm: bytes) -> npt.NDArray[np.float32]:
    """s16le PCM to float samples in [-1, 1)."""
    check_pcm(pcm)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
