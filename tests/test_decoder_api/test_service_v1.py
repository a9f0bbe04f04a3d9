"""The native v1 API against a real gunicorn server with the real Vosk model."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.engines.base import Engine, RecognizerOptions
from decoder_api.sessions.transcripts import stream_pcm
from devtools.clients import HttpSession, VoskStream, split_chunks, stream_audio
from devtools.processes import DecoderServer, start_decoder
from tests.conftest import RATE_HZ, SpokenCall
from tests.reference import ReferenceEngine

PCM = {"Content-Type": "application/octet-stream"}


def opened(base: str, api_key: str | None = None, **options: Any) -> HttpSession:
    """A session of the native API opened with ``options`` (the server's defaults for the others)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return HttpSession(base, options, headers).open()


def stream(
    base: str, pcm: bytes, chunk_ms: int = 200, **options: Any
) -> tuple[list[dict[str, Any]], list[str]]:
    """``pcm`` through one session in ``chunk_ms`` chunks: the finals and each chunk's partial."""
    session = HttpSession(base, options)
    stream_audio(session, pcm, chunk_ms=chunk_ms)
    return session.finals, session.partials


def metric(base: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    assert match, name
    return float(match.group(1))


def worker_rss_kib(server: DecoderServer) -> int:
    children = Path(f"/proc/{server.pid()}/task/{server.pid()}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def offline(engine: Engine, pcm: bytes, chunk_ms: int = 200) -> list[str]:
    """``pcm`` through one recognizer of ``engine`` (the ``reference_engine``, on the server's allocator)."""
    return [f.text for f in stream_pcm(engine.create(RecognizerOptions(RATE_HZ)), pcm, chunk_ms).finals]


def test_streaming_gives_evolving_partials_and_the_offline_finals(
    vosk_server: DecoderServer, reference_engine: ReferenceEngine, korean_call: SpokenCall
) -> None:
    finals, partials = stream(vosk_server.url, korean_call.pcm, chunk_ms=200, words=True)
    assert [f["text"] for f in finals] == offline(reference_engine, korean_call.pcm)
    assert [f["utterance"] for f in finals] == list(range(len(finals)))
    assert all(f["words"] and f["start_ms"] < f["end_ms"] for f in finals)
    assert len({p for p in partials if p}) >= 4


@pytest.mark.parametrize("chunk_ms", [100, 250])
def test_chunk_sizes(
    vosk_server: DecoderServer, reference_engine: ReferenceEngine, korean_call: SpokenCall, chunk_ms: int
) -> None:
    finals, _ = stream(vosk_server.url, korean_call.pcm, chunk_ms=chunk_ms)
    assert [f["text"] for f in finals] == offline(reference_engine, korean_call.pcm, chunk_ms)


def test_twenty_concurrent_sessions_each_get_their_own_transcript(
    vosk_server: DecoderServer, reference_engine: ReferenceEngine, korean_call: SpokenCall
) -> None:
    # Each session streams one of the call's turns (with the silence around it): sessions with
    # different turns must never get each other's words.
    pad_ms, per_ms = 400, RATE_HZ * 2 // 1000
    turns = [
        korean_call.pcm[max(0, start - pad_ms) * per_ms : (end + pad_ms) * per_ms]
        for start, end in korean_call.spans_ms
    ]
    by_turn = [offline(reference_engine, pcm) for pcm in turns]
    assert len(set(map(tuple, by_turn))) == len(turns)  # the turns are told apart
    calls = [turns[i % len(turns)] for i in range(20)]
    expected = [by_turn[i % len(turns)] for i in range(20)]

    def run(pcm: bytes) -> list[str]:
        return [f["text"] for f in stream(vosk_server.url, pcm, chunk_ms=200)[0]]

    with ThreadPoolExecutor(max_workers=20) as pool:
        got = list(pool.map(run, calls))
    assert got == expected


def test_session_state_and_transcript(vosk_server: DecoderServer, korean_call: SpokenCall) -> None:
    session = opened(vosk_server.url, user_id="agent-7", metadata={"queue": "billing"})
    for chunk in split_chunks(korean_call.pcm, 200):
        session.send(chunk)
    state = session.request("GET", session.path)
    assert state["state"] == "open"
    assert state["user_id"] == "agent-7"
    assert state["audio_ms"] == korean_call.duration_ms
    ended = session.end()
    assert ended["transcript"] == " ".join(f["text"] for f in session.request("GET", session.path)["finals"])
    session.request("DELETE", session.path, expected=204)
    session.request("GET", session.path, expected=404)
    session.close()


def test_transcribe_a_whole_file(
    vosk_server: DecoderServer, reference_engine: ReferenceEngine, tmp_path: Path
) -> None:
    from tests.test_decoder_api.test_cli import write_wav

    pcm = b"".join(iter_chunks(b"", 1)) or _korean_pcm(tmp_path)
    wav = write_wav(tmp_path / "call.wav", pcm).read_bytes()
    response = requests.post(
        f"{vosk_server.url}/v1/transcribe", data=wav, headers={"Content-Type": "audio/wav"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [u["text"] for u in body["utterances"]] == offline(reference_engine, pcm)
    assert body["text"] == " ".join(offline(reference_engine, pcm))


def _korean_pcm(tmp_path: Path) -> bytes:
    from tests.conftest import espeak

    return espeak("안녕하세요 감사합니다", "ko", tmp_path)


ERRORS = [
    # (method, path suffix, kwargs, status, code)
    (
        "post",
        "/v1/sessions",
        {"data": "not json", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_request",
    ),
    ("post", "/v1/sessions", {"json": ["a list"]}, 400, "invalid_request"),
    ("post", "/v1/sessions", {"json": {"model": "/etc/passwd"}}, 400, "invalid_request"),
    ("post", "/v1/sessions", {"json": {"broker": "evil:9092"}}, 400, "invalid_request"),
    ("post", "/v1/sessions", {"json": {"sample_rate": "fast"}}, 400, "invalid_request"),
    ("post", "/v1/sessions", {"json": {"sample_rate": 96000}}, 422, "unsupported_sample_rate"),
    (
        "post",
        "/v1/sessions",
        {"data": "x=1", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("post", "/v1/sessions/nope/audio", {"data": b"\0\0", "headers": PCM}, 404, "session_not_found"),
    ("get", "/v1/sessions/nope", {}, 404, "session_not_found"),
    (
        "post",
        "/v1/transcribe",
        {"data": b"garbage" * 50, "headers": {"Content-Type": "audio/wav"}},
        415,
        "unsupported_audio",
    ),
    ("post", "/v1/transcribe", {"data": b"", "headers": {"Content-Type": "audio/wav"}}, 400, "empty_audio"),
    (
        "post",
        "/v1/transcribe",
        {"data": b"x", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("get", "/v1/nothing-here", {}, 404, "not_found"),
    ("put", "/v1/sessions", {}, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), ERRORS)
def test_client_mistakes_are_documented_4xx(
    vosk_server: DecoderServer, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = requests.request(method, f"{vosk_server.url}{path}", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]


@pytest.fixture
def open_session(vosk_server: DecoderServer) -> Iterator[tuple[str, str]]:
    session = opened(vosk_server.url)
    yield session.session_id, session.token
    requests.delete(f"{vosk_server.url}{session.path}", headers={"X-Session-Token": session.token})
    session.close()


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Content-Type": "application/octet-stream"}, b"\0\0\0", 400, "invalid_audio"),
        ({"Content-Type": "application/octet-stream"}, b"", 400, "empty_audio"),
        ({"Content-Type": "audio/L16; rate=8000"}, b"\0\0", 422, "unsupported_sample_rate"),
        ({"Content-Type": "audio/wav"}, b"\0\0", 415, "unsupported_media_type"),
        ({"Content-Type": "application/octet-stream", "X-Session-Token": "wrong"}, b"\0\0", 403, "forbidden"),
    ],
)
def test_audio_mistakes(
    vosk_server: DecoderServer,
    open_session: tuple[str, str],
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    sid, token = open_session
    headers = {"X-Session-Token": token, **headers}
    response = requests.post(
        f"{vosk_server.url}/v1/sessions/{sid}/audio", data=body, headers=headers, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_a_session_needs_its_token(vosk_server: DecoderServer, open_session: tuple[str, str]) -> None:
    sid, token = open_session
    url = f"{vosk_server.url}/v1/sessions/{sid}"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"X-Session-Token": "x" * 43}, timeout=10).status_code == 403
    other = opened(vosk_server.url)
    assert requests.get(url, headers={"X-Session-Token": other.token}, timeout=10).status_code == 403
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    assert requests.get(f"{url}?token={token}", timeout=10).status_code == 200
    other.request("DELETE", other.path, expected=204)
    other.close()


def test_audio_after_end_is_a_conflict(vosk_server: DecoderServer, open_session: tuple[str, str]) -> None:
    sid, token = open_session
    headers = {"X-Session-Token": token}
    assert requests.post(f"{vosk_server.url}/v1/sessions/{sid}/end", headers=headers).status_code == 200
    late = requests.post(
        f"{vosk_server.url}/v1/sessions/{sid}/audio", data=b"\0\0", headers={**headers, **PCM}
    )
    assert late.status_code == 409
    assert late.json()["error"] == "session_ended"


def test_health_readiness_and_metrics(vosk_server: DecoderServer) -> None:
    assert requests.get(f"{vosk_server.url}/healthz").json() == {"status": "ok"}
    assert requests.get(f"{vosk_server.url}/readyz").json()["status"] == "ready"
    text = requests.get(f"{vosk_server.url}/metrics").text
    for name in (
        "decoder_active_sessions",
        "decoder_sessions_total",
        "decoder_audio_seconds_total",
        "decoder_decode_seconds_bucket",
        "decoder_real_time_factor",
        "decoder_partial_latency_seconds_bucket",
        "decoder_http_responses_total",
    ):
        assert name in text


def test_partial_latency_runs_from_arrival_and_decode_time_is_the_recognizers(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    """``decoder_decode_seconds`` is the recognizer's time (its session's lock held);
    ``decoder_partial_latency_seconds`` runs from a chunk's arrival (its request, or its frame) to
    its partial, so for every chunk, over HTTP v1 and the WebSocket alike, it is the longer."""
    names = [f"decoder_{m}_seconds_{s}" for m in ("decode", "partial_latency") for s in ("count", "sum")]
    before = {name: metric(vosk_server.url, name) for name in names}
    pcm = korean_call.pcm[: 2 * RATE_HZ * 2]  # 2 s: ten 200 ms chunks
    stream(vosk_server.url, pcm)
    stream_audio(VoskStream(f"{vosk_server.ws_url}/v1/stream", {"sample_rate": RATE_HZ}), pcm)
    got = {name: metric(vosk_server.url, name) - before[name] for name in names}
    assert got["decoder_decode_seconds_count"] == got["decoder_partial_latency_seconds_count"] == 20
    assert got["decoder_partial_latency_seconds_sum"] > got["decoder_decode_seconds_sum"] > 0


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    server = start_decoder(
        tmp_path_factory.mktemp("limited"),
        engine="vosk",
        model="ko",
        max_sessions="3",
        session_idle_s="1",
        reap_interval_s="0.2",
        max_body_bytes="65536",
    )
    yield server
    server.stop()


def test_capacity_limit_answers_503_with_retry_after(limited_server: DecoderServer) -> None:
    sessions = [opened(limited_server.url) for _ in range(3)]
    full = requests.post(f"{limited_server.url}/v1/sessions", json={})
    assert full.status_code == 503
    assert full.json()["error"] == "capacity"
    assert int(full.headers["Retry-After"]) > 0
    for session in sessions:
        session.request("DELETE", session.path, expected=204)
        session.close()
    assert requests.post(f"{limited_server.url}/v1/sessions", json={}).status_code == 201


def test_oversized_body_is_413(limited_server: DecoderServer) -> None:
    session = opened(limited_server.url)
    response = requests.post(
        f"{limited_server.url}{session.path}/audio",
        data=b"\0" * 70000,
        headers={**PCM, "X-Session-Token": session.token},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "request_entity_too_large"


def test_idle_sessions_expire_and_free_their_recognizer(
    limited_server: DecoderServer, korean_call: SpokenCall
) -> None:
    session = opened(limited_server.url)
    session.send(korean_call.pcm[:32000])
    url, token = f"{limited_server.url}{session.path}", session.token
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and requests.get(url, headers={"X-Session-Token": token}).status_code == 200
    ):
        time.sleep(0.2)
    expired = requests.get(url, headers={"X-Session-Token": token})
    assert expired.status_code == 404
    assert expired.json()["error"] == "session_expired"
    assert metric(limited_server.url, "decoder_active_sessions") == 0
    assert metric(limited_server.url, 'decoder_sessions_total{event="expired"}') >= 1


def test_memory_returns_to_baseline_after_many_short_sessions(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    speech = korean_call.pcm[: 2 * RATE_HZ * 2]

    def short_call() -> None:
        stream(vosk_server.url, speech, chunk_ms=500)

    for _ in range(20):
        short_call()
    warm = worker_rss_kib(vosk_server)
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: short_call(), range(150)))
    after = worker_rss_kib(vosk_server)
    assert after <= warm * 1.10, (warm, after)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text("# team keys\nfile-key-1\n")
    server = start_decoder(
        tmp_path_factory.mktemp("keyed"),
        engine="vosk",
        model="ko",
        api_keys="env-key-1,env-key-2",
        api_keys_file=str(keys),
    )
    yield server
    server.stop()


def test_api_keys_guard_every_route_but_operations(keyed_server: DecoderServer) -> None:
    base = keyed_server.url
    assert requests.post(f"{base}/v1/sessions", json={}).status_code == 401
    assert (
        requests.post(f"{base}/v1/sessions", json={}, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(f"{base}{path}").status_code == 200
    owner = opened(base, "env-key-1")
    url, token = f"{base}{owner.path}", owner.token
    assert requests.get(url, headers={"Authorization": "Bearer env-key-1"}).status_code == 200
    assert requests.get(url, headers={"Authorization": "Bearer env-key-2"}).status_code == 403
    other = {"Authorization": "Bearer env-key-2", "X-Session-Token": token}
    assert requests.get(url, headers=other).status_code == 200
    assert requests.get(url, headers={"X-Session-Token": token}).status_code == 401
    opened(base, "file-key-1").close()
    owner.close()


def test_numbered_chunks_are_decoded_exactly_once(
    vosk_server: DecoderServer, korean_call: SpokenCall
) -> None:
    session = opened(vosk_server.url)
    url, token = f"{vosk_server.url}{session.path}/audio", session.token
    chunks = list(iter_chunks(korean_call.pcm[: RATE_HZ * 2 * 3], chunk_bytes(RATE_HZ, 200)))

    def send(seq: int) -> requests.Response:
        headers = {**PCM, "X-Session-Token": token, "X-Chunk-Seq": str(seq)}
        return requests.post(url, data=chunks[seq], headers=headers, timeout=30)

    replies = [send(0).json(), send(1).json()]
    assert send(1).json() == replies[1]
    gap = send(3)
    assert gap.status_code == 409
    assert gap.json()["error"] == "chunk_out_of_order"
    assert gap.json()["expected"] == 2
    for seq in range(2, len(chunks)):
        assert send(seq).status_code == 200
    assert session.end()["audio_ms"] == 3000
    bad = requests.post(url, data=b"\0\0", headers={**PCM, "X-Session-Token": token, "X-Chunk-Seq": "-1"})
    assert bad.status_code in (400, 409)


def test_bad_query_flag_is_400(vosk_server: DecoderServer) -> None:
    response = requests.post(
        f"{vosk_server.url}/v1/transcribe?words=maybe", data=b"RIFF", headers={"Content-Type": "audio/wav"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
