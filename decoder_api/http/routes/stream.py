"""``/v1/stream``: a WebSocket speaking the Vosk server protocol, so existing Vosk clients work unchanged.

The protocol is the one of alphacep/vosk-server (``websocket/asr_server.py``); each stream is a
session of the ``SessionStore``, so capacity limits, idle expiry and metrics apply as on ``/v1``.

Client → server
    * Optional first text frame ``{"config": {"sample_rate": 16000, "words": true,
      "phrase_list": ["..."], "max_alternatives": 0}}`` (all keys optional; no reply, as in
      vosk-server). Without it the stream is 16000 Hz, no words, no phrase list. ``words``
      also takes 0/1; ``sample_rate`` must be a whole number of hertz. ``"channels": 2`` (with
      optional ``"speakers": ["agent", "customer"]``, the default) declares a dual-channel call:
      binary frames are then interleaved stereo, each channel is decoded on its own, and every
      result names its ``channel`` and ``speaker`` (below). A bad value closes with 1008.
    * Binary frames: signed 16-bit little-endian mono PCM at that rate (stereo: whole frames of
      4 bytes, left then right; a frame that is not is ``incomplete_frame`` and is dropped).
    * ``{"eof": 1}``: end of stream. ``{"reset": 1}``: end the open utterance now.
      Control frames are parsed as JSON, so spacing does not matter (``{ "eof" : 1 }``).

Server → client: exactly one JSON text reply per binary frame, ``eof`` and ``reset``
    * ``{"partial": "..."}`` while an utterance is open;
    * ``{"text": "...", "result": [{"conf": 0.98, "start": 1.23, "end": 1.5, "word": "..."}]}``
      when the frame completed an utterance (times in seconds from the start of the stream;
      ``result`` only when ``words`` was requested and the utterance has words). If one frame
      completes several utterances (the engine found two, or the maximum utterance length
      forced one), they are merged, in order, into this one reply: texts joined by a space,
      words concatenated. ``{"text": ""}`` is the empty result.
    * In a stereo stream a result also lists its utterances in order of start time,
      ``"utterances": [{"channel": 0, "speaker": "agent", "text": "...", "start": 1.2, "end": 2.5}]``,
      and a partial reply adds ``"partials": [{"channel", "speaker", "text"}]`` for each channel.
    * With ``max_alternatives`` > 0 a result is ``{"alternatives": [{"text": "...",
      "confidence": 0.93, "result": [...]}]}`` as in vosk-server; the service reports only
      the best hypothesis, with the mean word confidence (0..1) as its confidence.
    * ``eof`` → the final result of the open utterance (or ``{"text": ""}``), then a normal close.
    * ``reset`` → like vosk-server, which answers with ``FinalResult()``: the open utterance is
      finalised and is the reply (``{"text": ""}`` when it had no words); the audio that follows
      starts a new utterance, so nothing of the old one shows up again. The utterance counts
      as a final of the session like any other.
    * A mistake is answered with one ``{"error": code, "message": "..."}`` reply instead.
      Malformed control frames (not JSON, not an object, unknown command, a value other than
      1) are ``invalid_message``/``unknown_command``; a binary frame that is not whole 16-bit
      samples is ``invalid_audio`` and is dropped. The stream carries on after these. A
      ``config`` frame after the first audio is refused the same way (the stream keeps its
      configuration).

Before the upgrade (plain HTTP answers, JSON body)
    * 401 when API keys are configured and none valid was sent, as ``Authorization: Bearer
      <key>`` or, for browsers that cannot set headers on a WebSocket, ``?api_key=<key>``.
    * 400 when the request is not a WebSocket upgrade.
    * 429 (``rate_limited``, with ``Retry-After``) when this client opened too many streams or
      sessions in the last minute.

Close codes (after the error reply, if any; the close reason is the error code)
    ====  =====================================================================================
    1000  normal: after the reply to ``eof`` (or the client closed).
    1001  going away: no frame for ``DECODER_SESSION_IDLE_S`` seconds (``idle_timeout``), the
          session expired or reached its maximum duration, or the server is shutting down.
    1007  invalid frame data (e.g. a text frame that is not UTF-8); sent by the WebSocket layer.
    1008  policy violation: the config was refused (a server-only key such as ``model``,
          ``engine``, ``broker``, ``topic`` or ``path``; an unknown key or a wrong type; a
          sample rate or phrase list the model cannot take). The model, engine and Kafka
          settings are the server's own and a client never chooses them.
    1008  also sent by the WebSocket layer when the client stops answering pings (every 25 s).
    1009  message too big: a frame over ``DECODER_MAX_BODY_BYTES``; sent by the WebSocket layer
          (a client still sending the rest of such a frame may see a reset connection instead).
    1011  internal error: an unexpected failure on the server (logged with its traceback).
    1013  try again later: the instance is at its session limit (``capacity``), the API key has
          its maximum of open sessions (``too_many_sessions``) or the model is still loading
          (``not_ready``); retry later, possibly on another instance.
    ====  =====================================================================================

The session is flushed (its finals are recorded) and deleted whenever the socket closes, for
whatever reason, so a client that disconnects mid-stream leaks nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, ClassVar

import jsonschema
from flask import Blueprint, Flask, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from decoder_api.engines.base import Final, InvalidOptions, UnsupportedSampleRate, Word, check_pcm
from decoder_api.errors import DecoderError
from decoder_api.http.auth import bearer
from decoder_api.http.routes.v1 import SERVER_ONLY_KEYS, channel_partials
from decoder_api.http.service import DecoderService, service
from decoder_api.sessions.channels import MAX_SPEAKER_CHARS, MONO, ChannelLayout, channel_layout, check_frames
from decoder_api.sessions.errors import SessionEnded, SessionExpired, ShuttingDown
from decoder_api.sessions.session import Session, SessionConfig

logger = logging.getLogger(__name__)

PATH = "/v1/stream"
DEFAULT_RATE_HZ = 16000
CLOSE_HANDSHAKE_S = 2.0

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sample_rate": {"type": "number", "minimum": 1, "maximum": 192000, "multipleOf": 1},
        "words": {"enum": [True, False, 0, 1]},
        "phrase_list": {"type": "array", "maxItems": 1000, "items": {"type": "string", "maxLength": 200}},
        "max_alternatives": {"type": "integer", "minimum": 0, "maximum": 10},
        "channels": {"type": "integer", "enum": [1, 2]},
        "speakers": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_SPEAKER_CHARS},
        },
    },
}
COMMANDS = frozenset({"config", "eof", "reset"})

blueprint = Blueprint("stream", __name__)


class StreamError(DecoderError):
    """A mistake on the socket; ``close_code`` says whether the stream ends with it."""

    close_code: ClassVar[int | None] = None


class InvalidMessage(StreamError):
    code = "invalid_message"


class UnknownCommand(StreamError):
    code = "unknown_command"


class InvalidConfig(StreamError):
    code = "invalid_config"
    close_code = POLICY_VIOLATION


class ServerOnlyOption(StreamError):
    code = "server_only_option"
    close_code = POLICY_VIOLATION


class IdleTimeout(StreamError):
    code = "idle_timeout"
    close_code = GOING_AWAY


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """What the client's ``config`` frame chose."""

    sample_rate_hz: int = DEFAULT_RATE_HZ
    words: bool = False
    phrases: tuple[str, ...] | None = None
    max_alternatives: int = 0
    layout: ChannelLayout = MONO

    def session_config(self) -> SessionConfig:
        # Word confidences are needed for an alternative's confidence even without ``words``.
        words = self.words or self.max_alternatives > 0
        return SessionConfig(
            sample_rate_hz=self.sample_rate_hz, words=words, phrases=self.phrases, layout=self.layout
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """One JSON message for the client, and the close code that follows it (None: keep going)."""

    body: dict[str, Any]
    close_code: int | None = None


def parse_config(raw: Any) -> StreamConfig:
    """The ``config`` frame's options; server-only and unknown keys and wrong types are refused."""
    if isinstance(raw, dict):
        refuse_server_only(raw)
        try:
            layout = channel_layout(raw.get("channels", 1), raw.get("speakers"))
        except DecoderError as exc:
            raise InvalidConfig(f"config: {exc.message}") from None
    try:
        jsonschema.validate(raw, CONFIG_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(["config", *(str(p) for p in exc.absolute_path)])
        raise InvalidConfig(f"{where}: {exc.message}") from None
    phrases = raw.get("phrase_list")
    return StreamConfig(
        sample_rate_hz=int(raw.get("sample_rate", DEFAULT_RATE_HZ)),
        words=bool(raw.get("words", False)),
        phrases=tuple(phrases) if phrases is not None else None,
        max_alternatives=raw.get("max_alternatives", 0),
        layout=layout,
    )


def refuse_server_only(options: dict[str, Any]) -> None:
    refused = SERVER_ONLY_KEYS & options.keys()
    if refused:
        raise ServerOnlyOption(f"{', '.join(sorted(refused))} is chosen by the server's configuration only")


def parse_command(text: str) -> tuple[str, Any]:
    """A control frame as ``(command, value)``: exactly one of config, eof, reset."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        raise InvalidMessage('a text frame must be a JSON object such as {"eof": 1}') from None
    if not isinstance(message, dict):
        raise InvalidMessage('a text frame must be a JSON object such as {"eof": 1}')
    refuse_server_only(message)
    unknown = message.keys() - COMMANDS
    if unknown:
        raise UnknownCommand(f"unknown command {', '.join(sorted(unknown))}; expected config, eof or reset")
    if len(message) != 1:
        raise InvalidMessage("send one command per frame")
    ((command, value),) = message.items()
    if command != "config" and (isinstance(value, str | bool) or value != 1):  # JSON true is not 1
        raise InvalidMessage(f'{command} takes the value 1: {{"{command}": 1}}')
    return command, value


def word_body(word: Word) -> dict[str, Any]:
    return {"conf": word.conf, "start": word.start_ms / 1000, "end": word.end_ms / 1000, "word": word.word}


def result_body(finals: Sequence[Final], config: StreamConfig) -> dict[str, Any]:
    """Vosk's result message for the utterances ``finals`` (merged in order; empty when none)."""
    text = " ".join(f.text for f in finals)
    words = [w for f in finals for w in (f.words or ())]
    shown = [word_body(w) for w in words] if config.words and words else None
    if config.max_alternatives:
        confidence = fmean(w.conf for w in words) if words else 0.0
        alternative: dict[str, Any] = {"text": text, "confidence": confidence}
        if shown:
            alternative["result"] = shown
        return {"alternatives": [alternative]} | utterances_body(finals, config)
    body = {"text": text, "result": shown} if shown else {"text": text}
    return body | utterances_body(finals, config)


def utterances_body(finals: Sequence[Final], config: StreamConfig) -> dict[str, Any]:
    """A stereo stream's utterances, each with its channel and speaker (empty for mono)."""
    if not config.layout.stereo:
        return {}
    return {
        "utterances": [
            {
                "channel": f.channel,
                "speaker": f.speaker,
                "text": f.text,
                "start": f.start_ms / 1000,
                "end": f.end_ms / 1000,
            }
            | ({"result": [word_body(w) for w in f.words]} if config.words and f.words else {})
            for f in finals
        ]
    }


def close_code_for(exc: DecoderError) -> int | None:
    """Whether an error ends the stream, and with which WebSocket close code."""
    if isinstance(exc, StreamError):
        return exc.close_code
    if isinstance(exc, SessionEnded | SessionExpired | ShuttingDown):
        return GOING_AWAY
    if exc.status in (429, 503):
        return TRY_AGAIN_LATER
    if isinstance(exc, UnsupportedSampleRate | InvalidOptions):
        return POLICY_VIOLATION
    return None


class VoskStream:
    """One socket's state: its configuration and, from the config frame or first audio on, its session."""

    def __init__(self, svc: DecoderService, owner_key_hash: str | None) -> None:
        self._svc = svc
        self._owner = owner_key_hash
        self.config = StreamConfig()
        self.session: Session | None = None
        self._partial = ""
        self.ended = "normal"  # the call.ended reason when the socket closes ("idle" after a timeout)

    @property
    def session_id(self) -> str:
        return self.session.id if self.session is not None else "-"

    def handle(self, message: str | bytes) -> Reply | None:
        """The reply to one frame (None: no reply); errors become an error reply."""
        try:
            if isinstance(message, str):
                return self._command(*parse_command(message))
            return Reply(self._audio(bytes(message)))
        except DecoderError as exc:
            logger.info("stream_refused session_id=%s error=%s", self.session_id, exc.code)
            return Reply(exc.to_dict(), close_code_for(exc))

    def close(self) -> None:
        """Flush (finals are recorded) and forget the session; safe to call whatever happened."""
        if self.session is None:
            return
        try:
            self._svc.sessions.delete(self.session, ended=self.ended)
        except DecoderError as exc:
            logger.warning("stream_close_failed session_id=%s error=%s", self.session.id, exc.code)

    def _command(self, command: str, value: Any) -> Reply | None:
        if command == "config":
            if self.session is not None:
                raise InvalidMessage(
                    "config must come before the first audio frame; the stream keeps its own"
                )
            self.config = parse_config(value)
            self._open()
            return None
        if command == "eof":
            finals = self._svc.sessions.end(self.session) if self.session is not None else []
            return Reply(result_body(finals, self.config), NORMAL_CLOSURE)
        finals = []
        if self.session is not None:
            with self.session.locked():
                finals = self.session.finalize()
        self._partial = ""
        return Reply(result_body(finals, self.config))

    def _audio(self, pcm: bytes) -> dict[str, Any]:
        received_at = time.perf_counter()
        check_pcm(pcm)
        check_frames(pcm, self.config.layout)
        session = self._open()
        if not pcm:
            return {"partial": self._partial}
        with session.locked():
            started = time.perf_counter()
            result = session.feed(pcm)
            partials = session.partials()
            decode_s = time.perf_counter() - started
        layout = self.config.layout
        audio_s = len(pcm) / layout.frame_bytes / self.config.sample_rate_hz
        self._svc.metrics.observe_chunk(received_at, decode_s, audio_s)
        self._partial = result.partial
        if result.finals:
            return result_body(result.finals, self.config)
        if layout.stereo:
            return {"partial": result.partial, "partials": channel_partials(layout, partials)}
        return {"partial": result.partial}

    def _open(self) -> Session:
        if self.session is None:
            self.session, _ = self._svc.sessions.open(self.config.session_config(), self._owner)
            logger.info("stream_opened session_id=%s", self.session.id)
        return self.session


def serve(ws: Any, stream: VoskStream, idle_s: float) -> None:
    """Answer frames until the stream ends (eof, an error that closes it, idleness or the client)."""
    while True:
        message = ws.receive(timeout=idle_s)
        if message is None:
            idle = IdleTimeout(f"no frame for {idle_s:g} s; the stream was closed")
            stream.ended = "idle"
            reply: Reply | None = Reply(idle.to_dict(), idle.close_code)
        else:
            reply = stream.handle(message)
        if reply is None:
            continue
        ws.send(json.dumps(reply.body, ensure_ascii=False))
        if reply.close_code is not None:
            reason = str(reply.body.get("error", "")) if reply.close_code != NORMAL_CLOSURE else ""
            ws.close(reason=reply.close_code, message=reason or None)
            return


def vosk_stream(ws: Any) -> None:
    """One Vosk-protocol stream on its own session; see the module docstring."""
    svc = service()
    stream = VoskStream(svc, request.environ.get("decoder.key_hash"))
    try:
        serve(ws, stream, svc.settings.session_idle_s)
    except (ConnectionClosed, OSError):
        logger.info("stream_disconnected session_id=%s", stream.session_id)
    except Exception:
        logger.exception("stream_failed session_id=%s", stream.session_id)
        abort_stream(ws)
    finally:
        stream.close()
        release_socket(ws)


def release_socket(ws: Any) -> None:
    """Give the client a moment to answer our close frame, then drop the connection.

    Without this, a client that never answers keeps the socket (and its reader thread) until
    the next ping, ``ping_interval`` seconds later, which also holds up a graceful shutdown.
    """
    reader = getattr(ws, "thread", None)
    if reader is None:
        return
    reader.join(CLOSE_HANDSHAKE_S)
    if reader.is_alive():
        with contextlib.suppress(OSError):
            ws.sock.shutdown(socket.SHUT_RDWR)


def abort_stream(ws: Any) -> None:
    body = {"error": "internal", "message": "internal server error"}
    with contextlib.suppress(ConnectionClosed, OSError):
        ws.send(json.dumps(body))
        ws.close(reason=INTERNAL_ERROR, message="internal")


@blueprint.before_request
def require_api_key() -> None:
    """Checked before the upgrade, so a refused client gets a plain 401."""
    svc = service()
    presented = bearer(request) or request.args.get("api_key") or None
    request.environ["decoder.key_hash"] = svc.api_keys.verify(presented)


Sock().route(PATH, bp=blueprint)(vosk_stream)


def init_app(app: Flask) -> None:
    """Register ``/v1/stream`` (flask-sock on a blueprint, so the API-key check runs before the upgrade)."""
    app.register_blueprint(blueprint)
