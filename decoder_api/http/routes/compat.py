"""Seed-compatible ``POST /decode``: the original service's request and answer, on the session store.

Request (JSON, validated against ``DECODE_SCHEMA``)::

    {"audio": [int16, ...], "sample_rate": 16000, "do_finalize": false,
     "id": "caller-stream-id", "broker": "...", "topic": "..."}

``audio``, ``sample_rate`` and ``id`` are required; ``do_finalize`` defaults to false. ``audio``
may be empty (e.g. a finalise-only request). ``broker`` and ``topic`` are accepted and ignored
(noted once in the log): the server's own Kafka settings apply. Any other key, a sample outside
the int16 range, a non-integer sample or rate, a missing key or a body that is not a JSON
object is a 400 JSON error; the API-key rule of ``/v1`` applies (401).

Answer: ``{"hstr": "...", "confidence": 0.87}``.

* Each ``id`` (per API key) is one stream and keeps one session, hence one recognizer, across
  all its requests and utterances. Ids whose session expired (idle for
  ``DECODER_SESSION_IDLE_S``) or was closed are forgotten; the next request with that id
  starts a new session. The map is bounded by ``DECODER_MAX_SESSIONS``.
* ``hstr`` is the text of the current utterance: the partial hypothesis while it is open, or
  its final text when this request finished it. The recognizer ends an utterance by itself
  at a pause; ``do_finalize: true`` ends it now (after decoding this request's audio) and the
  stream's next request starts a new utterance on the same recognizer. If one request finishes
  several utterances (e.g. a pause inside the chunk and then ``do_finalize``), their texts are
  joined in order.
* ``confidence`` is the mean word confidence (0..1) of the final text in ``hstr``; it is 0.0
  when ``hstr`` is a partial or empty (partials carry no confidence).
* A later request with another ``sample_rate`` for the same ``id`` is a 422.
"""

from __future__ import annotations

import copy
import functools
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import jsonschema
import numpy as np
from flask import Blueprint, Request, Response, current_app, g, jsonify, request
from flask.blueprints import BlueprintSetupState
from jsonschema.exceptions import best_match

from decoder_api.engines.base import Final, UnsupportedSampleRate
from decoder_api.http.auth import Forbidden, SessionCredentials, bearer
from decoder_api.http.routes.v1 import InvalidRequest, request_json
from decoder_api.http.service import EXTENSION as SERVICE_EXTENSION
from decoder_api.http.service import DecoderService, service
from decoder_api.sessions.errors import SessionExpired, SessionNotFound
from decoder_api.sessions.session import Session, SessionConfig
from decoder_api.sessions.store import SessionStore

logger = logging.getLogger(__name__)

EXTENSION = "decoder.compat"
INT16_MIN, INT16_MAX = -32768, 32767
ROUTING_KEYS = ("broker", "topic")

DECODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["audio", "sample_rate", "id"],
    "properties": {
        "audio": {
            "type": "array",
            "description": "Mono PCM samples, signed 16-bit, at sample_rate",
            "items": {"type": "integer", "minimum": INT16_MIN, "maximum": INT16_MAX},
        },
        "sample_rate": {"type": "integer", "minimum": 1, "maximum": 192000},
        "do_finalize": {"type": "boolean", "default": False},
        "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "The caller's stream"},
        "broker": {"type": "string", "description": "Ignored: the server's own Kafka settings apply"},
        "topic": {"type": "string", "description": "Ignored: the server's own Kafka settings apply"},
    },
}


def _shape_schema() -> dict[str, Any]:
    """``DECODE_SCHEMA`` without the per-sample rule, which ``int16_pcm`` checks ~200x faster."""
    schema = copy.deepcopy(DECODE_SCHEMA)
    del schema["properties"]["audio"]["items"]
    return schema


SHAPE_VALIDATOR = jsonschema.Draft7Validator(_shape_schema())

blueprint = Blueprint("compat", __name__)


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    stream_id: str
    pcm: bytes
    sample_rate_hz: int
    finalize: bool
    ignored: tuple[str, ...]


