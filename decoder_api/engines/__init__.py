"""Recognizer engines behind one contract (see ``base``); ``load_engine`` picks one from settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from decoder_api.engines.base import Engine, Final, Recognizer, RecognizerOptions, Word

if TYPE_CHECKING:
    from decoder_api.config import Settings

__all__ = ["Engine", "Final", "Recognizer", "RecognizerOptions", "Word", "load_engine", "native_rate_hz"]


def native_rate_hz(engine: Engine) -> int:
    """The rate the engine's model was trained on (what resampling at the edge targets)."""
    rates = getattr(engine, "rates", None)
    return int(getattr(rates, "native_hz", 16000))


def load_engine(settings: Settings, on_partial_lag: Callable[[float], None] | None = None) -> Engine:
    """Resolve the configured model and load its engine (once per process).

    ``on_partial_lag`` observes how far (seconds of audio) each partial decoded in the background
    is behind its stream when it is published; engines that decode partials inline never call it.
    """
    from decoder_api.engines.models import resolve_model

    info = resolve_model(settings.engine, settings.model, settings.model_dir)
    if info.engine == "vosk":
        from decoder_api.engines.vosk import VoskEngine

        return VoskEngine(info, settings.vosk)
    from decoder_api.engines.whisper import WhisperEngine

    return WhisperEngine(info, settings.whisper, on_partial_lag)
