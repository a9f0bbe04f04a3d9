"""Dual-channel calls (agent on one channel, customer on the other) on the whisper decoder: each
utterance names its speaker, each channel is transcribed accurately, utterances come in time order;
bad layouts and chunks are refused with a clear error and leave the session usable."""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import numpy as np
import pytest
import requests
import soxr

from devtools.evaluation import word_error_rate
from devtools.processes import DecoderServer
from tests.conftest import RATE_HZ, StereoCall
from tests.test_decoder_api.test_stream_ws import POLICY_VIOLATION, close_code, connect, reply

SPEAKERS = ["agent", "customer"]
MAX_WER = 0.12
PCM = {"Content-Type": "application/octet-stream"}


def stereo_wav(pcm: bytes, rate_hz: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)
    return out.getvalue()


def at_8khz(pcm: bytes) -> bytes:
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2).astype(np.float32) / 32768
    resampled = soxr.resample(frames, RATE_HZ, 8000)
    return (np.clip(resampled, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()


def check_call(utterances: list[dict[str, Any]], call: StereoCall, max_wer: float = MAX_WER) -> None:
    """Right speaker on every utterance, time order, and each channel's WER within ``max_wer``."""
    assert utterances, "no utterance"
    starts = [u["start_ms"] for u in utterances]
    assert starts == sorted(starts), starts
    for u in utterances:
        assert u["speaker"] == SPEAKERS[u["channel"]], u
        assert u["channel"] == call.speaker_at((u["start_ms"] + u["end_ms"]) // 2), u
    for channel in (0, 1):
        said = " ".join(u["text"] for u in utterances if u["channel"] == channel)
        wer = word_error_rate([call.reference(channel)], [said])
        assert wer <= max_wer, (channel, wer, said)


def test_transcribe_names_each_speaker_of_a_stereo_file(
    whisper_server: DecoderServer, stereo_call: StereoCall
) -> None:
    response = requests.post(
        f"{whisper_server.url}/v1/transcribe",
        params={"channels": "2", "speakers": ",".join(SPEAKERS)},
        data=stereo_wav(stereo_call.pcm, RATE_HZ),
        headers={"Content-Type": "audio/wav"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    utterances = response.json()["utterances"]
    check_call(utterances, stereo_call)
    assert [u["utterance"] for u in utterances] == list(range(len(utterances)))
    assert [u["speaker"] for u in utterances] == [SPEAKERS[s] for s, _ in stereo_call.turns]


def test_a_websocket_stereo_stream_gives_each_speaker_s_utterances_in_order(
    whisper_server: DecoderServer, stereo_call: StereoCall
) -> None:
    ws = connect(whisper_server)
    replies = []
    try:
        ws.send(json.dumps({"config": {"sample_rate": RATE_HZ, "channels": 2, "speakers": SPEAKERS}}))
        chunk = RATE_HZ * 4 // 5  # 200 ms of stereo frames
        for start in range(0, len(stereo_call.pcm), chunk):
            ws.send_binary(stereo_call.pcm[start : start + chunk])
            replies.append(reply(ws))
        ws.send(json.dumps({"eof": 1}))
        replies.append(reply(ws))
    finally:
        ws.close()
    utterances = [
        {"start_ms": round(u["start"] * 1000), "end_ms": round(u["end"] * 1000)} | u
        for r in replies
        for u in r.get("utterances", [])
    ]
    check_call(utterances, stereo_call)
    partial_replies = [r for r in replies[:-1] if "partial" in r]
    assert partial_replies
    assert all([p["speaker"] for p in r["partials"]] == SPEAKERS for r in partial_replies)


def test_8khz_telephony_stereo_over_http_sessions(
    whisper_server: DecoderServer, stereo_call: StereoCall
) -> None:
    http = requests.Session()
    opened = http.post(
        f"{whisper_server.url}/v1/sessions", json={"sample_rate": 8000, "channels": 2}, timeout=30
    ).json()
    assert (opened["channels"], opened["speakers"]) == (2, SPEAKERS)  # the default names
    headers = PCM | {"X-Session-Token": opened["token"]}
    base = f"{whisper_server.url}/v1/sessions/{opened['session_id']}"
    # The call's first exchange (the agent's turn, then the customer's) is enough to show the
    # telephony rate decoded for both speakers.
    first_two = StereoCall(
        stereo_call.pcm[: (stereo_call.spans_ms[1][1] + 800) * RATE_HZ // 1000 * 4],
        stereo_call.turns[:2],
        stereo_call.spans_ms[:2],
    )
    pcm, finals = at_8khz(first_two.pcm), []
    for start in range(0, len(pcm), 6400):  # 400 ms
        response = http.post(f"{base}/audio", data=pcm[start : start + 6400], headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        finals += response.json()["finals"]
    finals += http.post(f"{base}/end", headers=headers, timeout=60).json()["finals"]
    check_call(finals, first_two)
    assert [f["speaker"] for f in finals] == SPEAKERS


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"channels": 3}, "invalid_channels"),
        ({"channels": 0}, "invalid_channels"),
        ({"channels": "2"}, "invalid_channels"),
        ({"channels": 2, "speakers": ["agent"]}, "invalid_speakers"),
        ({"channels": 2, "speakers": ["agent", "agent"]}, "invalid_speakers"),
        ({"channels": 2, "speakers": ["agent", ""]}, "invalid_speakers"),
        ({"channels": 2, "speakers": ["agent", "x" * 33]}, "invalid_speakers"),
        ({"channels": 2, "speakers": ["agent", "bell\x07"]}, "invalid_speakers"),
        ({"speakers": ["agent", "customer"]}, "invalid_speakers"),
    ],
)
def test_a_bad_layout_is_a_clear_400(whisper_server: DecoderServer, body: dict[str, Any], code: str) -> None:
    response = requests.post(f"{whisper_server.url}/v1/sessions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]


def test_a_chunk_of_broken_frames_is_refused_and_the_session_carries_on(
    whisper_server: DecoderServer,
) -> None:
    opened = requests.post(f"{whisper_server.url}/v1/sessions", json={"channels": 2}, timeout=30).json()
    headers = PCM | {"X-Session-Token": opened["token"]}
    base = f"{whisper_server.url}/v1/sessions/{opened['session_id']}"
    refused = requests.post(f"{base}/audio", data=b"\0" * 6, headers=headers, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["error"] == "incomplete_frame"
    accepted = requests.post(f"{base}/audio", data=b"\0" * 3200, headers=headers, timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["audio_ms"] == 50  # 800 frames at 16 kHz: the refused chunk left no trace
    assert len(accepted.json()["partials"]) == 2


def test_bad_stereo_input_to_transcribe_and_the_websocket(
    whisper_server: DecoderServer, stereo_call: StereoCall
) -> None:
    mono = io.BytesIO()
    with wave.open(mono, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE_HZ)
        wav.writeframes(b"\0\0" * RATE_HZ)
    for params, code in (({"channels": "2"}, "invalid_channels"), ({"channels": "5"}, "invalid_channels")):
        response = requests.post(
            f"{whisper_server.url}/v1/transcribe",
            params=params,
            data=mono.getvalue(),
            headers={"Content-Type": "audio/wav"},
            timeout=60,
        )
        assert (response.status_code, response.json()["error"]) == (400, code)
    ws = connect(whisper_server)
    try:
        ws.send(json.dumps({"config": {"channels": 2}}))
        ws.send_binary(b"\0" * 6)
        assert reply(ws)["error"] == "incomplete_frame"  # dropped; the stream goes on
        ws.send_binary(stereo_call.pcm[:6400])
        assert "partial" in reply(ws)
    finally:
        ws.close()
    ws = connect(whisper_server)
    try:
        ws.send(json.dumps({"config": {"channels": 2, "speakers": ["a", "a"]}}))
        assert reply(ws)["error"] == "invalid_config"
        assert close_code(ws) == POLICY_VIOLATION
    finally:
        ws.close()
