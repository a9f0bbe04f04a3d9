"""Clients that drive decoder sessions, for the benchmarks and the tests.

One synchronous API over two protocols: ``HttpSession`` speaks the native API (``/v1/sessions``),
``VoskStream`` the Vosk server protocol (our ``/v1/stream``, alphacep's vosk-server or any peer that
speaks it). Both ``open()``, ``send(pcm)`` (one reply per chunk), ``end()`` and ``close()``.
``stream_audio`` sends a recording through either in chunks, paced in real time or as fast as the
replies come, and times every reply; ``run_callers`` runs one thread per caller.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import websocket

RATE_HZ = 16000
CHUNK_MS = 200
TIMEOUT_S = 60.0
EOF = '{"eof" : 1}'  # byte for byte what vosk-server compares control messages with
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

__all__ = [
    "CHUNK_MS",
    "EOF",
    "RATE_HZ",
    "CallersRun",
    "ClientError",
    "HttpSession",
    "Session",
    "Timing",
    "VoskStream",
    "audio_seconds",
    "run_callers",
    "split_chunks",
    "stream_audio",
]


class ClientError(RuntimeError):
    """The server answered with an unexpected status or an error message."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.body = status, body


class Session(Protocol):
    """One call on one transport: open it, send chunks (each answered), end it, close it."""

    def open(self) -> Self: ...

    def send(self, pcm: bytes) -> dict[str, Any]: ...

    def end(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def audio_seconds(pcm: bytes, rate_hz: int = RATE_HZ) -> float:
    return len(pcm) / 2 / rate_hz


def split_chunks(pcm: bytes, chunk_ms: int = CHUNK_MS, rate_hz: int = RATE_HZ) -> list[bytes]:
    size = rate_hz * 2 * chunk_ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


class HttpSession:
    """A call over the native API on one keep-alive ``http.client`` connection (the lightest client
    the standard library has, so a client sharing the machine costs little CPU).

    ``options`` is the body of ``POST /v1/sessions``; ``finals`` collects the finals of every reply,
    ``partials`` each chunk's partial. ``delete`` also deletes the session after its end.
    """

    def __init__(
        self,
        base_url: str,
        options: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = TIMEOUT_S,
        delete: bool = False,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.options = dict(options) if options is not None else {"sample_rate": RATE_HZ, "words": True}
        self.headers = dict(headers or {})
        self.timeout_s, self.delete = timeout_s, delete
        self.session_id, self.token, self.seq = "", "", 0
        self.finals: list[dict[str, Any]] = []
        self.partials: list[str] = []
        self._conn: http.client.HTTPConnection | None = None

    @property
    def path(self) -> str:
        return f"/v1/sessions/{self.session_id}"

    def open(self) -> Self:
        self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        self._conn.connect()
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = json.dumps(self.options).encode()
        created = self.request("POST", "/v1/sessions", body, {"Content-Type": "application/json"}, 201)
        self.session_id, self.token = created["session_id"], created["token"]
        return self

    def send(self, pcm: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/octet-stream", "X-Chunk-Seq": str(self.seq)}
        self.seq += 1
        reply = self._collect(self.request("POST", f"{self.path}/audio", pcm, headers))
        self.partials.append(reply["partial"])
        return reply

    def end(self) -> dict[str, Any]:
        reply = self._collect(self.request("POST", f"{self.path}/end"))
        if self.delete:
            self.request("DELETE", self.path, expected=204)
        return reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        expected: int = 200,
    ) -> dict[str, Any]:
        """One request on the connection (with the session's token once opened); its JSON body."""
        assert self._conn is not None, "open() first"
        sent = self.headers | ({"X-Session-Token": self.token} if self.token else {}) | dict(headers or {})
        self._conn.request(method, path, body=body, headers=sent)
        response = self._conn.getresponse()
        data = response.read()
        reply: dict[str, Any] = json.loads(data) if data else {}
        if response.status != expected:
            raise ClientError(f"{method} {path}: {response.status} {data[:200]!r}", response.status, reply)
        return reply

    def _collect(self, reply: dict[str, Any]) -> dict[str, Any]:
        self.finals += reply.get("finals", [])
        return reply

    @property
    def texts(self) -> list[str]:
        return [f["text"] for f in self.finals if f["text"].strip()]


class VoskStream:
    """A stream over the Vosk server protocol: a config text frame (none when ``config`` is None), one
    binary frame per chunk answered by one JSON reply (``partial`` or a result), then ``EOF`` answered
    by the final result. Every reply is kept in ``replies``; an ``error`` reply raises ``ClientError``."""

    def __init__(
        self,
        url: str,
        config: Mapping[str, Any] | None = None,
        timeout_s: float = TIMEOUT_S,
        **connect_options: Any,
    ) -> None:
        self.url, self.config, self.timeout_s = url, config, timeout_s
        self.connect_options = connect_options
        self.replies: list[dict[str, Any]] = []
        self.ws: websocket.WebSocket | None = None

    def open(self) -> Self:
        self.ws = websocket.create_connection(
            self.url, timeout=self.timeout_s, sockopt=NODELAY, **self.connect_options
        )
        if self.config is not None:
            self.ws.send(json.dumps({"config": dict(self.config)}))
        return self

    def send(self, pcm: bytes) -> dict[str, Any]:
        assert self.ws is not None, "open() first"
        self.ws.send_binary(pcm)
        return self.reply()

    def end(self) -> dict[str, Any]:
        assert self.ws is not None, "open() first"
        self.ws.send(EOF)
        return self.reply()

    def reply(self) -> dict[str, Any]:
        """The next message, which must be a JSON object without ``error``."""
        assert self.ws is not None, "open() first"
        message = json.loads(self.ws.recv())
        if not isinstance(message, dict) or "error" in message:
            raise ClientError(f"{self.url}: {message}", body=message)
        self.replies.append(message)
        return message

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close(timeout=2)

    @property
    def partials(self) -> list[str]:
        return [r["partial"] for r in self.replies if "partial" in r]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if "text" in r]

    @property
    def texts(self) -> list[str]:
        return [f["text"] for f in self.finals if f["text"].strip()]


@dataclass(slots=True)
class Timing:
    """One session as its client saw it; seconds."""

    audio_s: float = 0.0
    open_s: float = 0.0  # connect and open the session
    first_reply_s: float = 0.0  # open_s + the first chunk's reply: what a new caller waits for
    latencies_s: list[float] = field(default_factory=list)  # each chunk: sent -> its reply
    end_lag_s: float = 0.0  # the last chunk's reply after that chunk was due (paced: behind real time)
    wall_s: float = 0.0  # from opening to the reply to the end of stream
    error: str | None = None


def stream_audio(session: Session, pcm: bytes, paced: bool = False, chunk_ms: int = CHUNK_MS) -> Timing:
    """Open ``session``, send ``pcm`` in ``chunk_ms`` chunks and end it; closed in any case.

    Paced, chunk ``k`` is sent ``k * chunk_ms`` after the session opened, as a live caller does;
    unpaced, each chunk goes as soon as the previous one is answered.
    """
    timing = Timing(audio_s=audio_seconds(pcm))
    started = time.perf_counter()
    try:
        session.open()
        origin = time.perf_counter()
        timing.open_s = origin - started
        due = replied = origin
        for k, chunk in enumerate(split_chunks(pcm, chunk_ms)):
            due = origin + k * chunk_ms / 1000
            if paced and (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)  # the microphone's pace
            sent = time.perf_counter()
            session.send(chunk)
            replied = time.perf_counter()
            timing.latencies_s.append(replied - sent)
        timing.first_reply_s = timing.open_s + (timing.latencies_s or [0.0])[0]
        timing.end_lag_s = replied - due
        session.end()
        timing.wall_s = time.perf_counter() - started
    finally:
        session.close()
    return timing


@dataclass(frozen=True, slots=True)
class CallersRun:
    timings: list[Timing]  # every session of every caller, errors included
    wall_s: float  # from the callers' common start to the last one's end
    client_cpu_s: float  # this process's CPU meanwhile

    @property
    def done(self) -> list[Timing]:
        return [t for t in self.timings if t.error is None]

    @property
    def errors(self) -> int:
        return len(self.timings) - len(self.done)


def run_callers(
    work: Sequence[Sequence[bytes]],
    session: Callable[[], Session],
    paced: bool = False,
    stagger_s: float = 0.0,
    chunk_ms: int = CHUNK_MS,
) -> CallersRun:
    """One thread per caller: caller ``i`` streams the recordings ``work[i]`` one after another on
    sessions made by ``session()``. The callers start together, caller ``i`` ``i * stagger_s`` late;
    a failed session is recorded with its error (never hidden) and the caller goes on."""
    results: list[list[Timing]] = [[] for _ in work]
    gate = threading.Barrier(len(work) + 1)
    start_at = [0.0]

    def caller(i: int) -> None:
        gate.wait()
        if (delay := start_at[0] + i * stagger_s - time.perf_counter()) > 0:
            time.sleep(delay)
        for pcm in work[i]:
            try:
                results[i].append(stream_audio(session(), pcm, paced, chunk_ms))
            except Exception as exc:  # counted as an error of this session
                results[i].append(Timing(audio_s=audio_seconds(pcm), error=f"{type(exc).__name__}: {exc}"))

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(len(work))]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    start_at[0] = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start_at[0]
    return CallersRun([t for timings in results for t in timings], wall, time.process_time() - cpu)
