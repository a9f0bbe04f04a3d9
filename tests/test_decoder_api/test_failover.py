"""Sessions across instances: a real Redis registry and two real decoder processes."""

from __future__ import annotations

import dataclasses
import math
import secrets
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from decoder_api.audio import chunk_bytes, iter_chunks
from decoder_api.engines.base import Engine, RecognizerOptions
from decoder_api.sessions.channels import StereoRecognizer
from decoder_api.sessions.registry import RedisRegistry, SessionRecord
from decoder_api.sessions.session import SessionConfig, config_to_dict, hash_secret
from decoder_api.sessions.transcripts import stream_pcm
from devtools.processes import DecoderServer, RedisServer, start_decoder, start_redis
from tests.conftest import RATE_HZ, SpokenCall, split_turns
from tests.kafka import (
    ConsumerFactory,
    TopicFactory,
    consume_until,
    event_value,
    produce_fence,
    session_messages,
)
from tests.reference import ReferenceEngine

PCM = {"Content-Type": "application/octet-stream"}
SPEAKERS = ("agent", "customer")
HEARTBEAT_TTL_S = "1.5"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    server.stop()


def instance(
    tmp_path: Path, redis_server: RedisServer, name: str, env: Mapping[str, str] | None = None, **extra: str
) -> DecoderServer:
    return start_decoder(
        tmp_path,
        env,
        engine="vosk",
        model="ko",
        redis_url=redis_server.url,
        instance_id=name,
        registry_heartbeat_ttl_s=HEARTBEAT_TTL_S,
        pool_warm="1",
        **extra,
    )


@pytest.fixture
def pair(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[DecoderServer, DecoderServer]]:
    first, second = instance(tmp_path, redis_server, "a"), instance(tmp_path, redis_server, "b")
    yield first, second
    first.stop(signal.SIGKILL)
    second.stop()


