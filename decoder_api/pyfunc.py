"""The decoder as an MLflow ``pyfunc`` model: ``python -m decoder_api export mlflow DIR`` writes it.

The model directory is self-contained: the configured model's weights are copied into it (an
artifact, ``artifacts/model``), ``decoder_api`` and ``contract`` are shipped as ``code/``, and the
engine, model name and engine settings are its ``model_config``. ``mlflow.pyfunc.load_model(DIR)``
then needs neither this repository nor the model packages, and ``mlflow models serve -m DIR``
serves it.

Input: a DataFrame with one column ``audio`` of whole audio files (WAV/FLAC/MP3/OGG…), one per row,
as bytes; the signature types the column ``binary``, so ``/invocations`` takes base64 strings in
JSON (``{"dataframe_split": {"columns": ["audio"], "data": [["UklGR…"]]}}``) and MLflow decodes
them. Output: one row per file, ``text`` and ``utterances`` (a JSON array of the utterances, as
``/v1/transcribe`` returns them). Inference parameters: ``words`` (word timings) and, for whisper,
``beam_size``. Each file is decoded exactly as ``python -m decoder_api transcribe`` decodes it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from decoder_api.audio import decode_bytes
from decoder_api.config import ConfigError, Settings
from decoder_api.engines import Engine, RecognizerOptions, native_rate_hz
from decoder_api.engines.base import ModelInfo
from decoder_api.engines.models import resolve_model
from decoder_api.engines.settings import VoskSettings, WhisperSettings
from decoder_api.errors import DecoderError
from decoder_api.sessions.transcripts import final_to_dict, stream_pcm

logger = logging.getLogger(__name__)

ARTIFACT = "model"
AUDIO_COLUMN = "audio"
PACKAGES = ("decoder_api", "contract")
# What the pyfunc imports at run time, by engine (pinned to the versions installed at export).
REQUIREMENTS = ("mlflow-skinny", "pandas", "numpy", "av", "soxr", "jsonschema", "rich")
ENGINE_REQUIREMENTS = {"whisper": ("faster-whisper", "ctranslate2", "onnxruntime"), "vosk": ("vosk",)}


class SpeechToText(PythonModel):
    """Whole audio files to transcripts with the engine and weights stored in the model directory."""

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config)
        self.engine = load_packaged_engine(config, Path(context.artifacts[ARTIFACT]))
        self.chunk_ms = int(config["chunk_ms"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        words = bool(params.get("words", False))
        beam_size = params.get("beam_size") if self.engine.name == "whisper" else None
        rows = [self.transcribe(audio_bytes(value), words, beam_size) for value in audio_values(model_input)]
        return pd.DataFrame(rows, columns=["text", "utterances"])

    def transcribe(self, audio: bytes, words: bool, beam_size: int | None) -> dict[str, str]:
        try:
            decoded = decode_bytes(audio, native_rate_hz(self.engine))
            options = RecognizerOptions(
                sample_rate_hz=decoded.sample_rate_hz,
                words=words,
                partials=False,
                beam_size=int(beam_size) if beam_size is not None else None,
            )
            recognizer = self.engine.create(options)
        except DecoderError as exc:
            raise MlflowException(f"{exc.code}: {exc.message}", error_code=INVALID_PARAMETER_VALUE) from None
        try:
            transcript = stream_pcm(recognizer, decoded.pcm, self.chunk_ms)
        finally:
            recognizer.close()
        utterances = [final_to_dict(f) for f in transcript.finals]
        return {"text": transcript.text, "utterances": json.dumps(utterances, ensure_ascii=False)}


def audio_values(model_input: Any) -> list[Any]:
    """The audio column of a DataFrame, or the items of a list (of bytes or base64 strings)."""
    if isinstance(model_input, pd.DataFrame):
        if AUDIO_COLUMN not in model_input.columns:
            raise MlflowException(f"the input needs an {AUDIO_COLUMN!r} column", INVALID_PARAMETER_VALUE)
        return list(model_input[AUDIO_COLUMN])
    if isinstance(model_input, list | tuple):
        return list(model_input)
    raise MlflowException(f"expected a DataFrame with an {AUDIO_COLUMN!r} column", INVALID_PARAMETER_VALUE)


def audio_bytes(value: Any) -> bytes:
    """A file's bytes; a string is taken as base64 (what JSON carries)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MlflowException("an audio value is not valid base64", INVALID_PARAMETER_VALUE) from None
    raise MlflowException(
        f"audio must be bytes or base64 text, not {type(value).__name__}", INVALID_PARAMETER_VALUE
    )


def load_packaged_engine(config: dict[str, Any], weights: Path) -> Engine:
    """The engine of ``model_config`` over the weights in the model directory."""
    info = ModelInfo(
        name=str(config["model"]),
        engine=str(config["engine"]),
        language=str(config["language"]),
        path=str(weights),
        source="mlflow",
    )
    if info.engine == "vosk":
        from decoder_api.engines.vosk import VoskEngine

        return VoskEngine(info, VoskSettings(**config["vosk"]))
    from decoder_api.engines.whisper import WhisperEngine

    return WhisperEngine(info, WhisperSettings(**config["whisper"]))


def export_model(settings: Settings, target: Path) -> ModelInfo:
    """Write the pyfunc model of the configured engine and model into ``target`` (new or empty)."""
    check_target(target)
    info = resolve_model(settings.engine, settings.model, settings.model_dir)
    whisper = dataclasses.replace(settings.whisper, background_partials=False)
    config = {
        "engine": info.engine,
        "model": info.name,
        "language": info.language,
        "source": info.source,
        "chunk_ms": settings.chunk_ms,
        "whisper": dataclasses.asdict(whisper),
        # The package carries the model's own files, not a static graph built beside them.
        "vosk": {k: v for k, v in dataclasses.asdict(settings.vosk).items() if k != "graph_dir"}
        | {"graph": "lookahead"},
    }
    params: dict[str, Any] = {"words": False}
    if info.engine == "whisper":
        params["beam_size"] = whisper.beam_size
    signature = infer_signature(
        pd.DataFrame({AUDIO_COLUMN: [b"RIFF"]}),
        pd.DataFrame({"text": ["a transcript"], "utterances": ["[]"]}),
        params=params,
    )
    if target.is_dir():
        target.rmdir()  # empty (checked): MLflow creates the directory itself
    package_root = Path(__file__).resolve().parent.parent
    with warnings.catch_warnings():  # advice on input examples: the signature is explicit
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path=str(target),
            python_model=SpeechToText(),
            artifacts={ARTIFACT: info.path},
            code_paths=[str(package_root / name) for name in PACKAGES],
            model_config=config,
            signature=signature,
            pip_requirements=requirements(info.engine),
        )
    remove_bytecode(target)
    return info


def check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"{target} is not empty; export into a new or empty directory")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent} does not exist")


def requirements(engine: str) -> list[str]:
    names = (*REQUIREMENTS, *ENGINE_REQUIREMENTS.get(engine, ()))
    return [f"{name}=={metadata.version(name)}" for name in names]


def remove_bytecode(target: Path) -> None:
    """Shipped code without the exporting interpreter's caches."""
    for cache in (target / "code").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
