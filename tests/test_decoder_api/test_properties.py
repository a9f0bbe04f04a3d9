"""Properties of the pure parts at the service's edge, checked in-process on generated input.

Whatever bytes, headers, rates or environment strings arrive, the audio edge and the settings
loader either give their result or raise their documented ``DecoderError`` subclass, never
another exception (the transcript events' properties are the contract's,
tests/test_contract/test_properties.py). ``FUZZ_EXAMPLES`` sets the number of examples per property.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoder_api.audio import (
    DecodedAudio,
    chunk_bytes,
    decode_bytes,
    decode_file,
    float_to_pcm,
    iter_chunks,
    resample,
)
from decoder_api.config import ConfigError, Settings, load_settings
from decoder_api.engines.base import InvalidAudio, pcm_to_float
from decoder_api.errors import DecoderError, EmptyAudio, UnsupportedAudio
from tests.test_contract.test_properties import FUZZ_EXAMPLES, fuzz, outcome

TARGET_RATES_HZ = (8000, 16000, 22050, 44100, 48000)
COMMON_RATES_HZ = (4000, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000)
FORMAT_PCM, FORMAT_FLOAT, FORMAT_ALAW, FORMAT_MULAW = 1, 3, 6, 7

# A numeric warning (e.g. NaN cast to an integer) is a wrong result, not just noise.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def wav_header(
    format_tag: int, channels: int, rate_hz: int, bits: int, data_bytes: int, riff_bytes: int | None = None
) -> bytes:
    """A canonical 44-byte RIFF/WAVE header; sizes and fields are written as given (not checked)."""
    block_align = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH",
        format_tag & 0xFFFF,
        channels & 0xFFFF,
        rate_hz & 0xFFFFFFFF,
        (rate_hz * block_align) & 0xFFFFFFFF,
        block_align & 0xFFFF,
        bits & 0xFFFF,
    )
    riff = 36 + data_bytes if riff_bytes is None else riff_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes & 0xFFFFFFFF)
    )


def check_decoded(audio: DecodedAudio, target_hz: int) -> None:
    assert audio.sample_rate_hz == target_hz
    assert len(audio.pcm) % 2 == 0
    assert audio.duration_ms == len(audio.pcm) // 2 * 1000 // target_hz


def decode_or_refuse(data: bytes, target_hz: int) -> DecodedAudio | DecoderError:
    """The decoded audio, or the typed error of the audio edge."""
    audio = outcome(lambda: decode_bytes(data, target_hz), UnsupportedAudio, EmptyAudio, InvalidAudio)
    if isinstance(audio, DecoderError):
        assert audio.status in (400, 415)
        assert audio.message
    else:
        check_decoded(audio, target_hz)
    return audio


# --- decoding any bytes --------------------------------------------------------------------------------


@fuzz
@given(data=st.binary(max_size=4096), target_hz=st.sampled_from(TARGET_RATES_HZ))
def test_any_bytes_decode_or_raise_a_typed_error(data: bytes, target_hz: int) -> None:
    decode_or_refuse(data, target_hz)


@fuzz
@given(
    magic=st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3\x04", b"\xff\xfb", b"FORM", b"\x1aE\xdf\xa3"]),
    rest=st.binary(max_size=2048),
)
def test_bytes_behind_a_container_signature_decode_or_raise_a_typed_error(magic: bytes, rest: bytes) -> None:
    decode_or_refuse(magic + rest, 16000)


@fuzz
@given(
    format_tag=st.one_of(
        st.sampled_from([FORMAT_PCM, FORMAT_FLOAT, FORMAT_ALAW, FORMAT_MULAW]), st.integers(0, 0xFFFF)
    ),
    channels=st.integers(0, 70),
    rate_hz=st.one_of(st.sampled_from(COMMON_RATES_HZ), st.integers(0, 2**32 - 1)),
    bits=st.one_of(st.sampled_from([8, 16, 24, 32, 64]), st.integers(0, 0xFFFF)),
    payload=st.binary(max_size=4096),
    declared=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    riff_declared=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    target_hz=st.sampled_from(TARGET_RATES_HZ),
)
def test_wav_headers_with_any_fields_decode_or_raise_a_typed_error(
    format_tag: int,
    channels: int,
    rate_hz: int,
    bits: int,
    payload: bytes,
    declared: int | None,
    riff_declared: int | None,
    target_hz: int,
) -> None:
    """Header fields out of range, lying sizes and short payloads are refused, not crashed on."""
    data_bytes = len(payload) if declared is None else declared
    header = wav_header(format_tag, channels, rate_hz, bits, data_bytes, riff_declared)
    decode_or_refuse(header + payload, target_hz)


@fuzz
@given(
    channels=st.integers(1, 8),
    rate_hz=st.sampled_from(COMMON_RATES_HZ),
    frames=st.integers(1, 2000),
    seed=st.integers(0, 2**32 - 1),
    target_hz=st.sampled_from(TARGET_RATES_HZ),
)
def test_valid_pcm_wav_decodes_to_mono_at_the_target_rate(
    channels: int, rate_hz: int, frames: int, seed: int, target_hz: int
) -> None:
    payload = np.random.default_rng(seed).integers(-32768, 32767, frames * channels, dtype="<i2").tobytes()
    audio = decode_bytes(wav_header(FORMAT_PCM, channels, rate_hz, 16, len(payload)) + payload, target_hz)
    check_decoded(audio, target_hz)
    assert (audio.source_rate_hz, audio.source_channels) == (rate_hz, channels)
    expected = frames * target_hz / rate_hz
    assert abs(len(audio.pcm) // 2 - expected) <= 2
    assert audio.pcm or expected < 2  # a few samples may resample to none at a lower rate


@fuzz
@given(
    format_tag=st.sampled_from([FORMAT_PCM, FORMAT_FLOAT, FORMAT_ALAW, FORMAT_MULAW]),
    channels=st.integers(1, 4),
    rate_hz=st.sampled_from(COMMON_RATES_HZ),
    payload=st.binary(min_size=1, max_size=4096),
)
def test_valid_headers_with_arbitrary_payloads_decode_or_raise_a_typed_error(
    format_tag: int, channels: int, rate_hz: int, payload: bytes
) -> None:
    """Any sample bytes (NaN floats, partial frames) under a well-formed header."""
    bits = {FORMAT_PCM: 16, FORMAT_FLOAT: 32}.get(format_tag, 8)
    result = decode_or_refuse(wav_header(format_tag, channels, rate_hz, bits, len(payload)) + payload, 16000)
    if isinstance(result, DecodedAudio):
        assert result.source_channels == channels


@settings(fuzz, max_examples=max(5, FUZZ_EXAMPLES // 4))
@given(data=st.binary(max_size=1024))
def test_decode_file_reads_any_file_or_raises_a_typed_error(
    data: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("audio") / "input.wav"
    path.write_bytes(data)
    audio = outcome(lambda: decode_file(path, 16000), UnsupportedAudio, EmptyAudio)
    if isinstance(audio, DecodedAudio):
        check_decoded(audio, 16000)


def test_decode_file_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedAudio):
        decode_file(tmp_path / "missing.wav", 16000)


# --- resampling and sample conversion -------------------------------------------------------------------

unit_floats = st.floats(-1.0, 1.0, width=32, allow_nan=False)


@fuzz
@given(
    samples=st.lists(unit_floats, max_size=3000),
    from_hz=st.sampled_from(COMMON_RATES_HZ),
    to_hz=st.sampled_from(COMMON_RATES_HZ),
)
def test_resample_scales_the_length_and_stays_finite(samples: list[float], from_hz: int, to_hz: int) -> None:
    source = np.asarray(samples, dtype=np.float32)
    out = resample(source, from_hz, to_hz)
    assert out.dtype == np.float32
    assert out.ndim == 1
    assert abs(out.size - source.size * to_hz / from_hz) <= 1
    assert np.isfinite(out).all()
    if from_hz == to_hz:
        assert np.array_equal(out, source)


@fuzz
@given(pcm=st.binary(max_size=4096))
def test_pcm_round_trips_through_floats_exactly(pcm: bytes) -> None:
    if len(pcm) % 2:
        with pytest.raises(InvalidAudio):
            pcm_to_float(pcm)
        return
    floats = pcm_to_float(pcm)
    assert floats.dtype == np.float32
    assert floats.size == len(pcm) // 2
    assert ((floats >= -1.0) & (floats < 1.0)).all()
    assert float_to_pcm(floats) == pcm


@fuzz
@given(samples=st.lists(st.floats(width=32), max_size=3000))
def test_float_to_pcm_clips_and_quantises(samples: list[float]) -> None:
    """Out-of-range samples clip and NaN is silence (a float WAV may hold any 32-bit pattern)."""
    source = np.asarray(samples, dtype=np.float32)
    pcm = float_to_pcm(source)
    assert len(pcm) == 2 * source.size
    back = pcm_to_float(pcm)
    expected = np.clip(np.where(np.isnan(source), 0.0, source), -1.0, 32767 / 32768)
    assert np.all(np.abs(back - expected) <= 1 / 32768 + 1e-7)


# --- chunking -------------------------------------------------------------------------------------------


@fuzz
@given(rate_hz=st.integers(1, 192000), chunk_ms=st.integers(0, 10_000))
def test_chunk_bytes_is_whole_samples_and_at_least_one(rate_hz: int, chunk_ms: int) -> None:
    size = chunk_bytes(rate_hz, chunk_ms)
    assert size >= 2
    assert size % 2 == 0
    assert size == max(2, rate_hz * chunk_ms // 1000 * 2)


@fuzz
@given(pcm=st.binary(max_size=5000), size=st.integers(1, 700))
def test_iter_chunks_covers_every_byte_exactly_once(pcm: bytes, size: int) -> None:
    chunks = list(iter_chunks(pcm, size))
    assert b"".join(chunks) == pcm
    assert len(chunks) == math.ceil(len(pcm) / size)
    assert all(len(c) == size for c in chunks[:-1])
    assert all(0 < len(c) <= size for c in chunks)


@fuzz
@given(samples=st.integers(0, 20_000), rate_hz=st.sampled_from(COMMON_RATES_HZ), chunk_ms=st.integers(1, 500))
def test_chunks_of_pcm_are_whole_samples(samples: int, rate_hz: int, chunk_ms: int) -> None:
    pcm = bytes(2 * samples)
    for chunk in iter_chunks(pcm, chunk_bytes(rate_hz, chunk_ms)):
        assert len(chunk) % 2 == 0


# --- settings from the environment ----------------------------------------------------------------------

env_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
settable_text = env_text
SETTING_NAMES = (
    "ENGINE",
    "PORT",
    "THREADS",
    "MAX_SESSIONS",
    "SESSION_IDLE_S",
    "MAX_BODY_BYTES",
    "API_KEYS",
    "API_KEYS_FILE",
    "KAFKA_PARTIALS",
    "REDIS_URL",
    "WHISPER_LANGUAGE",
    "VOSK_LOG_LEVEL",
    "MODEL_DIR",
    "UNKNOWN_SETTING",
)
# The contract's Kafka variables the decoder reads (contract.kafka).
KAFKA_NAMES = ("KAFKA_TOPIC", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM")


@fuzz
@given(
    env=st.dictionaries(
        st.one_of(st.sampled_from(SETTING_NAMES).map("DECODER_".__add__), st.sampled_from(KAFKA_NAMES)),
        settable_text,
        max_size=6,
    )
)
def test_load_settings_gives_settings_or_config_error(env: dict[str, str]) -> None:
    loaded = outcome(lambda: load_settings(env), ConfigError)
    if isinstance(loaded, DecoderError):
        assert loaded.message.startswith(("DECODER_", *KAFKA_NAMES))
    else:
        assert isinstance(loaded, Settings)


def test_a_path_under_an_unknown_users_home_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings({"DECODER_MODEL_DIR": "~no-such-user-here/models"})


def test_an_engine_setting_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings({"DECODER_WHISPER_BEAM_SIZE": "0"})


@fuzz
@given(value=st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False))
def test_numeric_settings_read_their_number(value: float) -> None:
    loaded = load_settings({"DECODER_PORT": str(int(value)), "DECODER_SESSION_IDLE_S": repr(float(value))})
    assert loaded.port == int(value)
    assert loaded.session_idle_s == float(value)
