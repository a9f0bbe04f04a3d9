"""Typed recorder settings, built once at the entry point from flags and the environment.

Command-line flags win over environment variables (``HOST``, ``DO_SIMULATE``, ``KAFKA_BROKERS``,
``KAFKA_TOPIC``, ``DECODER_API_KEY``), which win over the defaults. Nothing below the entry
point reads the environment. Every parser here raises ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from recorder.errors import ConfigError

DEFAULT_HOST = "localhost:8080"
DEFAULT_PORT = 8080
DEFAULT_TOPIC = "transcripts.v1"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
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
    """What each call streams: chunk size, rate and the session options."""

    chunk_ms: int = 200
    sample_rate_hz: int = 16000
    words: bool = False
    user_id: str = "recorder"

    @property
    def chunk_bytes(self) -> int:
        return max(1, self.sample_rate_hz * self.chunk_ms // 1000) * 2


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """TLS and SASL for the recorder's producer, from the standard ``KAFKA_*`` client variables
    the decoder and the NLP consumer read too; never from flags (a password on a command line is
    visible to every user of the machine)."""

    protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None

    def client_config(self) -> dict[str, str]:
        """The librdkafka properties that are set."""
        properties = {
            "security.protocol": self.protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        return {name: value for name, value in properties.items() if value is not None}


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the recorder also publishes its finals; ``delivery_timeout_s`` bounds the final flush."""

    brokers: str
    topic: str
    delivery_timeout_s: float = 30.0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


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


def parse_bool(value: str, name: str) -> bool:
    """``True``/``1``/``yes``/``on`` and ``False``/``0``/``no``/``off``/empty, any case; else an error."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={value!r}: expected true/false, yes/no, on/off or 1/0")


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


def parse_brokers(value: str, name: str) -> str:
    """A comma-separated ``host:port`` list, as librdkafka takes it."""
    brokers = [b.strip() for b in value.split(",") if b.strip()]
    for broker in brokers:
        host, sep, port = broker.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name} {value!r}: expected HOST:PORT[,HOST:PORT...]")
    if not brokers:
        raise ConfigError(f"{name} is empty: expected HOST:PORT[,HOST:PORT...]")
    return ",".join(brokers)


def parse_kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    """``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_{MECHANISM,USERNAME,PASSWORD,PASSWORD_FILE}`` and
    ``KAFKA_SSL_{CA,CERTIFICATE,KEY}_LOCATION``; every file is checked to be readable here, so a
    wrong path is one line at start-up rather than a connection that never comes up."""

    def value(name: str) -> str | None:
        return env.get(name, "").strip() or None

    protocol = _one_of(value("KAFKA_SECURITY_PROTOCOL"), "KAFKA_SECURITY_PROTOCOL", KAFKA_SECURITY_PROTOCOLS)
    mechanism = _one_of(value("KAFKA_SASL_MECHANISM"), "KAFKA_SASL_MECHANISM", KAFKA_SASL_MECHANISMS)
    password = env.get("KAFKA_SASL_PASSWORD") or None
    password_file = value("KAFKA_SASL_PASSWORD_FILE")
    if password_file is not None:
        password = _read_secret(password_file, "KAFKA_SASL_PASSWORD_FILE")
    files = {
        name: _readable(path, name)
        for name in ("KAFKA_SSL_CA_LOCATION", "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION")
        if (path := value(name)) is not None
    }
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=value("KAFKA_SASL_USERNAME"),
        sasl_password=password,
        ssl_ca_location=files.get("KAFKA_SSL_CA_LOCATION"),
        ssl_certificate_location=files.get("KAFKA_SSL_CERTIFICATE_LOCATION"),
        ssl_key_location=files.get("KAFKA_SSL_KEY_LOCATION"),
    )


def _one_of(raw: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    """``raw`` upper-cased when it is one of ``allowed`` (None stays None), else a ``ConfigError``."""
    if raw is None:
        return None
    if raw.upper() not in allowed:
        raise ConfigError(f"{name} {raw.upper()!r}: expected one of {', '.join(allowed)}")
    return raw.upper()


def _read_secret(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name} {path!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _readable(path: str, name: str) -> str:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name} {path!r}: {exc.strerror}") from None
    return path


def parse_user_id(value: str, name: str = "--user-id") -> str:
    text = value.strip()
    if not text or len(text) > 100 or not text.isprintable():
        raise ConfigError(f"{name} {value!r}: expected 1 to 100 printable characters")
    return text
