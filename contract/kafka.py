"""Kafka client settings: one set of variables for every component, read once, validated once.

* ``KAFKA_BOOTSTRAP_SERVERS``: ``HOST:PORT[,HOST:PORT...]``; ``KAFKA_BROKERS`` means the same
  (the recorder's original name); when both are set, ``KAFKA_BOOTSTRAP_SERVERS`` wins.
* ``KAFKA_SECURITY_PROTOCOL``: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
* ``KAFKA_SASL_MECHANISM`` (``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``),
  ``KAFKA_SASL_USERNAME``, and ``KAFKA_SASL_PASSWORD`` or ``KAFKA_SASL_PASSWORD_FILE`` (a file
  holding it, e.g. a mounted Secret; it wins over the variable).
* ``KAFKA_SSL_CA_LOCATION`` (CA bundle verifying the brokers, else the system's),
  ``KAFKA_SSL_CERTIFICATE_LOCATION`` and ``KAFKA_SSL_KEY_LOCATION`` (a client certificate).
* ``KAFKA_TOPIC``: where ``transcript.v1`` events are produced (read by their producers, the
  decoder and the recorder; ``TRANSCRIPTS_TOPIC`` when unset).

``load_kafka_client(env)`` reads them at an entry point. The password file is read and every
other file checked to be readable then, so a wrong path is one line at start-up rather than a
connection that never comes up. The settings object never reads the environment;
``client_config`` gives the librdkafka properties. Component-specific choices (their topics,
group ids, timeouts, producer tuning) stay in the components.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contract.env import InvalidSetting, env_text

BOOTSTRAP_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BROKERS")
TOPIC_VARIABLE = "KAFKA_TOPIC"
TRANSCRIPTS_TOPIC = "transcripts.v1"  # finals (transcript.v1 events)
PARTIALS_TOPIC = "transcripts.partial.v1"  # partials (transcript.partial.v1), never mixed in
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
CLIENT_FILES = ("KAFKA_SSL_CA_LOCATION", "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION")
CLIENT_VARIABLES = (
    *BOOTSTRAP_VARIABLES,
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
    *CLIENT_FILES,
)
MAX_TOPIC_LENGTH = 249
TOPIC_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True, slots=True)
class Setting:
    """A raw value and where it came from (a variable, or a flag that overrides one)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class KafkaClientSettings:
    """Where the brokers are and how to connect to them: the same for every client of a process."""

    bootstrap_servers: str
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None

    def client_config(self, client_id: str | None = None) -> dict[str, str]:
        """librdkafka's connection and security properties (those that are set)."""
        properties = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": client_id,
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        return {name: value for name, value in properties.items() if value is not None}


def load_kafka_client(env: Mapping[str, str], servers: Setting | None = None) -> KafkaClientSettings | None:
    """The client settings from ``env``, or None when no bootstrap servers are given.

    ``servers`` (e.g. a command-line flag) wins over the bootstrap variables. Raises
    ``InvalidSetting`` naming the first bad variable.
    """
    chosen = servers or bootstrap_setting(env)
    if chosen is None:
        return None
    files = {name: _readable(name, path) for name in CLIENT_FILES if (path := env_text(env, name))}
    return KafkaClientSettings(
        bootstrap_servers=parse_bootstrap_servers(chosen),
        security_protocol=_one_of(env, "KAFKA_SECURITY_PROTOCOL", SECURITY_PROTOCOLS),
        sasl_mechanism=_one_of(env, "KAFKA_SASL_MECHANISM", SASL_MECHANISMS),
        sasl_username=env_text(env, "KAFKA_SASL_USERNAME"),
        sasl_password=_password(env),
        ssl_ca_location=files.get("KAFKA_SSL_CA_LOCATION"),
        ssl_certificate_location=files.get("KAFKA_SSL_CERTIFICATE_LOCATION"),
        ssl_key_location=files.get("KAFKA_SSL_KEY_LOCATION"),
    )


def bootstrap_setting(env: Mapping[str, str]) -> Setting | None:
    """The first bootstrap variable that is set (not blank)."""
    for name in BOOTSTRAP_VARIABLES:
        if value := env_text(env, name):
            return Setting(name, value)
    return None


def parse_bootstrap_servers(setting: Setting) -> str:
    """A comma-separated ``host:port`` list, as librdkafka takes it (blanks removed)."""
    servers = [server.strip() for server in setting.value.split(",") if server.strip()]
    if not servers:
        raise InvalidSetting(f"{setting.name} is empty: expected HOST:PORT[,HOST:PORT...]")
    for server in servers:
        host, colon, port = server.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidSetting(f"{setting.name} {setting.value!r}: expected HOST:PORT[,HOST:PORT...]")
    return ",".join(servers)


def transcripts_topic(env: Mapping[str, str]) -> str | None:
    """``KAFKA_TOPIC`` when set: where ``transcript.v1`` events are produced."""
    value = env_text(env, TOPIC_VARIABLE)
    return None if value is None else parse_topic(Setting(TOPIC_VARIABLE, value))


def parse_topic(setting: Setting) -> str:
    """A legal Kafka topic name: up to 249 letters, digits, ``.``, ``_`` or ``-`` (not ``.``/``..``)."""
    topic = setting.value.strip()
    legal = 0 < len(topic) <= MAX_TOPIC_LENGTH and set(topic) <= TOPIC_CHARACTERS
    if not legal or topic in (".", ".."):
        raise InvalidSetting(
            f"{setting.name} {topic!r}: use up to {MAX_TOPIC_LENGTH} letters, digits, '.', '_' or '-'"
        )
    return topic


def _one_of(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """The variable upper-cased when it is one of ``allowed`` (unset stays None)."""
    value = env_text(env, name)
    if value is None:
        return None
    if value.upper() not in allowed:
        raise InvalidSetting(f"{name} {value.upper()!r}: expected one of {', '.join(allowed)}")
    return value.upper()


def _password(env: Mapping[str, str]) -> str | None:
    """``KAFKA_SASL_PASSWORD_FILE``'s content (stripped) when set, else ``KAFKA_SASL_PASSWORD``."""
    path = env_text(env, "KAFKA_SASL_PASSWORD_FILE")
    if path is None:
        return env.get("KAFKA_SASL_PASSWORD") or None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InvalidSetting(f"KAFKA_SASL_PASSWORD_FILE {path!r}: {reason}") from None


def _readable(name: str, path: str) -> str:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InvalidSetting(f"{name} {path!r}: {exc.strerror or exc}") from None
    return path
