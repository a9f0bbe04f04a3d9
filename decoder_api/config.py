"""Typed settings, read once at an entry point and passed down.

Values come from ``DEFAULTS``, then ``DECODER_*`` environment variables, then explicit
overrides (command-line flags or a test config). Nested groups use a prefix:
``DECODER_WHISPER_BEAM_SIZE`` sets ``Settings.whisper.beam_size``. Nothing below the
entry point reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from contract.env import InvalidSetting, parse_bool
from contract.kafka import (
    CLIENT_VARIABLES,
    PARTIALS_TOPIC,
    TRANSCRIPTS_TOPIC,
    KafkaClientSettings,
    load_kafka_client,
    transcripts_topic,
)
from decoder_api.engines.settings import OFFICIAL_LIST_URL, VoskSettings, WhisperSettings
from decoder_api.errors import DecoderError

ENV_PREFIX = "DECODER_"

T = TypeVar("T")

UNPREFIXED = {"REDIS_URL": "redis_url", "REDIS_SSL_CA_CERTS": "redis_ssl_ca_certs"}


class ConfigError(DecoderError):
    """The settings (environment) are not valid; not the WebSocket's ``invalid_config``."""

    code = "invalid_settings"


def default_instance_id() -> str:
    """Unique per process: the pod's hostname plus the worker's pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def default_model_dir() -> Path:
    return Path.home() / ".cache" / "decoder_api" / "models"


def default_outbox_dir() -> Path:
    return Path.home() / ".local" / "state" / "decoder_api" / "outbox"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the decoder needs to know; engine and model are chosen here only."""

    engine: str | None = None
    model: str | None = None
    model_dir: Path = dataclasses.field(default_factory=default_model_dir)
    model_list_url: str = OFFICIAL_LIST_URL
    chunk_ms: int = 200
    # HTTP service
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 96  # > max_sessions: each WebSocket stream holds a thread for its life
    graceful_timeout_s: int = 30
    # serve: glibc | jemalloc | auto; None: jemalloc, or glibc with a warning when it is not
    # installed (see allocator.allocator_env)
    allocator: str | None = None
    instance_id: str = dataclasses.field(default_factory=default_instance_id)
    # limits
    max_sessions: int = 64
    session_idle_s: float = 60.0
    max_session_s: float = 4 * 3600.0
    max_utterance_s: float = 30.0
    max_body_bytes: int = 10 * 2**20
    session_lock_timeout_s: float = 10.0
    reap_interval_s: float = 1.0
    request_timeout_s: float = 30.0  # a request body must arrive within this (slow clients)
    session_rate_per_min: int = 120  # sessions a client (API key or address) may open per minute
    max_sessions_per_key: int = 0  # open sessions per API key; 0 = only max_sessions applies
    behind_proxy: bool = False  # trust one X-Forwarded-For hop (the OpenShift router) for client addresses
    # warm recognizer pool (see engines/pool.py)
    pool_max_idle: int = 8
    pool_idle_ttl_s: float = 600.0
    pool_warm: int = 2
    pool_max_audio_s: float = 120.0
    # auth: keys from the variable and/or a mounted file (one key per line)
    api_keys: tuple[str, ...] = ()
    api_keys_file: Path | None = None
    # session registry (Redis); none means one instance with nothing shared
    redis_url: str | None = None
    redis_ssl_ca_certs: Path | None = None  # CA bundle verifying a rediss:// server (else the system's)
    registry_heartbeat_ttl_s: float = 6.0
    # transcript events to Kafka (see publisher.py): the brokers from the contract's KAFKA_*
    # variables (contract.kafka); none: publishing disabled
    kafka: KafkaClientSettings | None = None
    kafka_topic: str = TRANSCRIPTS_TOPIC
    kafka_partials: bool = False
    kafka_partial_topic: str = PARTIALS_TOPIC
    kafka_compression: str = "lz4"
    kafka_unready_after_s: float = 30.0
    # durable outbox of finals not yet acknowledged by Kafka (see outbox.py)
    outbox_dir: Path = dataclasses.field(default_factory=default_outbox_dir)
    outbox_name: str = dataclasses.field(default_factory=socket.gethostname)
    outbox_max_events: int = 10_000
    outbox_hard_max_events: int = 20_000
    whisper: WhisperSettings = dataclasses.field(default_factory=WhisperSettings)
    vosk: VoskSettings = dataclasses.field(default_factory=VoskSettings)


def load_settings(env: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from ``DECODER_*`` variables in ``env``, then ``overrides`` (flat, lower-case keys).

    A few settings shared with other components use their conventional unprefixed names
    (``UNPREFIXED``, and the contract's ``KAFKA_*`` variables, see ``kafka_values``); the
    ``DECODER_`` form wins when both are set.
    """
    values = {field: env[name] for name, field in UNPREFIXED.items() if name in env}
    values |= kafka_values(env)
    values |= {k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    values.update({k.lower(): v for k, v in (overrides or {}).items() if v is not None})
    settings = build(Settings, values, prefix="")
    check_redis_tls(settings)
    return settings


def kafka_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The brokers (``kafka``) and the finals topic (``kafka_topic``, when ``KAFKA_TOPIC`` is set),
    as the contract reads them: password file read and certificate files checked now. They
    have no ``DECODER_`` form (one name in every component): such a variable is an error rather
    than silently ignored."""
    misnamed = [f"{ENV_PREFIX}{name}" for name in CLIENT_VARIABLES if f"{ENV_PREFIX}{name}" in env]
    if misnamed:
        raise ConfigError(f"{misnamed[0]} is not read: set {misnamed[0].removeprefix(ENV_PREFIX)}")
    try:
        client = load_kafka_client(env)
        topic = transcripts_topic(env)
    except InvalidSetting as exc:
        raise ConfigError(exc.message) from None
    return {"kafka": client} | ({"kafka_topic": topic} if topic is not None else {})


def check_redis_tls(settings: Settings) -> None:
    """A CA file for Redis needs a ``rediss://`` URL and must exist (it is never taken from clients)."""
    ca_file = settings.redis_ssl_ca_certs
    if ca_file is None or not settings.redis_url:
        return
    if not settings.redis_url.startswith("rediss://"):
        raise ConfigError("REDIS_SSL_CA_CERTS is set, but REDIS_URL is not a rediss:// (TLS) URL")
    if not ca_file.is_file():
        raise ConfigError(f"REDIS_SSL_CA_CERTS: {ca_file} is not a file")


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
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a settings class's own range checks
        raise ConfigError(f"{ENV_PREFIX}{prefix.upper()}*: {exc}") from exc


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
        try:
            return Path(value).expanduser()
        except RuntimeError as exc:  # ~user of an unknown user
            raise ValueError(str(exc)) from None
    if typing.get_origin(hint) is tuple:
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if hint in (int, float, str):
        return hint(value)
    raise ValueError(f"unsupported setting type {hint}")


def _optional_of(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
    return None
