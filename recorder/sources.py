"""Audio sources: microphone, audio files, raw PCM on stdin, all as fixed-size s16le chunks.

Every source yields chunks of ``chunk_ms`` of audio (the last chunk of a file or of stdin may be
shorter) of signed 16-bit little-endian PCM at the rate the session streams (16 kHz by default):
mono, or interleaved stereo (whole 4-byte frames, channel 0 first) for a stereo file, whose two
channels are two speakers of a call. Files of any common format and rate are decoded with PyAV
and resampled with soxr (each channel on its own), as they are read; a file with more than two
channels is refused unless it is mixed down (``mixdown``), as any file then is. The microphone,
raw files and stdin are mono. The recorder does not depend on the decoder package.

The helpers at the end shape a chunk stream: ``amplified`` (input gain), ``bounded`` (stop
event and maximum duration) and ``paced`` (no faster than real time); they take the stream's
``frame_bytes`` (2 for mono, 4 for stereo).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import av
import numpy as np
import numpy.typing as npt
import pyaudio
import soxr

from recorder.errors import MicrophoneError, SourceError

logger = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2
MAX_CHANNELS = 2  # one speaker per channel: a call's agent and customer
RAW_SUFFIXES = frozenset({".raw", ".pcm"})
STDIN_NAME = "-"
# PortAudio error numbers (portaudio.h) that deserve their own words.
PA_DEVICE_UNAVAILABLE = -9985
PA_INVALID_DEVICE = -9996
PA_INVALID_RATE = -9997
PA_INVALID_CHANNELS = -9998


class AudioSource(Protocol):
    """Where a call's audio comes from; ``total_ms`` is None when the length is unknown;
    ``channels``: 1, or 2 for interleaved stereo."""

    name: str
    total_ms: int | None
    channels: int

    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


def open_file_source(
    name: str, rate_hz: int, chunk_bytes: int, input_rate_hz: int, mixdown: bool = False
) -> AudioSource:
    """``-`` is raw PCM on stdin; ``.raw``/``.pcm`` files are raw PCM at ``input_rate_hz``;
    ``chunk_bytes`` is one channel's chunk."""
    if name == STDIN_NAME:
        return RawPcmSource(sys.stdin.buffer, "stdin", rate_hz, chunk_bytes, input_rate_hz)
    path = Path(name).expanduser()
    if not path.is_file():
        raise SourceError(f"{name}: no such file")
    if path.suffix.lower() in RAW_SUFFIXES:
        if path.stat().st_size < BYTES_PER_SAMPLE:
            raise SourceError(f"{name}: no audio (expected raw s16le mono PCM)")
        stream = path.open("rb")
        total_ms = path.stat().st_size // BYTES_PER_SAMPLE * 1000 // input_rate_hz
        return RawPcmSource(stream, name, rate_hz, chunk_bytes, input_rate_hz, total_ms)
    return FileSource(path, rate_hz, chunk_bytes, mixdown)


