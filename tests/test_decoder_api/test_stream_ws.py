"""The Vosk-protocol WebSocket ``/v1/stream`` against a real server, driven as a Vosk client drives it."""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import websocket
from websocket import ABNF

from decoder_api.audio import chunk_bytes, iter_chunks
from devtools.clients import HttpSession, VoskStream, stream_audio
from devtools.processes import DecoderServer, start_decoder
from tests.conftest import PAUSE_MS, RATE_HZ, SpokenCall

CHUNK_MS = 200
CHUNK = chunk_bytes(RATE_HZ, CHUNK_MS)
NORMAL, GOING_AWAY, INVALID_DATA, POLICY_VIOLATION, MESSAGE_TOO_BIG, TRY_AGAIN_LATER = (
    1000,
    1001,
    1007,
    1008,
    1009,
    1013,
)


def connect(server: DecoderServer, query: str = "", **options: Any) -> websocket.WebSocket:
    """A connection to ``/v1/stream`` (``devtools.clients.VoskStream`` with no config frame sent)."""
    ws = VoskStream(f"{server.ws_url}/v1/stream{query}", timeout_s=30, **options).open().ws
    assert ws is not None
    return ws


def reply(ws: websocket.WebSocket) -> dict[str, Any]:
    """The next message, which must be a JSON text frame."""
    opcode, data = ws.recv_data()
    assert opcode == ABNF.OPCODE_TEXT, (opcode, data)
    message = json.loads(data)
    assert isinstance(message, dict)
    return message


def close_code(ws: websocket.WebSocket) -> int:
    """The next frame must be the server's close; its status code."""
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == ABNF.OPCODE_CLOSE, (opcode, data)
    return int(struct.unpack("!H", data[:2])[0])


def feed(ws: websocket.WebSocket, pcm: bytes) -> list[dict[str, Any]]:
    """Send ``pcm`` in 200 ms binary frames, reading the one reply each frame gets."""
    replies = []
    for chunk in iter_chunks(pcm, CHUNK):
        ws.send_binary(chunk)
        replies.append(reply(ws))
    return replies


def at_ms(ms: int) -> int:
    """Byte offset of a time in the 16 kHz PCM, on a frame boundary."""
    return ms // CHUNK_MS * CHUNK


