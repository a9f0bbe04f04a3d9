"""The seed-compatible ``POST /decode``, sent as the original recorder sent it, against a real server."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import numpy as np
import pytest
import requests

from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.engines.base import Engine, RecognizerOptions
from decoder_api.engines.vosk import VoskEngine
from decoder_api.http.routes.compat import CompatStreams
from decoder_api.metrics import DecoderMetrics
from decoder_api.sessions.session import SessionConfig, SessionLimits
from decoder_api.sessions.store import SessionStore
from devtools.processes import DecoderServer, start_decoder
from tests.conftest import RATE_HZ, SpokenCall
from tests.reference import ReferenceEngine

CHUNK_MS = 200
CHUNK = chunk_bytes(RATE_HZ, CHUNK_MS)


@dataclass(frozen=True)
class Piece:
    """One request of the recording and its answer."""

    end_ms: int
    finalize: bool
    hstr: str
    confidence: float


def seed_body(pcm: bytes, stream_id: str, finalize: bool) -> dict[str, Any]:
    """The body exactly as the original recorder built it (its Kafka routing included)."""
    return {
        "audio": np.frombuffer(pcm, dtype="<i2").tolist(),
        "sample_rate": RATE_HZ,
        "do_finalize": finalize,
        "id": stream_id,
        "broker": "kafka-0.seed.invalid:9092",
        "topic": "seed-transcripts",
    }


def decode(server: DecoderServer, body: Any, **options: Any) -> requests.Response:
    return requests.post(f"{server.url}/decode", json=body, timeout=30, **options)


def finalize_points(call: SpokenCall) -> list[bool]:
    """``do_finalize`` on the piece in which each turn ends."""
    pieces = -(-len(call.pcm) // CHUNK)
    ends = {min(end // CHUNK_MS, pieces - 1) for _, end in call.spans_ms}
    return [i in ends for i in range(pieces)]


def record(server: DecoderServer, call: SpokenCall, stream_id: str) -> list[Piece]:
    pieces = []
    for i, (chunk, finalize) in enumerate(
        zip(iter_chunks(call.pcm, CHUNK), finalize_points(call), strict=True)
    ):
        response = decode(server, seed_body(chunk, stream_id, finalize))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"hstr", "confidence"}
        pieces.append(Piece((i + 1) * CHUNK_MS, finalize, answer["hstr"], answer["confidence"]))
    return pieces


def expected_answers(engine: Engine, call: SpokenCall) -> list[tuple[str, float]]:
    """The same recording through one recognizer of ``engine`` (the ``reference_engine``, on the
    server's allocator), flushed where the recorder finalises."""
    recognizer = engine.create(RecognizerOptions(RATE_HZ, words=True))
    answers = []
    for chunk, finalize in zip(iter_chunks(call.pcm, CHUNK), finalize_points(call), strict=True):
        finals = recognizer.accept(chunk) + (recognizer.flush() if finalize else [])
        words = [w.conf for f in finals for w in f.words or ()]
        if finals:
            answers.append((" ".join(f.text for f in finals), fmean(words) if words else 0.0))
        else:
            answers.append(("" if finalize else recognizer.partial(), 0.0))
    return answers


def opened_sessions(server: DecoderServer) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(r'^decoder_sessions_total\{event="opened"\} (\S+)$', text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def recording(vosk_server: DecoderServer, korean_call: SpokenCall) -> tuple[list[Piece], float]:
    """The Korean call recorded through /decode, and how many sessions that opened."""
    before = opened_sessions(vosk_server)
    pieces = record(vosk_server, korean_call, "seed-call-1")
    return pieces, opened_sessions(vosk_server) - before


def utterances(pieces: list[Piece]) -> list[list[Piece]]:
    """The recording split after each finalising request."""
    groups: list[list[Piece]] = [[]]
    for piece in pieces:
        groups[-1].append(piece)
        if piece.finalize:
            groups.append([])
    return [g for g in groups if g]


def test_hstr_grows_within_an_utterance_and_finalize_returns_its_text(
    recording: tuple[list[Piece], float], korean_call: SpokenCall
) -> None:
    pieces, _ = recording
    turns = [u for u in utterances(pieces) if u[-1].finalize]
    assert len(turns) == len(korean_call.turns)
    for turn in turns:
        *open_, finalized = turn
        partials = [p.hstr for p in open_ if p.hstr]
        assert len(set(partials)) >= 2, partials
        assert len(partials[-1].split()) >= len(partials[0].split())
        assert all(p.confidence == 0.0 for p in open_)
        assert finalized.hstr and 0 < finalized.confidence <= 1


def test_the_next_utterance_starts_fresh(recording: tuple[list[Piece], float]) -> None:
    pieces, _ = recording
    groups = utterances(pieces)
    for finished, following in itertools.pairwise(groups):
        assert following[0].hstr == ""  # the pause after the turn
        spoken = [p.hstr for p in following if p.hstr]
        assert not any(h.startswith(finished[-1].hstr) for h in spoken)


def test_answers_match_one_recognizer_flushed_at_the_same_points(
    recording: tuple[list[Piece], float], reference_engine: ReferenceEngine, korean_call: SpokenCall
) -> None:
    pieces, _ = recording
    expected = expected_answers(reference_engine, korean_call)
    assert [p.hstr for p in pieces] == [hstr for hstr, _ in expected]
    # Texts are reproducible to the letter; Kaldi's word confidences only to a few hundredths
    # once the server's recognizers have decoded other streams before this one.
    assert [p.confidence for p in pieces] == pytest.approx([c for _, c in expected], abs=0.05)


def test_one_session_serves_the_whole_stream(recording: tuple[list[Piece], float]) -> None:
    _, opened = recording
    assert opened == 1


def test_routing_keys_are_ignored_and_logged_once(
    recording: tuple[list[Piece], float], vosk_server: DecoderServer
) -> None:
    assert vosk_server.log.read_text().count("decode_routing_ignored") == 1


def test_a_finalize_only_request_with_no_audio(vosk_server: DecoderServer) -> None:
    response = decode(vosk_server, seed_body(b"", "seed-empty", finalize=True))
    assert response.json() == {"hstr": "", "confidence": 0.0}


VALID = {"audio": [0, 1, -1], "sample_rate": RATE_HZ, "do_finalize": False, "id": "seed-bad"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {k: v for k, v in VALID.items() if k != "audio"},
        {k: v for k, v in VALID.items() if k != "sample_rate"},
        {k: v for k, v in VALID.items() if k != "id"},
        {**VALID, "audio": "AAEC"},
        {**VALID, "audio": None},
        {**VALID, "audio": [0.5]},
        {**VALID, "audio": [40000]},
        {**VALID, "audio": [-32769]},
        {**VALID, "audio": [True]},
        {**VALID, "audio": ["1"]},
        {**VALID, "audio": [[1]]},
        {**VALID, "sample_rate": "16000"},
        {**VALID, "sample_rate": 16000.5},
        {**VALID, "do_finalize": "yes"},
        {**VALID, "id": 7},
        {**VALID, "id": ""},
        {**VALID, "broker": 9092},
        {**VALID, "language": "ko"},
        [VALID],
        "garbage",
    ],
)
def test_malformed_bodies_are_400_json(vosk_server: DecoderServer, body: Any) -> None:
    response = decode(vosk_server, body)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == "invalid_request" and response.json()["message"]


@pytest.mark.parametrize(
    "data", [b"not json at all", b"", b'{"audio": [1, 2', '{"id": "\u00e9"'.encode("latin-1")]
)
def test_unparsable_bodies_are_400_json(vosk_server: DecoderServer, data: bytes) -> None:
    response = requests.post(
        f"{vosk_server.url}/decode", data=data, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_sample_rates_the_stream_or_model_cannot_take_are_422(vosk_server: DecoderServer) -> None:
    assert decode(vosk_server, {**VALID, "id": "seed-rate"}).status_code == 200
    switched = decode(vosk_server, {**VALID, "id": "seed-rate", "sample_rate": 8000})
    assert switched.status_code == 422
    assert switched.json()["error"] == "unsupported_sample_rate"
    unsupported = decode(vosk_server, {**VALID, "id": "seed-rate-100", "sample_rate": 100})
    assert unsupported.status_code == 422


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    server = start_decoder(
        tmp_path_factory.mktemp("keyed-decode"), engine="vosk", model="ko", api_keys="seed-key-a,seed-key-b"
    )
    yield server
    server.stop()


def test_api_keys_guard_decode_and_separate_the_callers_ids(
    keyed_server: DecoderServer, korean_call: SpokenCall
) -> None:
    speech = korean_call.pcm[: (korean_call.spans_ms[0][1] // CHUNK_MS) * CHUNK]
    body = seed_body(speech, "shared-id", finalize=False)
    assert decode(keyed_server, body).status_code == 401
    assert (
        decode(keyed_server, body, headers={"Authorization": "Bearer nope"}).json()["error"] == "unauthorized"
    )
    first = decode(keyed_server, body, headers={"Authorization": "Bearer seed-key-a"})
    assert first.status_code == 200 and first.json()["hstr"]
    silence = seed_body(b"\0\0" * 3200, "shared-id", finalize=True)
    other = decode(keyed_server, silence, headers={"Authorization": "Bearer seed-key-b"})
    assert other.json() == {"hstr": "", "confidence": 0.0}  # key b's "shared-id" is its own stream


def test_the_id_map_is_bounded_and_forgets_ended_sessions(vosk_engine: VoskEngine) -> None:
    store = SessionStore(vosk_engine.create, SessionLimits(max_sessions=10), DecoderMetrics())
    streams = CompatStreams(store, max_ids=2)
    config = SessionConfig(RATE_HZ)
    a = streams.session_for("a", None, config)
    assert streams.session_for("a", None, config) is a
    assert streams.session_for("a", "other-key", config) is not a
    store.delete(a)
    assert streams.session_for("a", None, config) is not a  # a gone session is forgotten, not reused
    for stream_id in ("b", "c", "d"):
        streams.session_for(stream_id, None, config)
    assert len(streams) == 2
    d = streams.session_for("d", None, config)
    with d.locked():
        d.feed(b"\0\0" * RATE_HZ)
        d.finalize()
    assert streams.session_for("d", None, config) is d  # finalising keeps the stream's session
    store.close()