class FileSource:
    """An audio file of any format PyAV (FFmpeg) reads, resampled as it is read: mono stays mono,
    stereo stays interleaved stereo (each channel resampled on its own), and ``mixdown`` mixes any
    file down to mono. More than two channels without ``mixdown`` is a ``SourceError``."""

    def __init__(self, path: Path, rate_hz: int, chunk_bytes: int, mixdown: bool = False) -> None:
        self.name = str(path)
        self._rate_hz = rate_hz
        try:
            self._container = av.open(str(path), mode="r")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"{path}: not a readable audio file ({reason(exc)})") from exc
        if not self._container.streams.audio:
            self._container.close()
            raise SourceError(f"{path}: contains no audio stream")
        self._stream = self._container.streams.audio[0]
        found = int(self._stream.codec_context.channels or 1)
        if found > MAX_CHANNELS and not mixdown:
            self._container.close()
            raise SourceError(
                f"{path}: {found} channels; the recorder streams mono or stereo (one speaker per "
                "channel) files: give --mono to mix it down"
            )
        self.channels = 1 if mixdown else found
        self._chunk_bytes = chunk_bytes * self.channels
        self.total_ms = self._duration_ms()

    def chunks(self) -> Iterator[bytes]:
        produced = 0
        try:
            for chunk in rechunk(self._pcm_blocks(), self._chunk_bytes):
                produced += len(chunk)
                yield chunk
        except (av.FFmpegError, ValueError) as exc:
            raise SourceError(f"{self.name}: decoding failed ({reason(exc)})") from exc
        if not produced:
            raise SourceError(f"{self.name}: contains no audio samples")

    def close(self) -> None:
        self._container.close()

    def _pcm_blocks(self) -> Iterator[bytes]:
        """Interleaved float samples from PyAV (mixed down when mono), resampled per channel by soxr."""
        channels = self.channels
        source_rate = int(self._stream.codec_context.sample_rate or self._stream.rate)
        layout = "mono" if channels == 1 else "stereo"
        converter = av.AudioResampler(format="flt", layout=layout, rate=source_rate)
        resampler = None
        if source_rate != self._rate_hz:
            resampler = soxr.ResampleStream(
                source_rate, self._rate_hz, channels, dtype="float32", quality="HQ"
            )
        for frame in self._container.decode(self._stream):
            for converted in converter.resample(frame):
                yield convert_block(frame_samples(converted), resampler, channels)
        for converted in converter.resample(None):
            yield convert_block(frame_samples(converted), resampler, channels)
        if resampler is not None:
            empty = np.zeros((0, channels) if channels > 1 else 0, dtype=np.float32)
            yield float_to_pcm(resampler.resample_chunk(empty, last=True))

    def _duration_ms(self) -> int | None:
        stream = self._stream
        if stream.duration is not None and stream.time_base is not None:
            return int(stream.duration * stream.time_base * 1000)
        if self._container.duration is not None:
            return int(self._container.duration // 1000)
        return None


class RawPcmSource:
    """Raw s16le mono PCM from a byte stream (stdin or a ``.raw`` file) at ``input_rate_hz``."""

    def __init__(
        self,
        stream: BinaryIO,
        name: str,
        rate_hz: int,
        chunk_bytes: int,
        input_rate_hz: int,
        total_ms: int | None = None,
    ) -> None:
        self.name = name
        self.channels = 1
        self.total_ms = total_ms * rate_hz // input_rate_hz if total_ms is not None else None
        self._stream = stream
        self._rate_hz = rate_hz
        self._input_rate_hz = input_rate_hz
        self._chunk_bytes = chunk_bytes

    def chunks(self) -> Iterator[bytes]:
        produced = 0
        for chunk in rechunk(self._pcm_blocks(), self._chunk_bytes):
            produced += len(chunk)
            yield chunk
        if not produced:
            raise SourceError(f"{self.name}: no audio (expected raw s16le mono PCM)")

    def close(self) -> None:
        if self._stream is not sys.stdin.buffer:
            self._stream.close()

    def _pcm_blocks(self) -> Iterator[bytes]:
        resampler = None
        if self._input_rate_hz != self._rate_hz:
            resampler = soxr.ResampleStream(self._input_rate_hz, self._rate_hz, 1, dtype="int16")
        read_bytes = max(self._chunk_bytes * self._input_rate_hz // self._rate_hz // 2 * 2, 2)
        carry = b""
        while block := self._read(read_bytes):
            block, carry = carry + block, b""
            if len(block) % 2:
                block, carry = block[:-1], block[-1:]
            yield block if resampler is None else resample_pcm(resampler, block, last=False)
        if resampler is not None:
            yield resample_pcm(resampler, b"", last=True)

    def _read(self, size: int) -> bytes:
        try:
            return self._stream.read(size) or b""
        except OSError as exc:
            raise SourceError(f"{self.name}: read failed ({exc.strerror or exc})") from exc


@dataclass(frozen=True, slots=True)
class InputDevice:
    """A capture device as PortAudio lists it."""

    index: int
    name: str
    channels: int
    default_rate_hz: int
    is_default: bool


def list_input_devices() -> list[InputDevice]:
    """Every device that can record; PortAudio's and ALSA's own console chatter is kept off stderr."""
    with portaudio() as pa:
        return input_devices(pa)


class MicrophoneSource:
    """Live capture through PortAudio; ``device`` is an index or part of a name (None: the default)."""

    def __init__(self, device: str | None, rate_hz: int, chunk_bytes: int) -> None:
        self.name = "microphone"
        self.channels = 1
        self.total_ms: int | None = None
        self._rate_hz = rate_hz
        self._chunk_bytes = chunk_bytes
        with native_stderr_captured():
            self._pa = pyaudio.PyAudio()
        try:
            chosen = choose_device(input_devices(self._pa), device, self._default_index())
            self.name = f"microphone {chosen.name!r}"
            self._capture_rate_hz = self._supported_rate(chosen)
            frames = chunk_bytes // BYTES_PER_SAMPLE * self._capture_rate_hz // rate_hz
            self._frames = max(frames, 1)
            with native_stderr_captured():
                self._stream = self._pa.open(
                    format=pyaudio.paInt16,
                    channels=1,
                    rate=self._capture_rate_hz,
                    input=True,
                    input_device_index=chosen.index,
                    frames_per_buffer=self._frames,
                )
        except OSError as exc:
            self._terminate()
            raise MicrophoneError(f"{self.name}: {portaudio_reason(exc)}") from None
        except BaseException:
            self._terminate()
            raise
        logger.info("microphone_opened device=%r rate=%d", chosen.name, self._capture_rate_hz)

    def chunks(self) -> Iterator[bytes]:
        return rechunk(self._captured_blocks(), self._chunk_bytes)

    def close(self) -> None:
        with native_stderr_captured(), contextlib.suppress(OSError):
            self._stream.stop_stream()
            self._stream.close()
        self._terminate()

    def _captured_blocks(self) -> Iterator[bytes]:
        resampler = None
        if self._capture_rate_hz != self._rate_hz:
            resampler = soxr.ResampleStream(self._capture_rate_hz, self._rate_hz, 1, dtype="int16")
        while True:
            try:
                block = self._stream.read(self._frames, exception_on_overflow=False)
            except OSError as exc:
                raise MicrophoneError(f"{self.name}: recording failed ({portaudio_reason(exc)})") from None
            yield block if resampler is None else resample_pcm(resampler, block, last=False)

    def _supported_rate(self, device: InputDevice) -> int:
        """The session's rate when the device takes it, else its own default rate (resampled here)."""
        for rate in (self._rate_hz, device.default_rate_hz):
            with native_stderr_captured(), contextlib.suppress(ValueError):
                self._pa.is_format_supported(
                    rate, input_device=device.index, input_channels=1, input_format=pyaudio.paInt16
                )
                return rate
        raise MicrophoneError(f"{self.name}: cannot record 16-bit mono audio at {self._rate_hz} Hz")

    def _default_index(self) -> int | None:
        try:
            return int(self._pa.get_default_input_device_info()["index"])
        except OSError:
            return None

    def _terminate(self) -> None:
        with native_stderr_captured():
            self._pa.terminate()


def input_devices(pa: Any) -> list[InputDevice]:
    try:
        default = int(pa.get_default_input_device_info()["index"])
    except OSError:
        default = None
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        channels = int(info.get("maxInputChannels", 0))
        if channels > 0:
            rate = int(info.get("defaultSampleRate", 0))
            devices.append(InputDevice(index, str(info.get("name", "")), channels, rate, index == default))
    return devices


def choose_device(devices: list[InputDevice], wanted: str | None, default: int | None) -> InputDevice:
    """The device by index, by exact name, or by a unique part of its name (any case)."""
    if not devices:
        raise MicrophoneError("no microphone found: PortAudio sees no input device (see --list-devices)")
    if wanted is None:
        chosen = [d for d in devices if d.index == default] or devices[:1]
        return chosen[0]
    text = wanted.strip()
    if text.isdigit():
        matches = [d for d in devices if d.index == int(text)]
    else:
        matches = [d for d in devices if d.name.lower() == text.lower()]
        matches = matches or [d for d in devices if text.lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MicrophoneError(f"no input device matches {wanted!r} (see --list-devices)")
    names = ", ".join(f"{d.index}: {d.name}" for d in matches)
    raise MicrophoneError(f"{wanted!r} matches several input devices ({names}); give its index")


@contextlib.contextmanager
def portaudio() -> Iterator[Any]:
    with native_stderr_captured():
        pa = pyaudio.PyAudio()
    try:
        yield pa
    finally:
        with native_stderr_captured():
            pa.terminate()


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send what C libraries (PortAudio, ALSA, JACK) print on fd 2 to the debug log instead."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            chatter = sink.read().decode("utf-8", "replace").strip()
            if chatter:
                logger.debug("audio library messages:\n%s", chatter)


def portaudio_reason(exc: OSError) -> str:
    number = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if number == PA_DEVICE_UNAVAILABLE:
        return "the device is busy or unavailable"
    if number == PA_INVALID_DEVICE:
        return "not a usable input device"
    if number == PA_INVALID_RATE:
        return "the device does not support this sample rate"
    if number == PA_INVALID_CHANNELS:
        return "the device cannot record mono audio"
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    return str(text).strip() or "PortAudio error"


def rechunk(blocks: Iterable[bytes], size_bytes: int) -> Iterator[bytes]:
    """Blocks of any size → chunks of exactly ``size_bytes``; the remainder comes last."""
    pending = bytearray()
    for block in blocks:
        pending += block
        whole = len(pending) - len(pending) % size_bytes
        for offset in range(0, whole, size_bytes):
            yield bytes(pending[offset : offset + size_bytes])
        del pending[:whole]
    if pending:
        yield bytes(pending)


def frame_samples(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def convert_block(
    samples: npt.NDArray[np.float32], resampler: soxr.ResampleStream | None, channels: int = 1
) -> bytes:
    """Interleaved float samples → s16le, resampled first when ``resampler`` is given."""
    if resampler is not None:
        frames = samples.reshape(-1, channels) if channels > 1 else samples
        samples = resampler.resample_chunk(frames, last=False)
    return float_to_pcm(samples)


def resample_pcm(resampler: soxr.ResampleStream, pcm: bytes, last: bool) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2")
    return np.asarray(resampler.resample_chunk(samples, last=last), dtype="<i2").tobytes()


def float_to_pcm(samples: npt.NDArray[np.float32]) -> bytes:
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    return (clipped * 32768).astype("<i2").tobytes()


def amplified(chunks: Iterable[bytes], gain: float) -> Iterator[bytes]:
    """Input gain (1.0: unchanged); samples clip at full scale."""
    if gain == 1.0:
        yield from chunks
        return
    for chunk in chunks:
        samples = np.frombuffer(chunk, dtype="<i2").astype(np.float32) * gain
        yield np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def bounded(
    chunks: Iterable[bytes],
    rate_hz: int,
    stop: threading.Event,
    max_ms: int | None = None,
    frame_bytes: int = BYTES_PER_SAMPLE,
) -> Iterator[bytes]:
    """Chunks until ``stop`` is set or ``max_ms`` of audio went by (the last chunk is cut to fit,
    at a whole frame)."""
    budget = None if max_ms is None else rate_hz * max_ms // 1000 * frame_bytes
    for chunk in chunks:
        if stop.is_set() or budget == 0:
            return
        if budget is not None:
            chunk = chunk[:budget]
            budget -= len(chunk)
        yield chunk


def paced(
    chunks: Iterable[bytes], rate_hz: int, stop: threading.Event, frame_bytes: int = BYTES_PER_SAMPLE
) -> Iterator[bytes]:
    """Real-time pacing: each chunk is released once its own duration has gone by, as a mic would."""
    start = time.monotonic()
    released_s = 0.0
    for chunk in chunks:
        released_s += len(chunk) / frame_bytes / rate_hz
        delay = start + released_s - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        yield chunk


def reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, av.FFmpegError | OSError) and exc.strerror else str(exc)
    text = str(text).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