class CompatStreams:
    """The callers' stream ids → their sessions: bounded, thread-safe, forgets ids whose session is gone."""

    def __init__(self, store: SessionStore, max_ids: int) -> None:
        self._store = store
        self._max_ids = max(1, max_ids)
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        self._routing_noted = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def session_for(self, stream_id: str, owner_key_hash: str | None, config: SessionConfig) -> Session:
        """The stream's live session, or a new one (503 when the store is full)."""
        key = (owner_key_hash or "", stream_id)
        with self._lock:
            session = self._live(key)
            if session is None:
                session, _ = self._store.open(config, owner_key_hash)
                self._ids[key] = session.id
                self._bound()
                logger.info("decode_stream_opened session_id=%s", session.id)
            self._ids.move_to_end(key)
        if session.config.sample_rate_hz != config.sample_rate_hz:
            raise UnsupportedSampleRate(
                f"stream {stream_id!r} sends {session.config.sample_rate_hz} Hz audio, "
                f"not {config.sample_rate_hz} Hz"
            )
        return session

    def note_ignored(self, keys: Sequence[str]) -> None:
        """Log, once per process, that callers send routing keys the server ignores."""
        with self._lock:
            if not keys or self._routing_noted:
                return
            self._routing_noted = True
        logger.warning(
            "decode_routing_ignored keys=%s (the server's own Kafka settings apply)", ",".join(keys)
        )

    def _live(self, key: tuple[str, str]) -> Session | None:
        """The mapped session if it is still open; a dead mapping is dropped (caller holds the lock)."""
        session_id = self._ids.get(key)
        if session_id is None:
            return None
        session = self._find(session_id, key[0] or None)
        if session is None:
            del self._ids[key]
        return session

    def _find(self, session_id: str, owner_key_hash: str | None) -> Session | None:
        try:
            session = self._store.get(session_id, functools.partial(same_owner, owner_key_hash))
        except (SessionNotFound, SessionExpired):
            return None
        return session if session.state == "open" else None

    def _bound(self) -> None:
        """Drop dead mappings, then the least recently used, past the bound (caller holds the lock)."""
        if len(self._ids) <= self._max_ids:
            return
        for key, session_id in list(self._ids.items()):
            if self._find(session_id, key[0] or None) is None:
                del self._ids[key]
        while len(self._ids) > self._max_ids:
            self._ids.popitem(last=False)  # its session stays until it expires


def same_owner(owner_key_hash: str | None, session: SessionCredentials) -> None:
    """A ``/decode`` stream is its caller's by the API key that opened it (no key: the stream id
    alone, as in the seed's protocol); anyone else's session is refused."""
    owner = session.owner_key_hash
    if owner_key_hash is None and owner is None:
        return
    if owner_key_hash is None or owner is None or not hmac.compare_digest(owner_key_hash, owner):
        raise Forbidden("this stream belongs to another API key")


@blueprint.record_once
def attach_streams(state: BlueprintSetupState) -> None:
    svc: DecoderService = state.app.extensions[SERVICE_EXTENSION]
    state.app.extensions[EXTENSION] = CompatStreams(svc.sessions, svc.settings.max_sessions)


def compat_streams() -> CompatStreams:
    streams: CompatStreams = current_app.extensions[EXTENSION]
    return streams


@blueprint.before_request
def require_api_key() -> None:
    svc = service()
    request.environ["decoder.key_hash"] = svc.api_keys.verify(bearer(request))


@blueprint.post("/decode")
def decode() -> Response:
    svc = service()
    body = decode_request(request)
    streams = compat_streams()
    streams.note_ignored(body.ignored)
    config = SessionConfig(sample_rate_hz=body.sample_rate_hz, words=True, user_id=body.stream_id)
    session = streams.session_for(body.stream_id, request.environ.get("decoder.key_hash"), config)
    partial, finals = "", []
    with session.locked():
        started = time.perf_counter()
        if body.pcm:
            result = session.feed(body.pcm)
            partial, finals = result.partial, list(result.finals)
        if body.finalize:
            finals += session.finalize()
        decode_s = time.perf_counter() - started
    if body.pcm:
        svc.metrics.observe_chunk(g.received_at, decode_s, len(body.pcm) / 2 / body.sample_rate_hz)
    return jsonify(answer(partial, finals, body.finalize))


def answer(partial: str, finals: Sequence[Final], finalized: bool) -> dict[str, Any]:
    """The seed's ``{"hstr", "confidence"}`` for what one request produced."""
    if not finals:
        return {"hstr": "" if finalized else partial, "confidence": 0.0}
    words = [w for f in finals for w in (f.words or ())]
    confidence = fmean(w.conf for w in words) if words else 0.0
    return {"hstr": " ".join(f.text for f in finals), "confidence": confidence}


def decode_request(req: Request) -> DecodeRequest:
    body = request_json(req, force=True)
    if not isinstance(body, dict):
        raise InvalidRequest(
            'the body must be a JSON object: {"audio": [...], "sample_rate": 16000, "id": ...}'
        )
    error = best_match(SHAPE_VALIDATOR.iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        raise InvalidRequest(f"{where}: {error.message}")
    return DecodeRequest(
        stream_id=body["id"],
        pcm=int16_pcm(body["audio"]),
        sample_rate_hz=int(body["sample_rate"]),
        finalize=body.get("do_finalize", False),
        ignored=tuple(k for k in ROUTING_KEYS if k in body),
    )


def int16_pcm(samples: list[Any]) -> bytes:
    """JSON integers in the int16 range → s16le bytes; anything else is a 400."""
    if not all(type(s) is int for s in samples):
        raise InvalidRequest("audio: every sample must be an integer")
    if samples and (min(samples) < INT16_MIN or max(samples) > INT16_MAX):
        raise InvalidRequest(f"audio: samples must lie within [{INT16_MIN}, {INT16_MAX}]")
    return np.asarray(samples, dtype="<i2").tobytes()
