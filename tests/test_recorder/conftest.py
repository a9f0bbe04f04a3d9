"""Recorder test helpers: the CLI as a subprocess, WAV files, reference transcripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from decoder_api.engines import Engine, RecognizerOptions
from decoder_api.sessions.transcripts import stream_pcm
from tests.conftest import RATE_HZ, SpokenCall
from tests.reference import ReferenceEngine

ROOT = Path(__file__).resolve().parents[2]
RECORDER_ENV = (
    "HOST",
    "DO_SIMULATE",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "DECODER_API_KEY",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    "KAFKA_SSL_KEY_LOCATION",
)
CHUNK_MS = 200


def write_wav(path: Path, pcm: bytes, rate_hz: int = RATE_HZ, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(pcm)
    return path


def recorder(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m recorder ARGS`` with a clean recorder environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in RECORDER_ENV}
    completed = subprocess.run(
        [sys.executable, "-m", "recorder", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def final_texts(events: list[dict[str, Any]], call: int | None = None) -> list[str]:
    return [e["text"] for e in events if e["type"] == "final" and call in (None, e["call"])]


def offline_finals(engine: Engine, pcm: bytes, chunk_ms: int = CHUNK_MS) -> list[str]:
    """What the decoder's own recognizer makes of ``pcm`` fed in ``chunk_ms`` chunks (through the
    ``reference_engine``: on the allocator the served decoder runs on)."""
    return [f.text for f in stream_pcm(engine.create(RecognizerOptions(RATE_HZ)), pcm, chunk_ms).finals]


@pytest.fixture(scope="session")
def korean_wav(tmp_path_factory: pytest.TempPathFactory, korean_call: SpokenCall) -> Path:
    return write_wav(tmp_path_factory.mktemp("recorder") / "korean.wav", korean_call.pcm)


@pytest.fixture(scope="session")
def korean_reference(reference_engine: ReferenceEngine, korean_call: SpokenCall) -> list[str]:
    return offline_finals(reference_engine, korean_call.pcm)