def metric(server: DecoderServer, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    assert match, name
    return float(match.group(1))


def assert_serves(server: DecoderServer) -> None:
    """A fresh connection still gets a partial and a clean end."""
    ws = connect(server)
    try:
        assert set(feed(ws, b"\0\0" * 3200)[0]) == {"partial"}
        ws.send('{"eof": 1}')
        assert reply(ws) == {"text": ""}
        assert close_code(ws) == NORMAL
    finally:
        ws.close()


@dataclass(frozen=True)
class Streamed:
    replies: list[dict[str, Any]]
    last: dict[str, Any]
    close: int

    @property
    def finals(self) -> list[dict[str, Any]]:
        found = [r for r in self.replies if "text" in r]
        return found + ([self.last] if self.last["text"] else [])


def stream(server: DecoderServer, pcm: bytes, config: dict[str, Any]) -> Streamed:
    ws = connect(server)
    try:
        ws.send(json.dumps({"config": config}))
        replies = feed(ws, pcm)
        ws.send('{"eof" : 1}')
        return Streamed(replies, reply(ws), close_code(ws))
    finally:
        ws.close()


@pytest.fixture(scope="module")
def korean_stream(vosk_server: DecoderServer, korean_call: SpokenCall) -> Streamed:
    return stream(vosk_server, korean_call.pcm, {"sample_rate": RATE_HZ, "words": True})


def native_finals(server: DecoderServer, pcm: bytes) -> list[dict[str, Any]]:
    """The same audio and chunking through the native HTTP API."""
    session = HttpSession(server.url, {"sample_rate": RATE_HZ, "words": True}, delete=True)
    stream_audio(session, pcm, chunk_ms=CHUNK_MS)
    return session.finals


def test_one_reply_per_frame_with_evolving_partials_and_finals_at_the_pauses(
    korean_stream: Streamed, korean_call: SpokenCall
) -> None:
    assert len(korean_stream.replies) == -(-len(korean_call.pcm) // CHUNK)
    assert korean_stream.close == NORMAL
    for r in korean_stream.replies:
        assert set(r) in ({"partial"}, {"text", "result"}), r
    finals = korean_stream.finals
    assert len(finals) == len(korean_call.turns)
    final_at = [(i + 1) * CHUNK_MS for i, r in enumerate(korean_stream.replies) if "text" in r]
    for end_ms, (_, turn_end) in zip(final_at, korean_call.spans_ms, strict=False):
        assert turn_end < end_ms <= turn_end + PAUSE_MS + CHUNK_MS
    previous = 0
    for end_ms in [*final_at, korean_call.duration_ms][: len(korean_call.turns)]:
        partials = {
            r.get("partial", "") for r in korean_stream.replies[previous // CHUNK_MS : end_ms // CHUNK_MS]
        }
        assert len(partials - {""}) >= 2, partials
        previous = end_ms


def test_results_carry_word_times_in_seconds(korean_stream: Streamed, korean_call: SpokenCall) -> None:
    for final, (start_ms, end_ms) in zip(korean_stream.finals, korean_call.spans_ms, strict=True):
        words = final["result"]
        assert final["text"] == " ".join(w["word"] for w in words)
        for w in words:
            assert set(w) == {"conf", "start", "end", "word"}
            assert all(isinstance(w[k], float) for k in ("conf", "start", "end"))
            assert start_ms / 1000 - 0.3 <= w["start"] < w["end"] <= end_ms / 1000 + 0.3


def test_finals_equal_the_native_http_api(
    korean_stream: Streamed, vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    native = native_finals(vosk_server, korean_call.pcm)
    assert [f["text"] for f in korean_stream.finals] == [f["text"] for f in native]
    ws_words = [(w["word"], round(w["start"] * 1000)) for f in korean_stream.finals for w in f["result"]]
    assert ws_words == [(w["word"], w["start_ms"]) for f in native for w in f["words"]]


def test_eof_flushes_the_open_utterance_and_closes_normally(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    mid_last_turn = at_ms(sum(korean_call.spans_ms[-1]) // 2)
    ended = stream(vosk_server, korean_call.pcm[:mid_last_turn], {"sample_rate": RATE_HZ})
    assert ended.last["text"]
    assert set(ended.last) == {"text"}  # no words asked for, no "result"
    assert ended.close == NORMAL
    assert len(ended.finals) == len(korean_call.turns)


def test_eof_first_and_spacing_of_control_frames(vosk_server: DecoderServer) -> None:
    ws = connect(vosk_server)
    try:
        ws.send('  {  "eof"  :  1  }  ')
        assert reply(ws) == {"text": ""}
        assert close_code(ws) == NORMAL
    finally:
        ws.close()


def test_reset_finalises_the_open_utterance_and_starts_a_new_one(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    first_end = at_ms(korean_call.spans_ms[0][1] + CHUNK_MS)
    ws = connect(vosk_server)
    try:
        ws.send('{"reset": 1}')
        assert reply(ws) == {"text": ""}  # nothing open yet, and no session opened for it:
        ws.send(json.dumps({"config": {"sample_rate": RATE_HZ}}))  # so a config is still welcome
        before = feed(ws, korean_call.pcm[:first_end])
        assert all("partial" in r for r in before) and before[-1]["partial"]
        ws.send('{ "reset" : 1 }')
        flushed = reply(ws)
        assert flushed["text"] and set(flushed) == {"text"}
        after = feed(ws, korean_call.pcm[first_end:])
        assert after[0] == {"partial": ""}
        finals = [r["text"] for r in after if "text" in r]
        ws.send('{"eof": 1}')
        last = reply(ws)
        finals += [last["text"]] if last["text"] else []
        assert close_code(ws) == NORMAL
    finally:
        ws.close()
    assert len(finals) == len(korean_call.turns) - 1
    assert not finals[0].startswith(flushed["text"])


def test_max_alternatives_answers_in_the_vosk_alternatives_shape(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    first_turn = korean_call.pcm[: at_ms(korean_call.spans_ms[0][1] + PAUSE_MS)]
    streamed = stream(vosk_server, first_turn, {"sample_rate": RATE_HZ, "max_alternatives": 3})
    (final,) = [r for r in streamed.replies if "alternatives" in r]
    (best,) = final["alternatives"]
    assert set(best) == {"text", "confidence"}
    assert best["text"] and 0 < best["confidence"] <= 1
    assert streamed.last == {"alternatives": [{"text": "", "confidence": 0.0}]}


@pytest.mark.parametrize(
    "frame",
    [
        {"config": {"model": "vosk-model-small-en-us"}},
        {"config": {"sample_rate": RATE_HZ, "engine": "whisper"}},
        {"config": {"broker": "evil:9092", "topic": "x"}},
        {"config": {"path": "/etc"}},
        {"model": "vosk-model-small-en-us"},
    ],
)
def test_server_only_keys_are_refused_with_policy_violation(
    vosk_server: DecoderServer, frame: dict[str, Any]
) -> None:
    ws = connect(vosk_server)
    try:
        ws.send(json.dumps(frame))
        refused = reply(ws)
        assert refused["error"] == "server_only_option" and refused["message"]
        assert close_code(ws) == POLICY_VIOLATION
    finally:
        ws.close()
    assert_serves(vosk_server)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "invalid_message"),
        ("[1, 2]", "invalid_message"),
        ('"eof"', "invalid_message"),
        ('{"flush": 1}', "unknown_command"),
        ('{"eof": "yes"}', "invalid_message"),
        ('{"eof": 1, "reset": 1}', "invalid_message"),
        (b"\x01\x02\x03", "invalid_audio"),
    ],
)
def test_malformed_frames_get_an_error_reply_and_the_stream_goes_on(
    vosk_server: DecoderServer, korean_call: SpokenCall, frame: str | bytes, error: str
) -> None:
    ws = connect(vosk_server)
    try:
        ws.send_binary(frame) if isinstance(frame, bytes) else ws.send(frame)
        refused = reply(ws)
        assert refused["error"] == error and refused["message"]
        assert set(feed(ws, korean_call.pcm[:CHUNK])[0]) == {"partial"}
        ws.send('{"eof": 1}')
        assert "text" in reply(ws)
        assert close_code(ws) == NORMAL
    finally:
        ws.close()
    assert_serves(vosk_server)


@pytest.mark.parametrize(
    "config",
    [
        {"sample_rate": "fast"},
        {"sample_rate": 16000.5},
        {"words": "yes"},
        {"phrase_list": "hello"},
        {"max_alternatives": -1},
        {"sample_rate": RATE_HZ, "colour": "blue"},
        {"sample_rate": 100},
        "16000",
    ],
)
def test_invalid_config_closes_with_policy_violation(vosk_server: DecoderServer, config: Any) -> None:
    ws = connect(vosk_server)
    try:
        ws.send(json.dumps({"config": config}))
        refused = reply(ws)
        assert refused["error"] in {"invalid_config", "unsupported_sample_rate"}, refused
        assert close_code(ws) == POLICY_VIOLATION
    finally:
        ws.close()


def test_a_text_frame_that_is_not_utf8_closes_with_invalid_data(vosk_server: DecoderServer) -> None:
    ws = connect(vosk_server)
    try:
        ws.send(b'{"eof": "\xff"}', opcode=ABNF.OPCODE_TEXT)
        assert close_code(ws) == INVALID_DATA
    finally:
        ws.close()
    assert_serves(vosk_server)


def test_config_after_audio_is_refused_and_the_stream_keeps_its_own(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    ws = connect(vosk_server)
    try:
        ws.send(json.dumps({"config": {"sample_rate": RATE_HZ, "words": True}}))
        feed(ws, korean_call.pcm[:CHUNK])
        ws.send(json.dumps({"config": {"sample_rate": 8000}}))
        assert reply(ws)["error"] == "invalid_message"
        replies = feed(ws, korean_call.pcm[CHUNK : at_ms(korean_call.spans_ms[0][1] + PAUSE_MS)])
        (final,) = [r for r in replies if "text" in r]
        assert final["result"]  # still the first config: words, 16 kHz
    finally:
        ws.close()


def test_a_plain_http_request_is_a_400(vosk_server: DecoderServer) -> None:
    response = requests.get(f"{vosk_server.url}/v1/stream", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    """API keys, room for one session, streams that go idle quickly, 64 KiB frames at most."""
    server = start_decoder(
        tmp_path_factory.mktemp("guarded"),
        engine="vosk",
        model="ko",
        api_keys="stream-key",
        max_sessions="1",
        session_idle_s="3",
        reap_interval_s="0.5",
        max_body_bytes="65536",
    )
    yield server
    server.stop()


def test_api_keys_are_checked_before_the_upgrade(guarded_server: DecoderServer) -> None:
    for query, header in (("", []), ("?api_key=wrong", []), ("", ["Authorization: Bearer wrong"])):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(guarded_server, query, header=header)
        assert refused.value.status_code == 401
    for query, header in (("?api_key=stream-key", []), ("", ["Authorization: Bearer stream-key"])):
        ws = connect(guarded_server, query, header=header)
        ws.send('{"eof": 1}')
        assert reply(ws) == {"text": ""}
        ws.close()


def test_capacity_exceeded_is_an_error_then_try_again_later(guarded_server: DecoderServer) -> None:
    key = ["Authorization: Bearer stream-key"]
    first, second = connect(guarded_server, header=key), connect(guarded_server, header=key)
    try:
        feed(first, b"\0\0" * 3200)
        second.send_binary(b"\0\0" * 3200)
        assert reply(second)["error"] == "capacity"
        assert close_code(second) == TRY_AGAIN_LATER
        first.send('{"eof": 1}')
        assert reply(first) == {"text": ""}
    finally:
        first.close()
        second.close()


def wait_for_sessions(server: DecoderServer, count: int, within_s: float) -> float:
    """Poll the active-session gauge until it is ``count`` or ``within_s`` passed; the last value."""
    deadline = time.monotonic() + within_s
    while (active := metric(server, "decoder_active_sessions")) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return active


def test_a_client_that_disconnects_mid_stream_leaks_no_session(
    guarded_server: DecoderServer, korean_call: SpokenCall
) -> None:
    # Only this module uses the guarded server, so once earlier streams wound down it holds no session.
    assert wait_for_sessions(guarded_server, 0, within_s=10) == 0
    ws = connect(guarded_server, "?api_key=stream-key")
    feed(ws, korean_call.pcm[: at_ms(1000)])
    assert metric(guarded_server, "decoder_active_sessions") == 1
    ws.shutdown()  # the TCP connection drops without a close frame
    # Well within the 3 s idle expiry, which would otherwise hide a leak.
    assert wait_for_sessions(guarded_server, 0, within_s=1.5) == 0


def test_a_frame_over_the_size_limit_closes_the_stream_as_too_big(guarded_server: DecoderServer) -> None:
    ws = connect(guarded_server, "?api_key=stream-key")
    try:
        ws.send_binary(b"\0\0" * (65536 // 2 + 1))  # just over: the server reads it all, then closes
        assert close_code(ws) == MESSAGE_TOO_BIG
    finally:
        ws.close()
    assert wait_for_sessions(guarded_server, 0, within_s=1.5) == 0


def test_an_idle_stream_is_closed_as_going_away(guarded_server: DecoderServer) -> None:
    ws = connect(guarded_server, "?api_key=stream-key")
    try:
        ws.send(json.dumps({"config": {"sample_rate": RATE_HZ}}))
        assert reply(ws)["error"] == "idle_timeout"
        assert close_code(ws) == GOING_AWAY
    finally:
        ws.close()
