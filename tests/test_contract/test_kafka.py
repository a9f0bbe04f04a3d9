"""The Kafka client settings every component reads: one set of variables, read and checked once."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.env import InvalidSetting, env_bool, parse_bool
from contract.kafka import (
    KafkaClientSettings,
    Setting,
    load_kafka_client,
    parse_topic,
    transcripts_topic,
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A password file and readable certificate files, as mounted Secrets are."""
    paths = {name: tmp_path / name for name in ("password", "ca.crt", "client.crt", "client.key")}
    for path in paths.values():
        path.write_text("s3cret\n" if path.name == "password" else "-----BEGIN-----\n")
    return {name: str(path) for name, path in paths.items()}


def test_no_bootstrap_servers_means_no_client() -> None:
    assert load_kafka_client({}) is None
    assert load_kafka_client({"KAFKA_BOOTSTRAP_SERVERS": "  ", "KAFKA_SECURITY_PROTOCOL": "nonsense"}) is None


def test_every_variable_reaches_the_client_config(files: dict[str, str]) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": " k0:9093 , k1:9093 ",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "decoder",
        "KAFKA_SASL_PASSWORD": "from-the-variable",
        "KAFKA_SASL_PASSWORD_FILE": files["password"],
        "KAFKA_SSL_CA_LOCATION": files["ca.crt"],
        "KAFKA_SSL_CERTIFICATE_LOCATION": files["client.crt"],
        "KAFKA_SSL_KEY_LOCATION": files["client.key"],
    }
    client = load_kafka_client(env)
    assert client is not None
    assert client.client_config("me") == {
        "bootstrap.servers": "k0:9093,k1:9093",
        "client.id": "me",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "decoder",
        "sasl.password": "s3cret",  # read from the file when the settings load; the file wins
        "ssl.ca.location": files["ca.crt"],
        "ssl.certificate.location": files["client.crt"],
        "ssl.key.location": files["client.key"],
    }
    assert "s3cret" not in repr(client)


def test_the_password_is_read_when_the_settings_load(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")
    client = load_kafka_client({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "KAFKA_SASL_PASSWORD_FILE": str(secret)})
    secret.unlink()
    assert client is not None and client.sasl_password == "first"


def test_kafka_brokers_is_an_alias_and_the_standard_name_wins() -> None:
    alias = load_kafka_client({"KAFKA_BROKERS": "a:1"})
    assert alias == KafkaClientSettings("a:1")
    both = load_kafka_client({"KAFKA_BROKERS": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2"})
    assert both == KafkaClientSettings("b:2")


def test_a_flag_wins_over_the_variables_and_is_named_in_errors() -> None:
    client = load_kafka_client({"KAFKA_BOOTSTRAP_SERVERS": "b:2"}, Setting("--broker", "c:3"))
    assert client == KafkaClientSettings("c:3")
    with pytest.raises(InvalidSetting, match=r"^--broker 'nohost'"):
        load_kafka_client({}, Setting("--broker", "nohost"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohost"}, "KAFKA_BOOTSTRAP_SERVERS 'nohost': expected HOST:PORT"),
        ({"KAFKA_BROKERS": "h:0"}, "KAFKA_BROKERS 'h:0': expected HOST:PORT"),
        ({"KAFKA_BROKERS": ",,"}, "KAFKA_BROKERS is empty"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL 'TLS': expected one of PLAINTEXT, SSL"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM 'GSSAPI': expected one of PLAIN"),
        (
            {"KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"},
            "KAFKA_SSL_CA_LOCATION '/no/such/ca.pem': No such file",
        ),
        ({"KAFKA_SSL_KEY_LOCATION": "/no/such/key"}, "KAFKA_SSL_KEY_LOCATION '/no/such/key': No such file"),
        (
            {"KAFKA_SASL_PASSWORD_FILE": "/no/such/file"},
            "KAFKA_SASL_PASSWORD_FILE '/no/such/file': No such file",
        ),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(env: dict[str, str], message: str) -> None:
    servers = {} if env.keys() & {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BROKERS"} else {"KAFKA_BROKERS": "k:9092"}
    with pytest.raises(InvalidSetting) as caught:
        load_kafka_client(servers | env)
    assert caught.value.message.startswith(message)
    assert "\n" not in caught.value.message


def test_the_transcripts_topic() -> None:
    assert transcripts_topic({}) is None
    assert transcripts_topic({"KAFKA_TOPIC": " calls.v1 "}) == "calls.v1"
    for bad in ("bad topic", "x" * 250, "..", "caf\u00e9"):
        with pytest.raises(InvalidSetting, match=r"^KAFKA_TOPIC"):
            transcripts_topic({"KAFKA_TOPIC": bad})
    with pytest.raises(InvalidSetting, match=r"^--topic"):
        parse_topic(Setting("--topic", "a/b"))


@pytest.mark.parametrize(("text", "value"), [("False", False), ("0", False), ("", False), (" On ", True)])
def test_booleans_are_parsed_explicitly(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_a_boolean_variable_names_itself_when_wrong() -> None:
    assert env_bool({}, "DO_SIMULATE", default=True) is True
    assert env_bool({"DO_SIMULATE": "no"}, "DO_SIMULATE", default=True) is False
    with pytest.raises(InvalidSetting, match=r"^DO_SIMULATE='maybe': expected true/false"):
        env_bool({"DO_SIMULATE": "maybe"}, "DO_SIMULATE", default=False)
