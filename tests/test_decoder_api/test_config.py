"""The decoder's settings: engine-free to load, Kafka's read once by the contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from decoder_api.config import ConfigError, load_settings
from devtools.processes import ROOT

# Top-level modules of the engines and their runtimes: imported only once an engine is chosen.
ENGINE_PACKAGES = ("vosk", "faster_whisper", "ctranslate2", "onnxruntime", "tokenizers", "huggingface_hub")
ENGINE_MODULES = ("decoder_api.engines.vosk", "decoder_api.engines.whisper")


def test_loading_the_settings_imports_no_engine() -> None:
    code = (
        "import json, sys\n"
        "from decoder_api.config import load_settings\n"
        "load_settings({'DECODER_ENGINE': 'whisper', 'DECODER_WHISPER_BEAM_SIZE': '3'})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stdout)
    engines = [m for m in loaded if m.partition(".")[0] in ENGINE_PACKAGES or m in ENGINE_MODULES]
    assert engines == []


def test_a_kafka_password_file_is_read_when_the_settings_load(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "KAFKA_SASL_PASSWORD_FILE": str(secret)}
    settings = load_settings(env)
    assert settings.kafka is not None and settings.kafka.sasl_password == "s3cret"
    with pytest.raises(ConfigError, match=r"^KAFKA_SASL_PASSWORD_FILE '.*missing': No such file"):
        load_settings(env | {"KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")})


def test_kafka_topic_is_the_contracts_and_the_prefixed_form_wins() -> None:
    assert load_settings({}).kafka_topic == "transcripts.v1"
    assert load_settings({"KAFKA_TOPIC": "calls.v1"}).kafka_topic == "calls.v1"
    assert load_settings({"KAFKA_TOPIC": "calls.v1", "DECODER_KAFKA_TOPIC": "x"}).kafka_topic == "x"
    with pytest.raises(ConfigError, match=r"^KAFKA_TOPIC 'bad topic'"):
        load_settings({"KAFKA_TOPIC": "bad topic"})


def test_the_kafka_client_variables_have_no_decoder_form() -> None:
    """One name in every component: a ``DECODER_`` form is refused, never silently ignored."""
    with pytest.raises(
        ConfigError, match=r"^DECODER_KAFKA_BOOTSTRAP_SERVERS is not read: set KAFKA_BOOTSTRAP_SERVERS"
    ):
        load_settings({"DECODER_KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
