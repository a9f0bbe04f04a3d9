"""Options and environment: parsing, precedence, and one readable line for every mistake."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contract.env import parse_bool
from recorder.cli import build_parser, main, settings_from
from recorder.config import RecorderSettings, parse_server_url
from recorder.errors import ConfigError
from tests.test_recorder.conftest import recorder

ORIGINAL_FLAGS = ("-H", "-f", "-S", "-b", "-t", "-s", "-a", "-V", "-v")
NEW_FLAGS = (
    "--api-key",
    "--chunk-ms",
    "--realtime",
    "--fast",
    "--user-id",
    "--json",
    "--protocol",
    "--list-devices",
    "--data",
    "--callers",
    "--pause-s",
    "--calls",
    "--duration",
    "--words",
    "--retry-s",
    "--input-rate",
    "--stats-s",
    "--speakers",
    "--mono",
)


def settings(*args: str, **env: str) -> RecorderSettings:
    return settings_from(build_parser().parse_args(list(args)), env)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("decoder", "http://decoder:8080"),
        ("decoder:9000", "http://decoder:9000"),
        ("10.0.0.5", "http://10.0.0.5:8080"),
        ("[::1]:81", "http://[::1]:81"),
        ("http://decoder", "http://decoder"),
        ("https://decoder.apps.example.com/", "https://decoder.apps.example.com"),
        ("https://gw.example.com/asr/", "https://gw.example.com/asr"),
        ("ws://decoder:8080", "http://decoder:8080"),
        ("wss://decoder", "https://decoder"),
    ],
)
def test_host_forms(value: str, url: str) -> None:
    assert parse_server_url(value) == url


@pytest.mark.parametrize("value", ["", "ftp://x", "http://", "a b", "host:0", "host:http", "http://x/?q=1"])
def test_bad_hosts(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_server_url(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("False", False), ("false", False), ("0", False), ("no", False), ("", False), ("TRUE", True)],
)
def test_booleans_are_parsed_explicitly(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_defaults_per_mode() -> None:
    mic = settings()
    assert (mic.mode, mic.server.url, mic.stream.chunk_ms, mic.microphone.aggressiveness) == (
        "microphone",
        "http://localhost:8080",
        200,
        1,
    )
    file = settings("-f", "x.wav")
    assert (file.mode, file.realtime) == ("file", False)
    assert (file.stream.speakers, file.stream.mixdown) == (None, False)
    named = settings("-f", "x.wav", "--speakers", " Sarah , caller", "--mono").stream
    assert (named.speakers, named.mixdown) == (("Sarah", "caller"), True)
    assert settings("-f", "x.wav", "--realtime").realtime is True
    simulate = settings("-S")
    assert (simulate.mode, simulate.realtime, simulate.simulator.pause_s) == ("simulate", True, (5.0, 10.0))
    assert settings("-S", "--fast").realtime is False


def test_environment_and_precedence() -> None:
    env = {
        "HOST": "envhost:9000",
        "DO_SIMULATE": "True",
        "KAFKA_BROKERS": "k1:9092,k2:9092",
        "KAFKA_TOPIC": "transcripts",
        "DECODER_API_KEY": "secret",
    }
    from_env = settings(**env)
    assert from_env.mode == "simulate"
    assert from_env.server.url == "http://envhost:9000"
    assert from_env.server.api_key == "secret"
    assert from_env.kafka is not None
    assert (from_env.kafka.client.bootstrap_servers, from_env.kafka.topic) == (
        "k1:9092,k2:9092",
        "transcripts",
    )
    flags = settings("-H", "flaghost", "-f", "a.wav", "-b", "b:1", "-t", "t2", "--api-key", "k", **env)
    assert flags.mode == "file"
    assert flags.server.url == "http://flaghost:8080"
    assert flags.server.api_key == "k"
    assert flags.kafka is not None
    assert (flags.kafka.client.bootstrap_servers, flags.kafka.topic) == ("b:1", "t2")
    assert settings(DO_SIMULATE="False").mode == "microphone"
    assert settings(DO_SIMULATE="0").mode == "microphone"
    default_topic = settings(KAFKA_BROKERS="k:9092").kafka
    assert default_topic is not None
    assert default_topic.topic == "transcripts.v1"
    standard = settings(KAFKA_BOOTSTRAP_SERVERS="s:9092", KAFKA_BROKERS="k:9092").kafka
    assert standard is not None  # the name every component reads; KAFKA_BROKERS is its alias
    assert standard.client.bootstrap_servers == "s:9092"


def test_kafka_tls_and_sasl_come_from_the_environment_only(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    env = {
        "KAFKA_BROKERS": "k:9093",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SSL_CA_LOCATION": str(ca),
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "recorder",
        "KAFKA_SASL_PASSWORD": "from-env",
        "KAFKA_SASL_PASSWORD_FILE": str(password_file),
    }
    kafka = settings(**env).kafka
    assert kafka is not None
    assert kafka.client.client_config() == {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "recorder",
        "sasl.password": "s3cret",  # the file wins over the variable
    }
    assert "s3cret" not in repr(kafka)
    plain = settings(KAFKA_BROKERS="k:9092").kafka
    assert plain is not None
    assert plain.client.client_config() == {"bootstrap.servers": "k:9092"}
    with pytest.raises(SystemExit):  # no flag can carry a secret
        build_parser().parse_args(["--sasl-password", "x"])


def test_help_explains_every_option() -> None:
    done = recorder("--help")
    assert done.returncode == 0
    for flag in ORIGINAL_FLAGS + NEW_FLAGS:
        assert f"{flag} " in done.stdout or f"{flag}," in done.stdout, flag
    variables = ("HOST", "DO_SIMULATE", "KAFKA_BROKERS", "KAFKA_TOPIC", "DECODER_API_KEY")
    security = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_CA_LOCATION", "KAFKA_SASL_PASSWORD_FILE")
    for variable in variables + security:
        assert variable in done.stdout


BAD_INVOCATIONS = [
    (["--chunk-ms", "0"], {}, "--chunk-ms"),
    (["--chunk-ms", "fast"], {}, "--chunk-ms"),
    (["-a", "4"], {}, "--aggressiveness"),
    (["-a", "x"], {}, "--aggressiveness"),
    (["-V", "0"], {}, "--volume"),
    (["-V", "nan"], {}, "--volume"),
    (["-H", "http://"], {}, "--host"),
    (["-H", "host:99999"], {}, "--host"),
    (["--protocol", "udp"], {}, "--protocol"),
    (["--duration", "-1"], {}, "--duration"),
    (["--retry-s", "x"], {}, "--retry-s"),
    (["--input-rate", "7"], {}, "--input-rate"),
    (["--user-id", ""], {}, "--user-id"),
    (["-f", "x", "--speakers", "agent"], {}, "--speakers"),
    (["-f", "x", "--speakers", "a,b,c"], {}, "--speakers"),
    (["-f", "x", "--speakers", "agent,agent"], {}, "different names"),
    (["-f", "x", "--speakers", "agent,"], {}, "--speakers"),
    (["-f", "x", "--speakers", "a," + "x" * 33], {}, "32"),
    (["--speakers", "a,b"], {}, "microphone is mono"),
    (["--mono"], {}, "microphone is mono"),
    (["-S", "--callers", "0"], {}, "--callers"),
    (["-S", "--pause-s", "3,1"], {}, "--pause-s"),
    (["-S", "--pause-s", "a,b"], {}, "--pause-s"),
    (["-S", "--calls", "-2"], {}, "--calls"),
    (["-S", "--stats-s", "0"], {}, "--stats-s"),
    (["--callers", "3"], {}, "--simulate"),
    (["--realtime"], {}, "--realtime"),
    (["--realtime", "--fast", "-f", "x"], {}, "not allowed"),
    (["-f", "x", "-S"], {}, "--simulate"),
    (["-t", "transcripts"], {}, "broker"),
    (["-b", "nohost", "-t", "x"], {}, "--broker"),
    (["-b", "h:1", "-t", "bad topic"], {}, "topic"),
    (["--nope"], {}, "unrecognized"),
    ([], {"DO_SIMULATE": "maybe"}, "DO_SIMULATE"),
    ([], {"HOST": "h:x"}, "HOST"),
    ([], {"KAFKA_TOPIC": "t"}, "broker"),
    ([], {"KAFKA_BROKERS": "h", "KAFKA_TOPIC": "t"}, "KAFKA_BROKERS"),
    ([], {"KAFKA_BROKERS": "h:1", "KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ([], {"KAFKA_BROKERS": "h:1", "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ([], {"KAFKA_BROKERS": "h:1", "KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"}, "KAFKA_SSL_CA_LOCATION"),
    ([], {"KAFKA_BROKERS": "h:1", "KAFKA_SASL_PASSWORD_FILE": "/no/such/file"}, "KAFKA_SASL_PASSWORD_FILE"),
]


@pytest.mark.parametrize(("args", "env", "needle"), BAD_INVOCATIONS)
def test_bad_values_give_one_readable_line(
    args: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code: int | str | None
    try:
        code = main(args, env)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert err.count("\n") == 1, err
    assert needle in err


def test_a_bad_value_from_the_environment_in_a_real_process() -> None:
    done = recorder("-f", "x.wav", env={"DO_SIMULATE": "maybe"})
    assert done.returncode == 2
    assert done.stderr == ("error: DO_SIMULATE='maybe': expected true/false, yes/no, on/off or 1/0\n")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp: ["-f", str(tmp / "missing.wav")], "no such file"),
        (lambda tmp: ["-f", str(Path(__file__))], "not a readable audio file"),
        (lambda tmp: ["-f", str(tmp / "empty.raw")], "no audio"),
        (lambda tmp: ["-S", "--data", str(tmp / "nowhere")], "no such directory"),
        (lambda tmp: ["-S", "--data", str(tmp)], "no .wav recordings"),
    ],
)
def test_bad_inputs_give_one_readable_line(
    tmp_path: Path, make: Callable[[Path], list[str]], needle: str
) -> None:
    (tmp_path / "empty.raw").write_bytes(b"")
    done = recorder("-H", "127.0.0.1:1", "--retry-s", "0", *make(tmp_path))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_host_is_one_line(tmp_path: Path) -> None:
    wav = tmp_path / "a.raw"
    wav.write_bytes(b"\0\0" * 3200)
    done = recorder("-H", "127.0.0.1:1", "--retry-s", "0.5", "-f", str(wav))
    assert done.returncode == 1
    assert done.stderr == "error: cannot reach the decoder at http://127.0.0.1:1: connection refused\n"
