"""The decoder's native HTTP API, one ``requests.Session`` per call (a Route's sticky cookie sticks).

Retries (within ``--retry-s``, exponential backoff with jitter, ``Retry-After`` honoured):

* a request that never left (connection refused, connect timeout, unknown host): any request,
  with the same session, so a call carries on after a decoder restart when the server still
  knows the session (otherwise it answers 404 ``session_not_found`` and the call reports the loss);
* 503 (``capacity``, ``not_ready``, a router with no backend), 429, and 409 ``session_busy`` /
  ``wrong_instance``: the server did not decode anything;
* a request that was sent but got no answer (reset, read timeout, 502/504): opening and ending
  a session are safe to repeat; an audio chunk is resent only when the server has shown that it
  drops duplicates (it echoes ``X-Chunk-Seq`` on audio replies), otherwise the call ends with an
  error rather than risk decoding the same audio twice.

Every chunk carries ``X-Chunk-Seq: N`` (0-based). A chunk that got an answer is never sent again.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import RemoteDisconnected
from typing import Any, Protocol

import requests
import urllib3.exceptions

from recorder.config import ServerSettings
from recorder.errors import AmbiguousChunk, RecorderError, ServerError, SessionLost, Unreachable
from recorder.events import ChunkReply, EndReply, Final, SessionInfo, final_from_json, partials_from_json
from recorder.retry import Retrier, RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)

CHUNK_SEQ_HEADER = "X-Chunk-Seq"
SESSION_TOKEN_HEADER = "X-Session-Token"
USER_AGENT = "recorder/1.0"
RETRY_STATUSES = frozenset({429, 503})
NO_ANSWER_STATUSES = frozenset({502, 504})
RETRY_CODES = frozenset({"session_busy", "wrong_instance"})
LOST_CODES = frozenset({"session_not_found", "session_expired", "session_ended"})


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What a call asks for when it opens its session: ``channels`` 2 is a stereo call, one speaker
    per channel, named by ``speakers`` (None: the decoder's defaults)."""

    sample_rate_hz: int
    user_id: str
    words: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    channels: int = 1
    speakers: tuple[str, ...] | None = None

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful response; ``after_unanswered``: an earlier attempt may have reached the server."""

    response: requests.Response
    after_unanswered: bool = False


class Transport(Protocol):
    """One call's connection to the decoder: open, send chunks in order, end, close."""

    def open(self, request: SessionRequest) -> SessionInfo: ...

    def send(self, pcm: bytes, seq: int) -> ChunkReply: ...

    def end(self) -> EndReply: ...

    def close(self) -> None:
        """Release the session and the connection; never raises."""
        ...


