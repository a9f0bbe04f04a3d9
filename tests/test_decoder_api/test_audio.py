"""The audio edge: any common format, rate and channel count in; 16 kHz mono s16le out."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from decoder_api.audio import chunk_bytes, decode_bytes, decode_file, iter_chunks
from decoder_api.engines.base import InvalidAudio, pcm_to_float
from decoder_api.errors import EmptyAudio, UnsupportedAudio

SOURCE = "librivox-0880.wav"


def encode(pcm: bytes, rate_hz: int, path: Path, codec: str, out_rate_hz: int, channels: int) -> Path:
    """Write ``pcm`` (16 kHz mono) with a real encoder at another rate and channel count."""
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), mode="w") as container:
        stream: Any = container.add_stream(
            codec, rate=out_rate_hz, layout=layout, options={"strict": "experimental"}
        )
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate_hz
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=out_rate_hz)
        fifo = av.AudioFifo()
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            fifo.write(converted)
        size = stream.codec_context.frame_size or 1024
        while fifo.samples:
            container.mux(stream.encode(fifo.read(min(size, fifo.samples))))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def speech(data_dir: Path) -> bytes:
    return decode_file(data_dir / SOURCE, 16000).pcm


def correlation(a: bytes, b: bytes) -> float:
    x, y = pcm_to_float(a), pcm_to_float(b)
    n = min(x.size, y.size)
    return float(np.corrcoef(x[:n], y[:n])[0, 1])


@pytest.mark.parametrize(
    ("name", "codec", "rate_hz", "channels"),
    [
        ("stereo44k.wav", "pcm_s16le", 44100, 2),
        ("mono8k.wav", "pcm_s16le", 8000, 1),
        ("flac48k.flac", "flac", 48000, 2),
        ("mp3.mp3", "libmp3lame", 44100, 2),
        ("vorbis.ogg", "vorbis", 22050, 2),
        ("opus.ogg", "libopus", 48000, 1),
    ],
)
def test_any_format_rate_and_channels(
    speech: bytes, tmp_path: Path, name: str, codec: str, rate_hz: int, channels: int
) -> None:
    path = encode(speech, 16000, tmp_path / name, codec, rate_hz, channels)
    decoded = decode_file(path, 16000)
    assert decoded.sample_rate_hz == 16000
    assert decoded.source_rate_hz == rate_hz
    assert decoded.source_channels == channels
    assert abs(decoded.duration_ms - len(speech) // 32) < 150
    if codec in ("pcm_s16le", "flac") and rate_hz != 8000:
        assert correlation(decoded.pcm, speech) > 0.95


def test_bytes_in_memory_decode_like_files(speech: bytes, tmp_path: Path) -> None:
    path = encode(speech, 16000, tmp_path / "a.flac", "flac", 16000, 1)
    assert decode_bytes(path.read_bytes(), 16000).pcm == decode_file(path, 16000).pcm


def test_resampling_to_other_rates(speech: bytes, tmp_path: Path) -> None:
    path = encode(speech, 16000, tmp_path / "a.wav", "pcm_s16le", 16000, 1)
    assert abs(decode_file(path, 8000).duration_ms - len(speech) // 32) < 5


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyAudio),
        (b"this is not audio at all" * 20, UnsupportedAudio),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", UnsupportedAudio),
        (bytes(range(256)) * 8, UnsupportedAudio),
    ],
)
def test_bad_bytes_give_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_bytes(data, 16000)


def test_truncated_and_missing_files(speech: bytes, tmp_path: Path) -> None:
    path = encode(speech, 16000, tmp_path / "a.flac", "flac", 16000, 1)
    truncated = tmp_path / "t.flac"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises((UnsupportedAudio, EmptyAudio)):
        decode_file(truncated, 16000)
    with pytest.raises(UnsupportedAudio, match="no such file"):
        decode_file(tmp_path / "missing.wav", 16000)


def test_header_only_wav_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
    with pytest.raises((EmptyAudio, UnsupportedAudio)):
        decode_file(path, 16000)


def test_chunking_covers_every_byte_once() -> None:
    pcm = bytes(range(256)) * 100
    size = chunk_bytes(16000, 200)
    chunks = list(iter_chunks(pcm, size))
    assert size == 6400
    assert b"".join(chunks) == pcm
    assert all(len(c) == size for c in chunks[:-1])
    assert chunk_bytes(8000, 0) == 2


def test_pcm_must_be_whole_samples() -> None:
    with pytest.raises(InvalidAudio):
        pcm_to_float(b"\0\0\0")


def test_absurdly_low_sample_rates_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "one-hz.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(1)
        out.writeframes(b"\1\0" * 1000)
    with pytest.raises(UnsupportedAudio, match="sample rate below"):
        decode_file(path, 16000)