class Caller:
    """A client that numbers its chunks and moves to another instance when its own is gone."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.http = requests.Session()
        self.sid = self.token = ""
        self.finals: list[dict[str, Any]] = []
        self.wrong_instance = 0
        self.retry_after_s: list[int] = []  # the Retry-After of every wrong_instance

    def open(self, **options: Any) -> None:
        options = {"words": True} | options
        body = self.http.post(f"{self.urls[0]}/v1/sessions", json=options, timeout=30).json()
        self.sid, self.token = body["session_id"], body["token"]

    def send(self, seq: int, chunk: bytes) -> dict[str, Any]:
        headers = {**PCM, "X-Session-Token": self.token, "X-Chunk-Seq": str(seq)}
        return self._call("post", f"/v1/sessions/{self.sid}/audio", data=chunk, headers=headers)

    def end(self) -> dict[str, Any]:
        return self._call("post", f"/v1/sessions/{self.sid}/end", headers={"X-Session-Token": self.token})

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = self.http.request(method, f"{self.urls[0]}{path}", timeout=30, **kwargs)
            except requests.ConnectionError:
                self.urls = self.urls[1:] + self.urls[:1]
                continue
            if response.status_code == 409 and response.json()["error"] == "wrong_instance":
                self.wrong_instance += 1
                self.retry_after_s.append(int(response.headers["Retry-After"]))
                time.sleep(0.2)
                continue
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            self.finals += body["finals"]
            return body
        raise TimeoutError(path)


def uninterrupted(engine: Engine, pcm: bytes) -> list[str]:
    """The finals of ``pcm`` through one recognizer of ``engine``: for a served call, the
    ``reference_engine`` (on the servers' allocator)."""
    return [
        f.text for f in stream_pcm(engine.create(RecognizerOptions(RATE_HZ, words=True)), pcm, 200).finals
    ]


def chunks_of(call: SpokenCall) -> list[bytes]:
    return list(iter_chunks(call.pcm, chunk_bytes(RATE_HZ, 200)))


@pytest.mark.parametrize("cut_fraction", [0.3, 0.62])
def test_takeover_after_sigkill_reproduces_the_call(
    pair: tuple[DecoderServer, DecoderServer],
    reference_engine: ReferenceEngine,
    korean_call: SpokenCall,
    cut_fraction: float,
) -> None:
    owner, successor = pair
    caller = Caller([owner.url, successor.url])
    caller.open()
    chunks = chunks_of(korean_call)
    cut = int(len(chunks) * cut_fraction)
    for seq, chunk in enumerate(chunks[:cut]):
        caller.send(seq, chunk)
    owner.stop(signal.SIGKILL)
    for seq, chunk in enumerate(chunks[cut:], start=cut):
        caller.send(seq, chunk)
    ended = caller.end()
    expected = uninterrupted(reference_engine, korean_call.pcm)
    assert [f["text"] for f in caller.finals] == expected
    assert [f["utterance"] for f in caller.finals] == list(range(len(expected)))
    assert ended["transcript"] == " ".join(expected)
    # Refusals while the dead owner's heartbeat lasts say when it lapses (never later than its TTL).
    longest = math.ceil(float(HEARTBEAT_TTL_S))
    assert all(1 <= s <= longest for s in caller.retry_after_s), caller.retry_after_s


def test_takeover_of_a_stereo_call_reproduces_each_speaker_s_finals(
    pair: tuple[DecoderServer, DecoderServer], reference_engine: ReferenceEngine, korean_call: SpokenCall
) -> None:
    """Killed mid-call while one channel's utterance is open: each channel is replayed from its own
    restart point, so the takeover gives exactly the uninterrupted stereo decode."""
    owner, successor = pair
    stereo = split_turns(korean_call)
    options = RecognizerOptions(RATE_HZ, words=True)
    reference = StereoRecognizer(
        [reference_engine.create(options), reference_engine.create(options)], SPEAKERS
    )
    chunks = list(iter_chunks(stereo, chunk_bytes(RATE_HZ, 200) * 2))  # 200 ms of stereo frames
    decoded = [f for chunk in chunks for f in reference.accept(chunk)] + reference.flush()
    expected = [(f.text, f.channel, f.speaker) for f in decoded]
    assert {channel for _, channel, _ in expected} == {0, 1}
    caller = Caller([owner.url, successor.url])
    caller.open(channels=2, speakers=list(SPEAKERS))
    cut = int(len(chunks) * 0.55)
    for seq, chunk in enumerate(chunks[:cut]):
        caller.send(seq, chunk)
    owner.stop(signal.SIGKILL)
    for seq, chunk in enumerate(chunks[cut:], start=cut):
        caller.send(seq, chunk)
    caller.end()
    assert [(f["text"], f["channel"], f["speaker"]) for f in caller.finals] == expected
    assert [f["utterance"] for f in caller.finals] == list(range(len(expected)))


def test_draining_owner_hands_its_calls_over(
    pair: tuple[DecoderServer, DecoderServer], reference_engine: ReferenceEngine, korean_call: SpokenCall
) -> None:
    owner, successor = pair
    caller = Caller([owner.url, successor.url])
    caller.open()
    chunks = chunks_of(korean_call)
    cut = len(chunks) // 2
    for seq, chunk in enumerate(chunks[:cut]):
        caller.send(seq, chunk)
    assert owner.stop(signal.SIGTERM) == 0
    for seq, chunk in enumerate(chunks[cut:], start=cut):
        caller.send(seq, chunk)
    caller.end()
    assert [f["text"] for f in caller.finals] == uninterrupted(reference_engine, korean_call.pcm)
    assert caller.wrong_instance == 0


def test_wrong_instance_while_the_owner_lives(
    pair: tuple[DecoderServer, DecoderServer], korean_call: SpokenCall
) -> None:
    owner, other = pair
    caller = Caller([owner.url])
    caller.open()
    caller.send(0, chunks_of(korean_call)[0])
    headers = {**PCM, "X-Session-Token": caller.token, "X-Chunk-Seq": "1"}
    response = requests.post(
        f"{other.url}/v1/sessions/{caller.sid}/audio", data=b"\0\0" * 100, headers=headers
    )
    assert response.status_code == 409
    assert response.json() == {
        "error": "wrong_instance",
        "message": "another instance owns this session",
        "owner": "a",
    }
    state = requests.get(f"{other.url}/v1/sessions/{caller.sid}", headers={"X-Session-Token": caller.token})
    assert state.status_code == 200
    assert state.json()["owner"] == "a"
    assert state.json()["audio_ms"] == 200
    forbidden = requests.get(f"{other.url}/v1/sessions/{caller.sid}", headers={"X-Session-Token": "nope"})
    assert forbidden.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("post", "audio", b"\0\0" * 1600), ("post", "end", b""), ("delete", "", b"")],
)
def test_a_wrong_token_never_moves_a_call_whose_owner_died(
    pair: tuple[DecoderServer, DecoderServer],
    redis_server: RedisServer,
    korean_call: SpokenCall,
    method: str,
    path: str,
    body: bytes,
) -> None:
    owner, other = pair
    caller = Caller([owner.url])
    caller.open()
    for seq, chunk in enumerate(chunks_of(korean_call)[:5]):
        caller.send(seq, chunk)
    owner.stop(signal.SIGKILL)
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: not client.exists("decoder:instance:a"), 10)  # free to be taken over now
    key = f"decoder:session:{caller.sid}"
    before = client.hgetall(key), client.lrange(f"{key}:tail", 0, -1)
    url = f"{other.url}/v1/sessions/{caller.sid}" + (f"/{path}" if path else "")
    for token in ("nope", None):
        headers = {**PCM, "X-Chunk-Seq": "5"} | ({"X-Session-Token": token} if token else {})
        response = requests.request(method, url, data=body, headers=headers, timeout=30)
        assert response.status_code == (403 if token else 401), response.text
        assert response.json()["error"] in {"forbidden", "unauthorized"}
    after = client.hgetall(key), client.lrange(f"{key}:tail", 0, -1)
    assert after == before  # still the dead owner's, its audio untouched
    assert after[0][b"owner"] == b"a"
    caller.urls = [other.url]
    caller.send(5, chunks_of(korean_call)[5])  # the call's own client moves it
    assert client.hget(key, "owner") == b"b"


