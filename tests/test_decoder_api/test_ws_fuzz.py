"""Generated frames against the Vosk-protocol WebSocket ``/v1/stream`` of a running decoder.

Whatever text frame a client sends, the answer is what ``decoder_api/http/routes/stream.py`` documents:
exactly one JSON reply (partial, result, alternatives, or an error with ``error`` and ``message``),
or, for a refused config and after ``eof``, that reply and a close with the documented code; a
valid first ``config`` frame gets no reply. Binary frames of any length get one reply each. After
every example the server still serves a fresh stream. ``FUZZ_EXAMPLES`` sets the examples per test.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websocket import ABNF

from decoder_api.http.openapi import openapi_document
from decoder_api.http.routes.v1 import SERVER_ONLY_KEYS
from devtools.processes import DecoderServer, start_decoder

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
NORMAL, INVALID_DATA, POLICY_VIOLATION = 1000, 1007, 1008
COMMANDS = ("config", "eof", "reset")
PROBE = bytes(320)  # 10 ms of silence: its reply shows the stream still runs and the order of replies
CONFIG_REFUSALS = {"invalid_config", "server_only_option", "unsupported_sample_rate", "invalid_options"}

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)

WORDS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["conf", "start", "end", "word"],
        "properties": {
            "conf": {"type": "number"},
            "start": {"type": "number"},
            "end": {"type": "number"},
            "word": {"type": "string"},
        },
    },
}
# The server's messages as the module docstring of decoder_api/http/routes/stream.py documents them.
REPLY_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["partial"],
            "properties": {"partial": {"type": "string"}},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["text"],
            "properties": {"text": {"type": "string"}, "result": WORDS},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["alternatives"],
            "properties": {
                "alternatives": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["text", "confidence"],
                        "properties": {
                            "text": {"type": "string"},
                            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                            "result": WORDS,
                        },
                    },
                }
            },
        },
        {
            "type": "object",
            "required": ["error", "message"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        },
    ]
}
STREAM_CONFIG = openapi_document()["components"]["schemas"]["StreamConfig"]
CONFIG_VALIDATOR = jsonschema.validators.validator_for(STREAM_CONFIG)(STREAM_CONFIG)


class StreamClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


def connect(server: DecoderServer) -> websocket.WebSocket:
    return websocket.create_connection(f"{server.ws_url}/v1/stream", timeout=30)


def receive(ws: websocket.WebSocket) -> dict[str, Any]:
    """The next reply, checked against the documented messages; a close raises ``StreamClosed``."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            code = int(struct.unpack("!H", data[:2])[0]) if len(data) >= 2 else 1005
            raise StreamClosed(code, data[2:].decode("utf-8", "replace"))
        if opcode in (ABNF.OPCODE_PING, ABNF.OPCODE_PONG):
            continue
        assert opcode == ABNF.OPCODE_TEXT, (opcode, data)
        message = json.loads(data)
        jsonschema.validate(message, REPLY_SCHEMA)
        assert isinstance(message, dict)
        return message


def closes_with(ws: websocket.WebSocket) -> int:
    with pytest.raises(StreamClosed) as closed:
        receive(ws)
    return closed.value.code


def assert_serves(server: DecoderServer) -> None:
    """A fresh stream still gets a partial for its audio, and a result and a normal close for eof."""
    ws = connect(server)
    try:
        ws.send_binary(bytes(3200))
        assert set(receive(ws)) == {"partial"}
        ws.send('{"eof": 1}')
        assert set(receive(ws)) == {"text"}
        assert closes_with(ws) == NORMAL
    finally:
        ws.close()


class Stream:
    """One reused connection whose session is open (an audio frame went first), reopened after a close."""

    def __init__(self, server: DecoderServer) -> None:
        self._server = server
        self._ws: websocket.WebSocket | None = None

    def socket(self) -> websocket.WebSocket:
        if self._ws is None:
            self._ws = connect(self._server)
            self._ws.send_binary(PROBE)
            assert set(receive(self._ws)) == {"partial"}
        return self._ws

    def close(self) -> None:
        """The stream ended (or an example failed): the next example opens a new one."""
        if self._ws is not None:
            self._ws.close()
        self._ws = None


