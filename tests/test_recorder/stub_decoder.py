"""A scripted stand-in for the decoder's ``/v1/sessions`` API, to inject failures the real one rarely shows.

It keeps one session's state across ``restart()`` (as a decoder backed by a session registry
would), decodes chunk ``N`` into the partial ``pN`` and completes an utterance ``uK`` every
``FINAL_EVERY`` decoded chunks. Faults are scripted per request: ``faults[("audio", 3)]`` is a
list of actions applied to the successive attempts at chunk 3.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FINAL_EVERY = 3


@dataclass(frozen=True)
class Status:
    """Answer with this status and JSON error body, without decoding."""

    status: int
    code: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer, after handling the request (``after``) or before."""

    after: bool = True


Fault = Status | Drop


@dataclass
class StubState:
    echo_seq: bool = False
    replay_without_finals: bool = False  # as an instance that took the session over answers
    faults: dict[tuple[str, int], list[Fault]] = field(default_factory=dict)
    opened: int = 0
    ended: int = 0
    deleted: int = 0
    received: list[int] = field(default_factory=list)
    decoded: list[int] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)
    last_reply: tuple[int, dict[str, Any]] | None = None
    connections: set[socket.socket] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, kind: str, number: int) -> Fault | None:
        with self.lock:
            actions = self.faults.get((kind, number))
            return actions.pop(0) if actions else None


class StubDecoder:
    """The stub on 127.0.0.1; ``url`` stays the same across ``restart()``."""

    def __init__(self, state: StubState | None = None) -> None:
        self.state = state or StubState()
        self._server = self._serve(0)
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart(self, down_s: float) -> None:
        """Stop listening (connections are refused) for ``down_s``, then serve again, state kept."""
        self.stop()
        threading.Timer(down_s, lambda: setattr(self, "_server", self._serve(self.port))).start()

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a dying process would."""
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self.state.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _serve(self, port: int) -> ThreadingHTTPServer:
        state = self.state

        class Handler(StubHandler):
            stub = state

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stub: StubState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.stub.connections.add(self.connection)

    def finish(self) -> None:
        self.stub.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.stub.cookies.append(self.headers.get("Cookie", ""))
        if self.path == "/v1/sessions":
            self._handle("open", 0, lambda: self._open())
        elif self.path.endswith("/audio"):
            seq = int(self.headers["X-Chunk-Seq"])
            self.stub.received.append(seq)
            self._handle("audio", seq, lambda: self._audio(seq, body))
        elif self.path.endswith("/end"):
            self._handle("end", 0, self._end)

    def do_GET(self) -> None:
        self._reply(200, {"session_id": "s1", "finals": self.stub.finals})

    def do_DELETE(self) -> None:
        self.stub.deleted += 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _handle(self, kind: str, number: int, work: Any) -> None:
        fault = self.stub.fault(kind, number)
        if isinstance(fault, Status):
            self._reply(
                fault.status, {"error": fault.code, "message": f"scripted {fault.code}"}, fault.headers
            )
            return
        if isinstance(fault, Drop) and not fault.after:
            self._drop()
            return
        status, body, headers = work()
        if isinstance(fault, Drop):
            self._drop()
            return
        self._reply(status, body, headers)

    def _open(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.stub.opened += 1
        body = {
            "session_id": "s1",
            "token": "t1",
            "sample_rate": 16000,
            "engine": "stub",
            "model": "stub-model",
            "language": "xx",
        }
        return 201, body, {"Set-Cookie": "route=backend-1; Path=/"}

    def _audio(self, seq: int, pcm: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        stub = self.stub
        echo = {"X-Chunk-Seq": str(seq)} if stub.echo_seq else {}
        if stub.echo_seq and stub.last_reply is not None and stub.last_reply[0] == seq:
            replay = stub.last_reply[1] | ({"finals": []} if stub.replay_without_finals else {})
            return 200, replay, echo
        stub.decoded.append(seq)
        finals = []
        if len(stub.decoded) % FINAL_EVERY == 0:
            k = len(stub.finals)
            finals = [{"utterance": k, "text": f"u{k}", "start_ms": k * 600, "end_ms": k * 600 + 500}]
            stub.finals += finals
        audio_ms = len(stub.decoded) * len(pcm) // 32
        reply = {"partial": f"p{seq}", "finals": finals, "audio_ms": audio_ms}
        stub.last_reply = (seq, reply)
        return 200, reply, echo

    def _end(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        stub = self.stub
        stub.ended += 1
        finals = []
        if stub.ended == 1:
            k = len(stub.finals)
            finals = [{"utterance": k, "text": "last", "start_ms": k * 600, "end_ms": k * 600 + 500}]
            stub.finals += finals
        transcript = " ".join(f["text"] for f in stub.finals)
        return 200, {"finals": finals, "transcript": transcript, "audio_ms": 0}, {}

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