def abandoned_call(registry: RedisRegistry, allocator: str, graph: str) -> tuple[str, str]:
    """A call written into the registry as its owner, ``registry.instance_id``, left it: owned by an
    instance without a heartbeat, on ``allocator`` and ``graph``, nothing decoded yet. Its id and token."""
    session_id, token = uuid.uuid4().hex, secrets.token_urlsafe(16)
    config = config_to_dict(SessionConfig(words=True))
    record = SessionRecord(
        session_id, registry.instance_id, config, hash_secret(token), None, 0, 0, 0, 0, (), ()
    )
    registry.save(dataclasses.replace(record, allocator=allocator, graph=graph))
    return session_id, token


def test_a_takeover_from_an_instance_on_another_allocator_or_graph_is_logged_and_counted(
    tmp_path: Path, redis_server: RedisServer, korean_call: SpokenCall
) -> None:
    """Every instance of a deployment should run one allocator and search one decoding graph
    (decodes are reproducible under one, not across them). A call whose dead owner recorded another
    allocator, or another graph, is still taken over, with a warning naming both and
    ``decoder_allocator_mismatch_takeovers_total`` or ``decoder_graph_mismatch_takeovers_total``;
    one from an owner like the successor is not counted. The claim records the new owner's."""
    successor = instance(tmp_path, redis_server, "successor")
    registry = RedisRegistry(redis_server.url, "gone", 5.0, 60.0)  # never started: no heartbeat
    try:
        ready = successor.readyz()[1]
        mine, graph = ready["allocator"], ready["graph"]
        other = "glibc" if mine != "glibc" else "jemalloc"
        other_graph = {"static": "lookahead", "lookahead": "static"}[graph]  # the Korean model has both
        owners = {"allocator": (other, graph), "graph": (mine, other_graph), "same": (mine, graph)}
        calls = {kind: abandoned_call(registry, *decoding) for kind, decoding in owners.items()}
        for session_id, token in calls.values():
            caller = Caller([successor.url])
            caller.sid, caller.token = session_id, token
            caller.send(0, chunks_of(korean_call)[0])
        assert successor.metric("decoder_allocator_mismatch_takeovers_total") == 1
        assert successor.metric("decoder_graph_mismatch_takeovers_total") == 1
        log = successor.tail(100_000).splitlines()
        warnings = [line for line in log if "allocator_mismatch" in line]
        assert len(warnings) == 1, warnings
        expected = f"session_id={calls['allocator'][0]} from=gone from_allocator={other} allocator={mine}"
        assert expected in warnings[0]
        warnings = [line for line in log if "graph_mismatch" in line]
        assert len(warnings) == 1, warnings
        expected = f"session_id={calls['graph'][0]} from=gone from_graph={other_graph} graph={graph}"
        assert expected in warnings[0]
        for session_id, _ in calls.values():
            record = registry.load(session_id)
            assert record is not None
            assert (record.owner, record.allocator, record.graph) == ("successor", mine, graph)
    finally:
        registry.close()
        successor.stop()


