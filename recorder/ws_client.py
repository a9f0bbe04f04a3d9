"""The decoder's WebSocket ``/v1/stream`` (the Vosk server protocol) as a ``Transport``.

One socket is one session on the server, dropped when the socket closes: a stream cannot be
resumed, so a connection lost mid-call ends the call with ``SessionLost``. Before any audio was
decoded, a refused connection or a full server (``capacity``, close code 1013) is retried like
on HTTP. The protocol carries no session id, engine or model: the session id reported (and used
as the Kafka key) is made up here, ``ws-`` followed by random hex. Word timings are always asked
for, because they are the only times the protocol gives for an utterance. A stereo call's
``config`` says ``channels`` (and ``speakers`` when given); its results list their
``utterances`` with channel, speaker and times, and its partial replies each channel's
``partials``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
import uuid
from typing import Any

import websocket

from recorder.client import SessionRequest
from recorder.config import ServerSettings
from recorder.errors import RecorderError, ServerError, SessionLost, Unreachable
from recorder.events import ChunkReply, EndReply, Final, SessionInfo, Word, partials_from_json
from recorder.retry import Retrier, RetryPolicy

logger = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
RETRY_CODES = frozenset({"capacity", "not_ready", "shutting_down"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class WebSocketTransport:
    """One call over ``/v1/stream``; see the module docstring."""

    def __init__(self, server: ServerSettings, stop: threading.Event, policy: RetryPolicy | None = None):
        self._server = server
        self._stop = stop
        self._policy = policy or RetryPolicy(budget_s=server.retry_s)
        self._ws: websocket.WebSocket | None = None
        self._request = SessionRequest(16000, "")
        self._session_id = f"ws-{uuid.uuid4().hex[:20]}"
        self._sent_samples = 0
        self._decoded = False
        self._utterance = 0
        self._last_end_ms = 0
        self._texts: list[str] = []

    def open(self, request: SessionRequest) -> SessionInfo:
        self._request = request
        self._connect()
        return SessionInfo(
            self._session_id,
            request.sample_rate_hz,
            channels=request.channels,
            speakers=request.speakers or (),
        )

    def send(self, pcm: bytes, seq: int) -> ChunkReply:
        retrier = Retrier(self._policy, self._stop, f"chunk {seq}")
        while True:
            reply = self._exchange(pcm, binary=True)
            code = reply.get("error")
            if code is None:
                break
            error = ServerError(
                f"chunk {seq}: the decoder answered {code}: {reply.get('message', '')}", 0, code
            )
            if code not in RETRY_CODES or self._decoded:
                raise error
            retrier.wait(error)
            self._connect()
        self._decoded = True
        self._sent_samples += len(pcm) // self._request.frame_bytes
        return self._reply(reply)

    def end(self) -> EndReply:
        reply = self._exchange(json.dumps({"eof": 1}).encode(), binary=False) if self._decoded else {}
        if "error" in reply:
            raise ServerError(
                f"ending the stream: the decoder answered {reply['error']}: {reply.get('message')}"
            )
        finals = self._reply(reply).finals if reply else ()
        return EndReply(finals, " ".join(self._texts))

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close(timeout=2)
            except (websocket.WebSocketException, OSError) as exc:
                logger.info("stream_close_failed session_id=%s reason=%s", self._session_id, exc)
            self._ws = None

    @property
    def _audio_ms(self) -> int:
        return self._sent_samples * 1000 // self._request.sample_rate_hz

    def _connect(self) -> None:
        self.close()
        url = self._server.ws_url + STREAM_PATH
        headers = [f"Authorization: Bearer {self._server.api_key}"] if self._server.api_key else []
        retrier = Retrier(self._policy, self._stop, "opening a stream")
        while True:
            try:
                self._ws = websocket.create_connection(
                    url,
                    timeout=self._server.read_timeout_s,
                    header=headers,
                    enable_multithread=False,
                    sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
                )
                break
            except websocket.WebSocketBadStatusException as exc:
                error = handshake_error(exc, url)
                if exc.status_code not in RETRY_STATUSES:
                    raise error from None
                retrier.wait(error)
            except (websocket.WebSocketException, OSError) as exc:
                retrier.wait(Unreachable(f"cannot reach the decoder at {url}: {describe(exc)}"))
        config: dict[str, Any] = {"sample_rate": self._request.sample_rate_hz, "words": True}
        if self._request.channels > 1:
            config["channels"] = self._request.channels
            if self._request.speakers is not None:
                config["speakers"] = list(self._request.speakers)
        self._ws.send(json.dumps({"config": config}))
        logger.info("stream_opened session_id=%s", self._session_id)

    def _exchange(self, payload: bytes, binary: bool) -> dict[str, Any]:
        """Send one frame and read its one reply (an error reply may be followed by a close)."""
        if self._ws is None:
            raise RuntimeError("the stream is not open")
        try:
            if binary:
                self._ws.send_binary(payload)
            else:
                self._ws.send(payload.decode())
            opcode, data = self._ws.recv_data()
        except (websocket.WebSocketException, OSError) as exc:
            raise self._lost(describe(exc)) from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise self._lost(close_reason(data))
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ServerError("the decoder sent a reply that is not a JSON object")
        return reply

    def _lost(self, why: str) -> RecorderError:
        if not self._decoded:
            return Unreachable(f"the stream to the decoder closed before any audio was decoded ({why})")
        return SessionLost(
            f"the stream {self._session_id} closed mid-call ({why}); the decoder drops a stream's "
            "session with its socket, so audio after the last final is lost"
        )

    def _reply(self, reply: dict[str, Any]) -> ChunkReply:
        if "text" not in reply:
            partials = partials_from_json(reply.get("partials"))
            return ChunkReply(str(reply.get("partial", "")), (), self._audio_ms, partials)
        if "utterances" in reply:
            return ChunkReply("", tuple(self._final(u) for u in reply["utterances"]), self._audio_ms)
        if not reply["text"]:
            return ChunkReply("", (), self._audio_ms)
        return ChunkReply("", (self._final(reply),), self._audio_ms)

    def _final(self, body: dict[str, Any]) -> Final:
        """One utterance: a mono result, or one of a stereo result's ``utterances`` (with its
        channel, speaker and times)."""
        text = str(body["text"])
        words = tuple(
            Word(str(w["word"]), round(w["start"] * 1000), round(w["end"] * 1000), float(w.get("conf", 0)))
            for w in body.get("result", [])
        )
        if "start" in body:
            start_ms, end_ms = round(body["start"] * 1000), round(body["end"] * 1000)
        elif words:
            start_ms, end_ms = words[0].start_ms, words[-1].end_ms
        else:
            start_ms, end_ms = self._last_end_ms, self._audio_ms
        channel = body.get("channel")
        final = Final(
            self._utterance,
            text,
            start_ms,
            end_ms,
            words if self._request.words else None,
            channel=None if channel is None else int(channel),
            speaker=None if body.get("speaker") is None else str(body["speaker"]),
        )
        self._utterance += 1
        self._last_end_ms = end_ms
        self._texts.append(text)
        return final


def handshake_error(exc: websocket.WebSocketBadStatusException, url: str) -> ServerError:
    body: Any = None
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(exc.resp_body or b"")
    body = body if isinstance(body, dict) else {}
    code = str(body.get("error", f"http_{exc.status_code}"))
    message = str(body.get("message", "")) or "the WebSocket upgrade was refused"
    hint = " (set --api-key or DECODER_API_KEY)" if exc.status_code == 401 else ""
    return ServerError(
        f"{url}: the decoder answered {exc.status_code} {code}: {message}{hint}", exc.status_code, code
    )


def close_reason(data: bytes) -> str:
    if len(data) < 2:
        return "closed by the server"
    (code,) = struct.unpack("!H", data[:2])
    reason = data[2:].decode("utf-8", "replace")
    return f"closed by the server with code {code}{' ' + reason if reason else ''}"


def describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | websocket.WebSocketTimeoutException):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
