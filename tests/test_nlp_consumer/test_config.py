"""Settings from the environment, and one-line errors at the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.processes import ROOT
from nlp_consumer.config import load_consumer_settings, load_dashboard_settings
from nlp_consumer.errors import ConfigError

BROKER = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def test_defaults() -> None:
    settings = load_consumer_settings(BROKER)
    assert (settings.group_id, settings.input_topic, settings.output_topic, settings.dlq_topic) == (
        "nlp-consumer",
        "transcripts.v1",
        "transcripts.enriched.v1",
        "transcripts.dlq.v1",
    )
    assert settings.model.model is None and settings.model.neutral_band == 0.3
    assert settings.summary_topic == "calls.summary.v1" and settings.summary_sentences == 3
    assert settings.model.onnx and settings.model.onnx_threads == 1 and settings.model.onnx_int8
    dashboard = load_dashboard_settings(BROKER)
    assert dashboard.port == 8000 and dashboard.topic == "transcripts.enriched.v1"
    assert dashboard.summary_topic == "calls.summary.v1"
    assert (
        dashboard.group_id.startswith("dashboard-")
        and dashboard.group_id != load_dashboard_settings(BROKER).group_id
    )


def test_password_file_and_security_settings_reach_the_client(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    env = BROKER | {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "nlp",
        "KAFKA_SASL_PASSWORD_FILE": str(secret),
    }
    config = load_consumer_settings(env).kafka.client_config("x")
    assert config["sasl.password"] == "s3cret" and config["security.protocol"] == "SASL_SSL"
    assert "s3cret" not in repr(load_consumer_settings(env))


def test_the_model_can_run_in_torch_with_more_onnx_threads_or_not() -> None:
    model = load_consumer_settings(BROKER | {"NLP_ONNX": "false", "NLP_ONNX_THREADS": "2"}).model
    assert not model.onnx and model.onnx_threads == 2
    assert not load_consumer_settings(BROKER | {"NLP_ONNX_INT8": "false"}).model.onnx_int8


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "KAFKA_BOOTSTRAP_SERVERS is not set"),
        (BROKER | {"NLP_BATCH_SIZE": "many"}, "NLP_BATCH_SIZE: expected int"),
        (BROKER | {"SENTIMENT_NEUTRAL_BAND": "2"}, "SENTIMENT_NEUTRAL_BAND: 2 is outside"),
        (BROKER | {"NLP_OUTPUT_TOPIC": "transcripts.v1"}, "must differ"),
        (BROKER | {"NLP_ONNX": "maybe"}, "NLP_ONNX"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_consumer_settings(env)


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        ([], {"KAFKA_BOOTSTRAP_SERVERS": ""}, 2, "error: KAFKA_BOOTSTRAP_SERVERS is not set"),
        ([], BROKER | {"NLP_BATCH_MS": "-1"}, 2, "error: NLP_BATCH_MS: -1 is outside"),
        (["--dashboard"], BROKER | {"DASHBOARD_PORT": "http"}, 2, "error: DASHBOARD_PORT: expected int"),
    ],
)
def test_command_line_errors_are_one_line(
    args: list[str], env: dict[str, str], status: int, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nlp_consumer", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == status
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    env = BROKER | {"NLP_CACHE_DIR": str(tmp_path), "NLP_METRICS_PORT": "0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "nlp_consumer"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    hint = "run `python -m nlp_consumer.train` (or set SENTIMENT_MODEL)"
    assert result.stderr.strip().splitlines() == [f"error: no trained sentiment model in {tmp_path}: {hint}"]