class HttpTransport:
    """The ``/v1/sessions`` protocol for one call; see the module docstring for retries."""

    def __init__(self, server: ServerSettings, stop: threading.Event, policy: RetryPolicy | None = None):
        self._server = server
        self._stop = stop
        self._policy = policy or RetryPolicy(budget_s=server.retry_s)
        self._http = requests.Session()
        self._http.headers["User-Agent"] = USER_AGENT
        if server.api_key:
            self._http.headers["Authorization"] = f"Bearer {server.api_key}"
        self._session: SessionInfo | None = None
        self._token = ""
        self._lost = False
        self._dedup_confirmed = False
        self._last_utterance = -1

    def open(self, request: SessionRequest) -> SessionInfo:
        body: dict[str, Any] = {
            "sample_rate": request.sample_rate_hz,
            "user_id": request.user_id,
            "words": request.words,
            "metadata": request.metadata,
        }
        if request.channels > 1:
            body["channels"] = request.channels
            if request.speakers is not None:
                body["speakers"] = list(request.speakers)
        data = self._json(self._call("opening a session", "POST", "/v1/sessions", json=body).response)
        if not isinstance(data.get("session_id"), str) or not isinstance(data.get("token"), str):
            raise ServerError(
                f"{self._server.url} answered without a session id and token: is it the decoder?"
            )
        self._token = data["token"]
        self._session = SessionInfo(
            session_id=data["session_id"],
            sample_rate_hz=int(data.get("sample_rate", request.sample_rate_hz)),
            engine=str(data.get("engine", "")),
            model=str(data.get("model", "")),
            language=str(data.get("language", "")),
            channels=int(data.get("channels", request.channels)),
            speakers=tuple(str(s) for s in data.get("speakers", request.speakers or ())),
        )
        logger.info("session_opened session_id=%s", self._session.session_id)
        return self._session

    def send(self, pcm: bytes, seq: int) -> ChunkReply:
        headers = {
            "Content-Type": "application/octet-stream",
            SESSION_TOKEN_HEADER: self._token,
            CHUNK_SEQ_HEADER: str(seq),
        }
        answer = self._call(
            f"chunk {seq}",
            "POST",
            f"{self._session_path()}/audio",
            data=pcm,
            headers=headers,
            resend_ok=lambda: self._dedup_confirmed,
        )
        if answer.response.headers.get(CHUNK_SEQ_HEADER) == str(seq):
            self._dedup_confirmed = True
        data = self._json(answer.response)
        finals = self._finals(data, answer.after_unanswered)
        return ChunkReply(
            str(data.get("partial", "")),
            finals,
            int(data.get("audio_ms", 0)),
            partials_from_json(data.get("partials")),
        )

    def end(self) -> EndReply:
        answer = self._call(
            "ending the session",
            "POST",
            f"{self._session_path()}/end",
            headers={SESSION_TOKEN_HEADER: self._token},
        )
        data = self._json(answer.response)
        return EndReply(self._finals(data, answer.after_unanswered), str(data.get("transcript", "")))

    def close(self) -> None:
        if self._session is not None and not self._lost:
            try:
                self._call(
                    "deleting the session",
                    "DELETE",
                    self._session_path(),
                    headers={SESSION_TOKEN_HEADER: self._token},
                    policy=RetryPolicy(budget_s=min(5.0, self._policy.budget_s)),
                )
            except RecorderError as exc:
                logger.info(
                    "session_delete_failed session_id=%s reason=%s", self._session.session_id, exc.message
                )
        self._http.close()

    def _finals(self, data: dict[str, Any], after_unanswered: bool) -> tuple[Final, ...]:
        """The answer's new finals; after a lost answer, also those only the session's record has.

        A repeated chunk or ``end`` may be answered without the finals the lost answer carried
        (e.g. by an instance that took the session over), so the session is read back then.
        """
        finals = [final_from_json(f) for f in data.get("finals", [])]
        if after_unanswered:
            headers = {SESSION_TOKEN_HEADER: self._token}
            record = self._json(
                self._call("reading the session", "GET", self._session_path(), headers=headers).response
            )
            finals += [final_from_json(f) for f in record.get("finals", [])]
        unique = {f.utterance: f for f in finals if f.utterance > self._last_utterance}
        fresh = tuple(unique[k] for k in sorted(unique))
        if fresh:
            self._last_utterance = fresh[-1].utterance
        return fresh

    def _session_path(self) -> str:
        if self._session is None:
            raise RuntimeError("the session is not open")
        return f"/v1/sessions/{self._session.session_id}"

    def _call(
        self,
        what: str,
        method: str,
        path: str,
        resend_ok: Callable[[], bool] = lambda: True,
        policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Answer:
        """One request with retries; ``resend_ok``: may a request that got no answer be repeated?"""
        retrier = Retrier(policy or self._policy, self._stop, what)
        timeout = (self._server.connect_timeout_s, self._server.read_timeout_s)
        unanswered = False
        while True:
            try:
                response = self._http.request(method, self._server.url + path, timeout=timeout, **kwargs)
            except requests.RequestException as exc:
                error = Unreachable(f"cannot reach the decoder at {self._server.url}: {network_reason(exc)}")
                if not request_unsent(exc):
                    if not resend_ok():
                        raise self._ambiguous(what, network_reason(exc)) from None
                    unanswered = True
                retrier.wait(error)
                continue
            if response.status_code < 400:
                return Answer(response, unanswered)
            server_error = self._server_error(response, what)
            if response.status_code in NO_ANSWER_STATUSES:
                if not resend_ok():
                    raise self._ambiguous(what, f"HTTP {response.status_code} from a proxy") from None
                unanswered = True
            if not isinstance(server_error, ServerError) or not retryable(server_error):
                raise server_error
            retrier.wait(server_error, server_error.retry_after_s)

    def _ambiguous(self, what: str, why: str) -> AmbiguousChunk:
        session_id = self._session.session_id if self._session else "?"
        return AmbiguousChunk(
            f"{what} of session {session_id} got no answer ({why}) and the server cannot drop a resent "
            "duplicate; ending the call rather than risk decoding that audio twice"
        )

    def _server_error(self, response: requests.Response, what: str) -> RecorderError:
        body = error_body(response)
        code = str(body.get("error", "")) or f"http_{response.status_code}"
        message = str(body.get("message", "")) or response.reason or "no message"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if self._session is not None and (code in LOST_CODES or response.status_code == 404):
            self._lost = True
            return SessionLost(
                f"the decoder lost session {self._session.session_id} ({code}: {message}); "
                "audio after its last final is lost"
            )
        if code == "chunk_out_of_order":
            self._lost = True
            return SessionLost(
                f"{what}: the decoder expected chunk {body.get('expected')} of session "
                f"{self._session.session_id if self._session else '?'} (it resumed from an older state); "
                "audio after its last final is lost"
            )
        hint = " (set --api-key or DECODER_API_KEY)" if response.status_code == 401 else ""
        return ServerError(
            f"{what}: the decoder answered {response.status_code} {code}: {message}{hint}",
            response.status_code,
            code,
            retry_after,
        )

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ServerError(f"the decoder's answer to {response.request.method} {response.url} is not JSON")
        return data


def retryable(error: ServerError) -> bool:
    if error.status in RETRY_STATUSES or error.status in NO_ANSWER_STATUSES:
        return True
    return error.status == 409 and error.code in RETRY_CODES


def error_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (``args``, ``reason``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        pending.extend(w for w in wrapped if isinstance(w, BaseException))


def request_unsent(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (it failed while connecting)."""
    unsent = (
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.ConnectTimeoutError,
        urllib3.exceptions.NameResolutionError,
        requests.ConnectTimeout,
    )
    return any(isinstance(c, unsent) for c in causes(exc))


def network_reason(exc: BaseException) -> str:
    found = list(causes(exc))
    kinds: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (ConnectionRefusedError, "connection refused"),
        ((urllib3.exceptions.NameResolutionError, socket.gaierror), "unknown host"),
        ((requests.Timeout, TimeoutError, socket.timeout), "timed out"),
        (ConnectionResetError, "connection reset"),
        (RemoteDisconnected, "connection closed without an answer"),
    ]
    for kind, text in kinds:
        if any(isinstance(c, kind) for c in found):
            return text
    return type(exc).__name__
