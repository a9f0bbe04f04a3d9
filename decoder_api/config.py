"""Typed settings, read once at an entry point and passed down.

Values come from ``DEFAULTS``, then ``DECODER_*`` environment variables, then explicit
overrides (command-line flags or a test config). Nested groups use a prefix:
``DECODER_WHISPER_BEAM_SIZE`` sets ``Settings.whisper.beam_size``. Nothing below the
entry point reads the environment.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from decoder_api.engines.models import OFFICIAL_LIST_URL
from decoder_api.engines.vosk import VoskSettings
from decoder_api.engines.whisper import WhisperSettings
from decoder_api.errors import DecoderError

ENV_PREFIX = "DECODER_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

T = TypeVar("T")


class ConfigError(DecoderError):
    code = "invalid_config"
    status = 500


def default_model_dir() -> Path:
    return Path.home() / ".cache" / "decoder_api" / "models"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the decoder needs to know; engine and model are chosen here only."""

    engine: str | None = None
    model: str | None = None
    model_dir: Path = dataclasses.field(default_factory=default_model_dir)
    model_list_url: str = OFFICIAL_LIST_URL
    chunk_ms: int = 200
    whisper: WhisperSettings = dataclasses.field(default_factory=WhisperSettings)
    vosk: VoskSettings = dataclasses.field(default_factory=VoskSettings)


def load_settings(env: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``DECODER_*`` variables in ``env``, then ``overrides`` (flat, lower-case keys)."""
    values = {k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    values.update({k.lower(): v for k, v in (overrides or {}).items() if v is not None})
    return build(Settings, values, prefix="")


def build(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    """Instantiate a (possibly nested) settings dataclass from flat ``prefix_field`` keys."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = build(hint, values, prefix=f"{key}_")  # type: ignore[arg-type]
        elif key in values:
            kwargs[f.name] = convert(values[key], hint, name=key)
    return cls(**kwargs)


def convert(value: Any, hint: Any, name: str) -> Any:
    """Convert a raw (usually string) value to the field's declared type."""
    optional = _optional_of(hint)
    if optional is not None:
        return None if value in (None, "", "none", "None") else convert(value, optional, name)
    if not isinstance(value, str):
        return value
    try:
        return _from_string(value, hint)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={value!r}: {exc}") from exc


def _from_string(value: str, hint: Any) -> Any:
    if hint is bool:
        return parse_bool(value)
    if hint is Path:
        return Path(value).expanduser()
    if typing.get_origin(hint) is tuple:
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if hint in (int, float, str):
        return hint(value)
    raise ValueError(f"unsupported setting type {hint}")


def parse_bool(value: str) -> bool:
    """Explicit boolean parsing: ``False``/``0``/``no`` are false, never truthy strings."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _optional_of(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None
