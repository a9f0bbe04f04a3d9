"""The audio edge: decode any common file format, mix down, resample, cut into chunks.

Everything past this module sees only signed 16-bit little-endian PCM at a known rate: mono, or
interleaved stereo when a caller asks to keep two channels (one speaker each).
Decoding uses PyAV (FFmpeg); resampling uses soxr.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt
import soxr

from decoder_api.engines.base import BYTES_PER_SAMPLE
from decoder_api.errors import DecoderError, EmptyAudio, UnsupportedAudio

MAX_DECODED_SECONDS = 4 * 3600
MIN_SOURCE_RATE_HZ = 4000  # lower is not speech audio (and would resample into huge arrays)


class InvalidChannels(DecoderError):
    """A channel count other than 1 or 2, or a file with fewer channels than the call declares."""

    code = "invalid_channels"


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """s16le PCM at ``sample_rate_hz`` (mono, or ``channels`` interleaved), and what the source was."""

    pcm: bytes
    sample_rate_hz: int
    source_rate_hz: int
    source_channels: int
    codec: str
    channels: int = 1

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) // (BYTES_PER_SAMPLE * self.channels) * 1000 // self.sample_rate_hz


def decode_file(path: Path, sample_rate_hz: int) -> DecodedAudio:
    """Decode an audio file of any common format, rate and channel count."""
    if not path.is_file():
        raise UnsupportedAudio(f"{path}: no such file")
    with path.open("rb") as stream:
        return decode_stream(stream, sample_rate_hz, name=str(path))


def decode_bytes(data: bytes, sample_rate_hz: int, channels: int = 1) -> DecodedAudio:
    """Decode a whole audio file held in memory (e.g. an HTTP request body); ``channels=2`` keeps
    a stereo file's two channels (interleaved) instead of mixing them down."""
    if not data:
        raise EmptyAudio("the audio is empty")
    return decode_stream(io.BytesIO(data), sample_rate_hz, name="request body", channels=channels)


def decode_stream(stream: BinaryIO, sample_rate_hz: int, name: str, channels: int = 1) -> DecodedAudio:
    try:
        with av.open(stream, mode="r") as container:
            return _decode_container(container, sample_rate_hz, name, channels)
    except (av.FFmpegError, ValueError, IndexError, EOFError) as exc:
        raise UnsupportedAudio(f"{name}: not a readable audio file ({_reason(exc)})") from exc


def _decode_container(
    container: av.container.InputContainer, rate_hz: int, name: str, channels: int = 1
) -> DecodedAudio:
    if not container.streams.audio:
        raise UnsupportedAudio(f"{name}: contains no audio stream")
    stream = container.streams.audio[0]
    if (stream.codec_context is not None) and (stream.codec_context.sample_rate or 0) < MIN_SOURCE_RATE_HZ:
        raise UnsupportedAudio(f"{name}: sample rate below {MIN_SOURCE_RATE_HZ} Hz")
    if stream.codec_context is None:  # FFmpeg has no decoder for the codec (e.g. an unknown WAV format tag)
        raise UnsupportedAudio(f"{name}: no decoder for its audio codec")
    source_channels = stream.codec_context.channels
    if channels > 1 and source_channels < channels:
        raise InvalidChannels(
            f"{name}: has {source_channels} channel; channels={channels} needs one channel per speaker"
        )
    samples, source_rate = _decode_float(container, stream, channels)
    if samples.size == 0:
        raise EmptyAudio(f"{name}: contains no audio samples")
    return DecodedAudio(
        pcm=float_to_pcm(resample(samples, source_rate, rate_hz)),
        sample_rate_hz=rate_hz,
        source_rate_hz=source_rate,
        source_channels=source_channels,
        codec=stream.codec_context.name,
        channels=channels,
    )


def _decode_float(
    container: av.container.InputContainer, stream: av.AudioStream, channels: int = 1
) -> tuple[npt.NDArray[np.float32], int]:
    """All samples of the stream as float32 at the source rate, mono or (``channels=2``) as frames
    of two (FFmpeg does only the mixdown)."""
    source_rate = stream.codec_context.sample_rate or stream.rate
    layout = "stereo" if channels == 2 else "mono"
    mixdown = av.AudioResampler(format="flt", layout=layout, rate=source_rate)
    parts: list[npt.NDArray[np.float32]] = []
    limit = MAX_DECODED_SECONDS * source_rate * channels
    for frame in container.decode(stream):
        parts.extend(_samples(f) for f in mixdown.resample(frame))
        if sum(p.size for p in parts) > limit:
            raise UnsupportedAudio(f"audio longer than {MAX_DECODED_SECONDS // 3600} hours")
    parts.extend(_samples(f) for f in mixdown.resample(None))
    empty = np.zeros(0, dtype=np.float32)
    samples = np.concatenate(parts).astype(np.float32) if parts else empty
    return (samples.reshape(-1, channels) if channels > 1 else samples), int(source_rate)


def _samples(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def resample(samples: npt.NDArray[np.float32], from_hz: int, to_hz: int) -> npt.NDArray[np.float32]:
    if from_hz == to_hz:
        return samples
    return np.asarray(soxr.resample(samples, from_hz, to_hz, quality="HQ"), dtype=np.float32)


def float_to_pcm(samples: npt.NDArray[np.float32]) -> bytes:
    """Samples in [-1, 1) to s16le; beyond that they clip, and NaN (e.g. from a float WAV) is silence."""
    clipped = np.clip(np.nan_to_num(samples, nan=0.0), -1.0, 32767 / 32768)
    return (clipped * 32768).astype("<i2").tobytes()


def chunk_bytes(sample_rate_hz: int, chunk_ms: int) -> int:
    """Bytes in one chunk of ``chunk_ms`` (at least one sample)."""
    return max(1, sample_rate_hz * chunk_ms // 1000) * BYTES_PER_SAMPLE


def iter_chunks(pcm: bytes, size_bytes: int) -> Iterator[bytes]:
    """Fixed-size chunks; the last one may be shorter."""
    for offset in range(0, len(pcm), size_bytes):
        yield pcm[offset : offset + size_bytes]


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, av.FFmpegError) and exc.strerror else str(exc)
    text = text.strip() or type(exc).__name__
    return text.splitlines()[0][:200]