def test_redis_stopped_and_restarted_during_a_call(
    tmp_path: Path, redis_server: RedisServer, reference_engine: ReferenceEngine, korean_call: SpokenCall
) -> None:
    owner = instance(tmp_path, redis_server, "solo")
    try:
        caller = Caller([owner.url])
        caller.open()
        chunks = chunks_of(korean_call)
        third = len(chunks) // 3
        for seq, chunk in enumerate(chunks[:third]):
            caller.send(seq, chunk)
        redis_server.stop()
        for seq, chunk in enumerate(chunks[third : 2 * third], start=third):
            caller.send(seq, chunk)
        ready = requests.get(f"{owner.url}/readyz").json()
        assert ready["status"] == "ready"
        assert ready["checks"]["registry"] == "unavailable"
        redis_server.start()
        client = redis.Redis.from_url(redis_server.url)
        wait_for(lambda: client.exists(f"decoder:session:{caller.sid}") == 1)
        for seq, chunk in enumerate(chunks[2 * third :], start=2 * third):
            caller.send(seq, chunk)
        assert int(client.hget(f"decoder:session:{caller.sid}", "next_seq") or 0) == len(chunks)
        assert requests.get(f"{owner.url}/readyz").json()["checks"]["registry"] == "ok"
        caller.end()
        assert [f["text"] for f in caller.finals] == uninterrupted(reference_engine, korean_call.pcm)
    finally:
        owner.stop()


def test_expired_sessions_leave_no_keys_behind(
    tmp_path: Path, redis_server: RedisServer, korean_call: SpokenCall
) -> None:
    owner = instance(
        tmp_path, redis_server, "expiry", session_idle_s="1", reap_interval_s="0.2", max_sessions="100"
    )
    try:
        client = redis.Redis.from_url(redis_server.url)
        seen = 0
        for _ in range(100):
            caller = Caller([owner.url])
            caller.open()
            caller.send(0, korean_call.pcm[:3200])
            seen += client.exists(f"decoder:session:{caller.sid}")
        assert seen == 100
        wait_for(lambda: not client.keys("decoder:session:*"), timeout_s=60)
        assert client.scard("decoder:sessions") == 0
    finally:
        owner.stop()


def wait_for(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met")


def test_takeover_publishes_every_final_once(
    tmp_path: Path,
    redis_server: RedisServer,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_factory: ConsumerFactory,
    reference_engine: ReferenceEngine,
    korean_call: SpokenCall,
) -> None:
    topic = topic_factory("transcripts", 1)
    kafka = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    owner = instance(tmp_path, redis_server, "k1", kafka, outbox_name="k1")
    successor = instance(tmp_path, redis_server, "k2", kafka, outbox_name="k2")
    try:
        caller = Caller([owner.url, successor.url])
        caller.open()
        chunks = chunks_of(korean_call)
        cut = int(len(chunks) * 0.55)
        for seq, chunk in enumerate(chunks[:cut]):
            caller.send(seq, chunk)
        wait_for(lambda: kafka_metric(owner, "decoder_kafka_queued") == 0)
        owner.stop(signal.SIGKILL)
        for seq, chunk in enumerate(chunks[cut:], start=cut):
            caller.send(seq, chunk)
        caller.end()
        fence = produce_fence(kafka_bootstrap, topic, caller.sid.encode())
        messages = consume_until(consumer_factory(topic), lambda ms: any(m.value() == fence for m in ms))
        values = [event_value(m) for m in session_messages(messages, caller.sid) if m.value() != fence]
        expected = uninterrupted(reference_engine, korean_call.pcm)
        assert [v["text"] for v in values] == expected
        assert len({v["event_id"] for v in values}) == len(values)
    finally:
        owner.stop(signal.SIGKILL)
        successor.stop()


def kafka_metric(server: DecoderServer, name: str) -> float | None:
    from tests.kafka import metric

    return metric(server, name)
