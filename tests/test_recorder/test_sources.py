"""Audio sources: fixed-size chunks at the session's rate from any file, raw PCM or a device list."""

from __future__ import annotations

import io
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recorder.errors import MicrophoneError, SourceError
from recorder.sources import (
    InputDevice,
    RawPcmSource,
    amplified,
    bounded,
    choose_device,
    open_file_source,
    paced,
    rechunk,
)
from tests.test_recorder.conftest import write_wav

RATE = 16000
CHUNK = 6400  # 200 ms


def tone(seconds: float, rate: int = RATE, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    return np.repeat(mono, channels).tobytes()


def test_a_16k_wav_is_passed_through_sample_for_sample(tmp_path: Path) -> None:
    pcm = tone(1.05)
    source = open_file_source(str(write_wav(tmp_path / "a.wav", pcm)), RATE, CHUNK, RATE)
    chunks = list(source.chunks())
    assert b"".join(chunks) == pcm
    assert [len(c) for c in chunks] == [CHUNK] * 5 + [len(pcm) - 5 * CHUNK]
    assert source.total_ms == 1050


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(float)))
    return float(np.argmax(spectrum) * RATE / samples.size)


@pytest.mark.parametrize(
    ("rate", "channels", "suffix"), [(44100, 2, ".wav"), (8000, 1, ".flac"), (48000, 2, ".ogg")]
)
def test_any_rate_channels_and_format(tmp_path: Path, rate: int, channels: int, suffix: str) -> None:
    wav = write_wav(tmp_path / "src.wav", tone(2.0, rate, channels), rate, channels)
    path = wav if suffix == ".wav" else tmp_path / f"src{suffix}"
    if path != wav:
        subprocess.run(["sox", str(wav), str(path)], check=True)
    source = open_file_source(str(path), RATE, CHUNK, RATE)
    assert source.channels == channels
    chunks = list(source.chunks())
    assert all(len(c) == CHUNK * channels for c in chunks[:-1])
    frames = np.frombuffer(b"".join(chunks), dtype="<i2").reshape(-1, channels)
    assert abs(len(frames) - 2 * RATE) < RATE * 0.01
    for channel in range(channels):
        assert abs(peak_hz(frames[RATE // 2 : RATE, channel]) - 440) < 5


def stereo_tones(seconds: float, rate: int) -> bytes:
    """440 Hz on channel 0, 1000 Hz on channel 1."""
    t = np.arange(int(seconds * rate)) / rate
    left, right = (np.sin(2 * np.pi * hz * t) * 12000 for hz in (440, 1000))
    return np.stack([left, right], axis=1).astype("<i2").tobytes()


def test_a_stereo_file_keeps_its_channels_apart_each_resampled(tmp_path: Path) -> None:
    """Interleaved whole frames at the session rate: each channel holds its own tone."""
    source = open_file_source(
        str(write_wav(tmp_path / "call.wav", stereo_tones(1.1, 8000), 8000, 2)), RATE, CHUNK, RATE
    )
    chunks = list(source.chunks())
    assert (source.channels, source.total_ms) == (2, 1100)
    assert all(len(c) % 4 == 0 for c in chunks)
    assert [len(c) for c in chunks[:-1]] == [2 * CHUNK] * (len(chunks) - 1)
    frames = np.frombuffer(b"".join(chunks), dtype="<i2").reshape(-1, 2)
    assert abs(len(frames) - 1.1 * RATE) < RATE * 0.01
    assert abs(peak_hz(frames[RATE // 4 : RATE * 3 // 4, 0]) - 440) < 5
    assert abs(peak_hz(frames[RATE // 4 : RATE * 3 // 4, 1]) - 1000) < 5


def test_more_than_two_channels_are_refused_unless_mixed_down(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "three.wav", tone(1.0, RATE, 3), RATE, 3)
    with pytest.raises(SourceError, match=r"3 channels; .* give --mono to mix it down"):
        open_file_source(str(wav), RATE, CHUNK, RATE)
    mixed = open_file_source(str(wav), RATE, CHUNK, RATE, mixdown=True)
    assert mixed.channels == 1
    assert abs(peak_hz(np.frombuffer(b"".join(mixed.chunks()), dtype="<i2")[: RATE // 2]) - 440) < 5
    stereo = write_wav(tmp_path / "call.wav", stereo_tones(1.0, RATE), RATE, 2)
    assert open_file_source(str(stereo), RATE, CHUNK, RATE, mixdown=True).channels == 1


def test_raw_pcm_at_another_rate_is_resampled() -> None:
    pcm = tone(1.0, 8000)
    chunks = list(RawPcmSource(io.BytesIO(pcm + b"\1"), "stdin", RATE, CHUNK, 8000).chunks())
    assert sum(len(c) for c in chunks) == pytest.approx(2 * RATE, abs=64)
    assert all(len(c) == CHUNK for c in chunks[:-1])


def test_raw_pcm_at_the_session_rate_is_untouched() -> None:
    pcm = tone(0.5)
    assert b"".join(RawPcmSource(io.BytesIO(pcm), "stdin", RATE, CHUNK, RATE).chunks()) == pcm


def test_empty_and_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no audio"):
        list(RawPcmSource(io.BytesIO(b""), "stdin", RATE, CHUNK, RATE).chunks())
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(SourceError, match="not a readable audio file"):
        open_file_source(str(tmp_path / "text.wav"), RATE, CHUNK, RATE)
    with pytest.raises(SourceError, match="no such file"):
        open_file_source(str(tmp_path / "missing.ogg"), RATE, CHUNK, RATE)
    empty = open_file_source(str(write_wav(tmp_path / "empty.wav", b"")), RATE, CHUNK, RATE)
    with pytest.raises(SourceError, match="no audio samples"):
        list(empty.chunks())


def test_rechunk() -> None:
    assert list(rechunk([b"abc", b"defgh", b"", b"i"], 4)) == [b"abcd", b"efgh", b"i"]


def test_gain_scales_and_clips() -> None:
    pcm = np.array([1000, -1000, 20000], dtype="<i2").tobytes()
    assert list(amplified([pcm], 1.0)) == [pcm]
    louder = np.frombuffer(next(amplified([pcm], 2.0)), dtype="<i2")
    assert louder.tolist() == [2000, -2000, 32767]


def test_bounded_stops_at_the_duration_or_the_stop_event() -> None:
    stop = threading.Event()
    chunks = list(bounded([b"\0" * CHUNK] * 10, RATE, stop, max_ms=500))
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, CHUNK // 2]
    stereo = list(bounded([b"\0" * 2 * CHUNK] * 10, RATE, stop, max_ms=500, frame_bytes=4))
    assert [len(c) for c in stereo] == [2 * CHUNK, 2 * CHUNK, CHUNK]

    def stopping() -> object:
        yield b"a"
        stop.set()
        yield b"b"

    assert list(bounded(stopping(), RATE, stop)) == [b"a"]  # type: ignore[arg-type]


def test_paced_releases_in_real_time() -> None:
    started = time.monotonic()
    list(paced([b"\0" * 1600] * 5, RATE, threading.Event()))  # 5 × 50 ms
    assert 0.24 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    list(paced([b"\0" * 3200] * 5, RATE, threading.Event(), frame_bytes=4))  # 5 × 50 ms of stereo
    assert 0.24 <= time.monotonic() - started < 1.5


DEVICES = [
    InputDevice(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", 2, 44100, False),
    InputDevice(3, "USB Headset: Audio (hw:1,0)", 1, 48000, False),
    InputDevice(7, "default", 32, 44100, True),
]


@pytest.mark.parametrize(
    ("wanted", "index"), [(None, 7), ("3", 3), ("usb", 3), ("default", 7), ("ALC3246", 0)]
)
def test_device_choice(wanted: str | None, index: int) -> None:
    assert choose_device(DEVICES, wanted, 7).index == index


@pytest.mark.parametrize(
    ("devices", "wanted", "message"),
    [
        ([], None, "no microphone found"),
        (DEVICES, "9", "no input device matches '9'"),
        (DEVICES, "bluetooth", "no input device matches"),
        (DEVICES, "hw:", "matches several input devices"),
    ],
)
def test_device_choice_errors(devices: list[InputDevice], wanted: str | None, message: str) -> None:
    with pytest.raises(MicrophoneError, match=message):
        choose_device(devices, wanted, 7)