def is_audio_reply(reply: dict[str, Any]) -> bool:
    """A partial, or a result when the audio ended an utterance: anything but an error."""
    return "error" not in reply


def expected_reply(text: str) -> str:
    """What the protocol documents for a text frame on a stream that has had audio: the command
    obeyed, or the error code of the one error reply."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return "invalid_message"
    if not isinstance(message, dict):
        return "invalid_message"
    if message.keys() & SERVER_ONLY_KEYS:
        return "server_only_option"
    if message.keys() - set(COMMANDS):
        return "unknown_command"
    if len(message) != 1:
        return "invalid_message"
    ((command, value),) = message.items()
    if command == "config":
        return "invalid_message"  # config comes before the first audio frame only
    is_one = type(value) in (int, float) and value == 1
    return command if is_one else "invalid_message"


# --- generated frames -------------------------------------------------------------------------------------

chars = st.characters(codec="utf-8")  # text frames are UTF-8: no lone surrogates
texts = st.text(chars, max_size=30)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    texts,
    st.sampled_from([0, 1, 1.0, -1, 2, "1", "eof", 1e308, -0.0]),
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4)


json_values = st.recursive(json_scalars, json_containers, max_leaves=10)
keys = st.sampled_from([*COMMANDS, *sorted(SERVER_ONLY_KEYS), "EOF", "eof ", "partial", "text"]) | texts
json_ws = st.text(" \t\n\r", max_size=3)


def spaced(command: str, value: str, gaps: list[str]) -> str:
    """``{"command": value}`` with JSON whitespace at every place it may go."""
    a, b, c, d, e, f = gaps
    return f'{a}{{{b}"{command}"{c}:{d}{value}{e}}}{f}'


def huge_number(digits: int) -> str:
    return "1" + "0" * digits


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Shallow enough for any JSON parser, or far too deep for the server's (in between, where the
# limit falls depends on the stack of the process that parses).
depths = st.integers(1, 200) | st.integers(5_000, 100_000)


numbers_as_text = st.one_of(
    st.integers(300, 6000).map(huge_number),
    st.sampled_from(
        ["1", "1.0", "1e0", "10e-1", "1e400", "-1", "NaN", "Infinity", "true", '"1"', "01", "1.", ".1"]
    ),
)
text_frames = st.one_of(
    st.text(chars, max_size=200),
    json_values.map(json.dumps),
    st.builds(lambda command, value: json.dumps({command: value}), st.sampled_from(COMMANDS), json_values),
    st.builds(spaced, st.sampled_from(COMMANDS), numbers_as_text, st.lists(json_ws, min_size=6, max_size=6)),
    st.builds(
        spaced, st.sampled_from(["eof", "reset"]), st.just("1"), st.lists(texts, min_size=6, max_size=6)
    ),
    st.dictionaries(keys, json_values, min_size=1, max_size=4).map(json.dumps),
    st.builds(
        lambda command, depth: json.dumps({command: 0})[:-2] + nested(depth) + "}",
        keys,
        depths,
    ),
    depths.map(nested),
)

sample_rates = st.one_of(
    st.sampled_from(
        [8000, 16000, 16000.0, 44100, 48000, 7999, 1, 0, -1, 192000, 192001, 8000.5, "16000", True]
    ),
    st.integers(-10, 200_000),
    st.floats(),
)
phrase_lists = st.lists(st.sampled_from(["안녕하세요", "감사합니다", "네", "hello"]) | texts, max_size=4)
config_options = st.fixed_dictionaries(
    {},
    optional={
        "sample_rate": sample_rates,
        "words": st.sampled_from([True, False, 0, 1, 2, "true", None, 1.0]),
        "phrase_list": phrase_lists | json_values,
        "max_alternatives": st.sampled_from([0, 1, 3, 10, 11, -1, 1.5, "2", None]) | st.integers(),
    },
)
configs = st.one_of(
    config_options,
    st.builds(
        lambda options, extra: options | extra, config_options, st.dictionaries(keys, json_values, max_size=2)
    ),
    json_values,
)


# --- fixtures and tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    """A decoder of its own (the Korean Vosk model), so generated streams neither disturb nor are
    disturbed by the other tests; opening streams is not rate limited."""
    server = start_decoder(
        tmp_path_factory.mktemp("ws-fuzz-logs"),
        engine="vosk",
        model="ko",
        session_idle_s="30",
        session_rate_per_min="0",
    )
    yield server
    server.stop()


@pytest.fixture
def stream(stream_server: DecoderServer) -> Iterator[Stream]:
    """One connection per test, shared by its examples (hence the function-scoped fixture in @given)."""
    reused = Stream(stream_server)
    yield reused
    reused.close()


@fuzz
@given(text=text_frames)
def test_any_text_frame_gets_its_documented_reply(
    text: str, stream: Stream, stream_server: DecoderServer
) -> None:
    ws = stream.socket()
    ws.send(text)
    ws.send_binary(PROBE)
    expected = expected_reply(text)
    try:
        reply = receive(ws)
        if expected == "eof":
            assert set(reply) == {"text"}, (text, reply)
            assert closes_with(ws) == NORMAL
            stream.close()
        elif expected == "reset":
            assert set(reply) == {"text"}, (text, reply)
            assert is_audio_reply(receive(ws))
        elif expected == "server_only_option":
            assert reply.get("error") == expected, (text[:300], reply)
            assert closes_with(ws) == POLICY_VIOLATION
            stream.close()
        else:
            assert reply.get("error") == expected, (text[:300], reply)
            assert is_audio_reply(receive(ws))  # exactly one reply, and the stream carries on
    except BaseException:
        stream.close()
        raise
    assert_serves(stream_server)


@fuzz
@given(config=configs)
def test_a_first_config_frame_is_taken_silently_or_refused_with_1008(
    config: Any, stream_server: DecoderServer
) -> None:
    """A config the document's StreamConfig accepts opens the stream (no reply) unless the model
    cannot take it; anything else is refused with one error reply and close code 1008."""
    documented = CONFIG_VALIDATOR.is_valid(config)
    server_only = isinstance(config, dict) and bool(config.keys() & SERVER_ONLY_KEYS)
    ws = connect(stream_server)
    try:
        ws.send(json.dumps({"config": config}))
        ws.send_binary(PROBE)
        reply = receive(ws)
        if "error" in reply:
            assert reply["error"] in CONFIG_REFUSALS, reply
            if server_only:
                assert reply["error"] == "server_only_option"
            elif not documented:
                assert reply["error"] == "invalid_config", reply
            else:
                assert reply["error"] in ("unsupported_sample_rate", "invalid_options"), reply
            assert closes_with(ws) == POLICY_VIOLATION
        else:
            assert documented and not server_only, (config, reply)
            assert is_audio_reply(reply)  # the probe's: the config itself got none
            ws.send('{"eof": 1}')
            last = receive(ws)
            assert set(last) == ({"alternatives"} if config.get("max_alternatives") else {"text"}), last
            assert closes_with(ws) == NORMAL
    finally:
        ws.close()
    assert_serves(stream_server)


@fuzz
@given(frames=st.lists(st.binary(max_size=4001), min_size=1, max_size=8))
def test_binary_frames_of_any_length_get_one_reply_each(frames: list[bytes], stream: Stream) -> None:
    """Whole 16-bit samples are decoded (a partial, or a result when an utterance ended); an odd
    byte count is one ``invalid_audio`` error, and the stream carries on either way."""
    ws = stream.socket()
    try:
        for frame in frames:
            ws.send_binary(frame)
            reply = receive(ws)
            if len(frame) % 2:
                assert reply.get("error") == "invalid_audio", reply
            else:
                assert is_audio_reply(reply), reply
    except BaseException:
        stream.close()
        raise


@settings(fuzz, max_examples=max(5, FUZZ_EXAMPLES // 4))
@given(data=st.binary(min_size=1, max_size=64))
def test_text_frames_that_are_not_utf8_close_with_1007(data: bytes, stream_server: DecoderServer) -> None:
    ws = connect(stream_server)
    try:
        ws.send(data, opcode=ABNF.OPCODE_TEXT)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            assert closes_with(ws) == INVALID_DATA
        else:
            reply, expected = receive(ws), expected_reply(text)
            assert is_audio_reply(reply) if expected in COMMANDS else reply.get("error") == expected
    finally:
        ws.close()


def test_generated_streams_logged_no_internal_error(stream_server: DecoderServer) -> None:
    log = Path(stream_server.log).read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "stream_failed" not in log
