"""Typed recorder settings, built once at the entry point from flags and the environment.

Command-line flags win over environment variables (``HOST``, ``DO_SIMULATE``,
``DECODER_API_KEY``, and the contract's Kafka variables: ``KAFKA_BOOTSTRAP_SERVERS`` or its alias
``KAFKA_BROKERS``, ``KAFKA_TOPIC``, ``KAFKA_SECURITY_PROTOCOL``... see ``contract.kafka``), which
win over the defaults. Nothing below the entry point reads the environment. Every parser here
raises ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contract.kafka import TRANSCRIPTS_TOPIC, KafkaClientSettings
from recorder.errors import ConfigError

DEFAULT_HOST = "localhost:8080"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MAX_SPEAKER_CHARS = 32  # the decoder's limit on a channel's speaker name
SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}

Mode = Literal["microphone", "file", "simulate"]
Protocol = Literal["http", "ws"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where the decoder is and how to talk to it."""

    url: str = f"http://{DEFAULT_HOST}"
    api_key: str | None = None
    protocol: Protocol = "http"
    retry_s: float = 30.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What each call streams: chunk size, rate and the session options.

    ``speakers`` names the two channels of a stereo file's call (None: the decoder's defaults,
    agent and customer); ``mixdown``: stream every file as mono, whatever its channels.
    """

    chunk_ms: int = 200
    sample_rate_hz: int = 16000
    words: bool = False
    user_id: str = "recorder"
    speakers: tuple[str, str] | None = None
    mixdown: bool = False

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one channel's chunk (a stereo chunk is twice as many)."""
        return max(1, self.sample_rate_hz * self.chunk_ms // 1000) * 2


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the recorder also publishes its finals: the brokers (``-b`` or the contract's
    ``KAFKA_*`` variables; TLS and SASL never from flags, a password on a command line is visible
    to every user of the machine) and the topic; ``delivery_timeout_s`` bounds the final flush."""

    client: KafkaClientSettings
    topic: str = TRANSCRIPTS_TOPIC
    delivery_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class MicrophoneSettings:
    device: str | None = None
    aggressiveness: int = 1


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    callers: int = 1
    pause_s: tuple[float, float] = (5.0, 10.0)
    calls: int | None = None
    stats_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    """Everything one run needs; see ``recorder.cli`` for the matching flags."""

    mode: Mode = "microphone"
    server: ServerSettings = field(default_factory=ServerSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    file: str | None = None
    realtime: bool = False
    input_rate_hz: int = 16000
    volume: float = 1.0
    duration_s: float | None = None
    json_output: bool = False
    verbose: bool = False
    microphone: MicrophoneSettings = field(default_factory=MicrophoneSettings)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    kafka: KafkaSettings | None = None


def parse_server_url(value: str, name: str = "--host") -> str:
    """``HOST``, ``HOST:PORT`` (port 8080 by default) or a URL (http, https, ws, wss) → base URL."""
    text = value.strip()
    has_scheme = "://" in text
    parts = urllib.parse.urlsplit(text if has_scheme else f"http://{text}")
    scheme = SCHEMES.get(parts.scheme.lower())
    if not text or scheme is None or not parts.hostname or " " in text:
        raise ConfigError(f"{name} {value!r}: expected HOST[:PORT] or a URL such as http://host:8080")
    if parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{name} {value!r}: a server URL has no user, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{name} {value!r}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ConfigError(f"{name} {value!r}: the port must be a number from 1 to 65535")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None and not has_scheme:
        port = DEFAULT_PORT
    netloc = host if port is None else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def parse_int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} {value!r}: expected a whole number from {low} to {high}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} {value!r}: expected a whole number from {low} to {high}")
    return number


def parse_float(value: str, name: str, low: float, high: float, low_open: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    bounds = f"{'above' if low_open else 'from'} {low:g} {'and at most' if low_open else 'to'} {high:g}"
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name} {value!r}: expected a number {bounds}") from None
    too_low = number <= low if low_open else number < low
    if not math.isfinite(number) or too_low or number > high:
        raise ConfigError(f"{name} {value!r}: expected a number {bounds}")
    return number


def parse_pause(value: str, name: str = "--pause-s") -> tuple[float, float]:
    """``MIN,MAX`` seconds (or one number for a fixed pause)."""
    parts = [p for p in value.split(",")]
    if len(parts) not in (1, 2):
        raise ConfigError(f"{name} {value!r}: expected MIN,MAX seconds, e.g. 5,10")
    low, high = (parse_float(p, name, 0, 3600) for p in (parts * 2)[:2])
    if low > high:
        raise ConfigError(f"{name} {value!r}: MIN must not be above MAX")
    return low, high


def parse_user_id(value: str, name: str = "--user-id") -> str:
    text = value.strip()
    if not text or len(text) > 100 or not text.isprintable():
        raise ConfigError(f"{name} {value!r}: expected 1 to 100 printable characters")
    return text


def parse_speakers(value: str, name: str = "--speakers") -> tuple[str, str]:
    """``AGENT,CUSTOMER``: the names of a stereo call's channels 0 and 1, as the decoder takes them
    (two distinct, non-empty, printable names of at most 32 characters)."""
    names = [n.strip() for n in value.split(",")]
    if len(names) != 2:
        raise ConfigError(
            f"{name} {value!r}: expected two names, channel 0's then channel 1's, e.g. agent,customer"
        )
    for speaker in names:
        if not speaker or len(speaker) > MAX_SPEAKER_CHARS or not speaker.isprintable():
            raise ConfigError(
                f"{name} {value!r}: each name must be 1 to {MAX_SPEAKER_CHARS} printable characters"
            )
    if names[0] == names[1]:
        raise ConfigError(f"{name} {value!r}: the two speakers need different names")
    return names[0], names[1]
