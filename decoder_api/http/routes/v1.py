"""The native JSON API: sessions fed with raw PCM over HTTP, and whole-file transcription."""

from __future__ import annotations

import functools
import time
from typing import Any

import jsonschema
from flask import Blueprint, Request, Response, g, jsonify, request

from decoder_api.audio import InvalidChannels, chunk_bytes, decode_bytes, iter_chunks
from decoder_api.engines import native_rate_hz
from decoder_api.engines.base import InvalidAudio, UnsupportedSampleRate
from decoder_api.errors import DecoderError, EmptyAudio
from decoder_api.http.auth import authorize_session, bearer, session_token
from decoder_api.http.service import DecoderService, service
from decoder_api.sessions.channels import MAX_SPEAKER_CHARS, MONO, ChannelLayout, channel_layout, check_frames
from decoder_api.sessions.registry import SessionRecord
from decoder_api.sessions.session import Session, SessionConfig
from decoder_api.sessions.store import Authorize
from decoder_api.sessions.transcripts import final_to_dict

blueprint = Blueprint("v1", __name__, url_prefix="/v1")

PCM_TYPES = frozenset({"application/octet-stream", "audio/l16"})
FILE_TYPES = frozenset(
    {
        "application/octet-stream",
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/flac",
        "audio/x-flac",
        "audio/mpeg",
        "audio/mp3",
        "audio/ogg",
        "audio/webm",
        "audio/mp4",
        "audio/aac",
    }
)
CHUNK_SEQ_HEADER = "X-Chunk-Seq"
QUERY_BOOLEANS = {"true": True, "false": False}
SERVER_ONLY_KEYS = frozenset({"model", "engine", "broker", "topic", "model_path", "path"})

SESSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sample_rate": {"type": "integer", "minimum": 1, "maximum": 192000},
        "user_id": {"type": "string", "maxLength": 128},
        "words": {"type": "boolean"},
        "phrases": {"type": "array", "maxItems": 1000, "items": {"type": "string", "maxLength": 200}},
        "max_alternatives": {"type": "integer", "minimum": 0, "maximum": 10},
        "metadata": {"type": "object", "maxProperties": 32},
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


class InvalidRequest(DecoderError):
    code = "invalid_request"


class UnsupportedMediaType(DecoderError):
    code = "unsupported_media_type"


@blueprint.before_request
def require_api_key() -> None:
    svc = service()
    request.environ["decoder.key_hash"] = svc.api_keys.verify(bearer(request))


@blueprint.post("/sessions")
def open_session() -> tuple[Response, int]:
    svc = service()
    config = session_config(json_body(request))
    session, token = svc.sessions.open(config, owner_key_hash=request.environ.get("decoder.key_hash"))
    engine = svc.engine.get()
    body = {
        "session_id": session.id,
        "token": token,
        "sample_rate": config.sample_rate_hz,
        "channels": config.layout.channels,
        "speakers": list(config.layout.speakers),
        "engine": engine.name,
        "model": engine.model.name,
        "language": engine.model.language,
    }
    return jsonify(body), 201


@blueprint.post("/sessions/<session_id>/audio")
def feed_audio(session_id: str) -> Response:
    svc, session = authorized_session(session_id)
    layout = session.config.layout
    pcm = pcm_body(request, session.config.sample_rate_hz, layout)
    seq = chunk_seq(request)
    with session.locked():
        started = time.perf_counter()
        result = session.feed(pcm) if seq is None else session.feed_numbered(seq, pcm)
        partials = session.partials()
        decode_s = time.perf_counter() - started
    audio_s = len(pcm) / layout.frame_bytes / session.config.sample_rate_hz
    svc.metrics.observe_chunk(g.received_at, decode_s, audio_s)
    finals = [final_to_dict(f) for f in result.finals]
    body = {"partial": result.partial, "finals": finals, "audio_ms": result.audio_ms}
    if layout.stereo:
        body["partials"] = channel_partials(layout, partials)
    response = jsonify(body)
    if seq is not None:
        response.headers[CHUNK_SEQ_HEADER] = str(seq)  # tells the client retries of this chunk are safe
    return response


@blueprint.post("/sessions/<session_id>/end")
def end_session(session_id: str) -> Response:
    svc, session = authorized_session(session_id)
    finals = svc.sessions.end(session)
    body = {"finals": [final_to_dict(f) for f in finals], "transcript": session.transcript}
    return jsonify(body | {"audio_ms": session.audio_ms})


@blueprint.get("/sessions/<session_id>")
def get_session(session_id: str) -> Response:
    """Any instance answers: the owner from memory, the others from the registry."""
    svc = service()
    found = svc.sessions.describe(session_id, caller_authorization(svc))
    if isinstance(found, SessionRecord):
        return jsonify(record_snapshot(found))
    return jsonify(found.snapshot() | {"finals": [final_to_dict(f) for f in found.finals]})


def channel_partials(layout: ChannelLayout, partials: tuple[str, ...]) -> list[dict[str, Any]]:
    """A stereo session's partial of each channel: ``[{"channel", "speaker", "text"}]``."""
    return [
        {"channel": channel, "speaker": speaker, "text": text}
        for channel, (speaker, text) in enumerate(zip(layout.speakers, partials, strict=False))
    ]


def record_snapshot(record: SessionRecord) -> dict[str, Any]:
    rate = int(record.config["sample_rate_hz"])
    return {
        "session_id": record.session_id,
        "state": "open",
        "owner": record.owner,
        "user_id": record.config.get("user_id", ""),
        "sample_rate": rate,
        "channels": int(record.config.get("channels", 1)),
        "speakers": list(record.config.get("speakers", [])),
        "audio_ms": record.position_samples * 1000 // rate,
        "utterances": len(record.finals),
        "transcript": " ".join(f.text for f in record.finals),
        "finals": [final_to_dict(f) for f in record.finals],
        "created_at": record.created_at,
        "next_seq": record.next_seq,
    }


@blueprint.delete("/sessions/<session_id>")
def delete_session(session_id: str) -> tuple[str, int]:
    svc, session = authorized_session(session_id)
    svc.sessions.delete(session)
    return "", 204


@blueprint.post("/transcribe")
def transcribe() -> Response:
    """A whole audio file in the body (WAV/FLAC/MP3/OGG…); decoded like a live stream."""
    svc = service()
    require_content_type(request, FILE_TYPES)
    words = query_bool(request, "words")
    layout = query_layout(request)
    return jsonify(transcribe_file(svc, request.get_data(cache=False), words, layout))


def query_layout(req: Request) -> ChannelLayout:
    """``?channels=2&speakers=agent,customer``: a stereo file with one speaker per channel."""
    raw = req.args.get("channels")
    if raw is None and "speakers" not in req.args:
        return MONO
    channels: Any = int(raw) if raw is not None and raw.isdigit() and len(raw) < 4 else raw
    names = req.args.get("speakers")
    return channel_layout(1 if channels is None else channels, None if names is None else names.split(","))


def transcribe_file(
    svc: DecoderService, data: bytes, words: bool, layout: ChannelLayout = MONO
) -> dict[str, Any]:
    """Decode a whole audio file through a session of its own, as a live stream would be:
    ``{"text", "utterances", "audio_ms"}``. Shared by ``/v1/transcribe`` and the v2 protocol.
    A stereo ``layout`` decodes each channel on its own; utterances carry channel and speaker."""
    audio = decode_bytes(data, target_rate(svc), layout.channels)
    config = SessionConfig(sample_rate_hz=audio.sample_rate_hz, words=words, partials=False, layout=layout)
    session, _ = svc.sessions.open(config, owner_key_hash=request.environ.get("decoder.key_hash"))
    finals = []
    size = chunk_bytes(audio.sample_rate_hz, svc.settings.chunk_ms) * layout.channels
    try:
        with session.locked():
            for chunk in iter_chunks(audio.pcm, size):
                finals += session.feed(chunk).finals
    finally:
        finals += svc.sessions.end(session)
        svc.sessions.delete(session)
    utterances = [final_to_dict(f) for f in finals]
    return {"text": " ".join(f.text for f in finals), "utterances": utterances, "audio_ms": audio.duration_ms}


def query_bool(req: Request, name: str) -> bool:
    """A boolean query parameter, spelled ``true`` or ``false`` as the OpenAPI document says."""
    value = QUERY_BOOLEANS.get(req.args.get(name, "false"))
    if value is None:
        raise InvalidRequest(f"query parameter {name} must be true or false")
    return value


def target_rate(svc: DecoderService) -> int:
    return native_rate_hz(svc.engine.get())


def authorized_session(session_id: str) -> tuple[DecoderService, Session]:
    svc = service()
    session = svc.sessions.get(session_id, caller_authorization(svc))
    return svc, session


def caller_authorization(svc: DecoderService) -> Authorize:
    """The check of this request's session token or API key against a session's credentials."""
    token, key_hash = session_token(request, svc.api_keys), request.environ.get("decoder.key_hash")
    return functools.partial(authorize_session, token=token, key_hash=key_hash)


def json_body(req: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body means all defaults."""
    if not req.get_data(cache=True):
        return {}
    if not req.is_json:
        raise UnsupportedMediaType("send the session options as application/json")
    body = request_json(req)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def request_json(req: Request, force: bool = False) -> Any:
    """The parsed JSON body, or None when it is not JSON (including JSON nested too deeply to parse)."""
    try:
        return req.get_json(force=force, silent=True)
    except RecursionError:
        return None


def session_config(body: dict[str, Any]) -> SessionConfig:
    refused = SERVER_ONLY_KEYS & body.keys()
    if refused:
        raise InvalidRequest(f"{', '.join(sorted(refused))} is chosen by the server's configuration only")
    layout = channel_layout(body.get("channels", 1), body.get("speakers"))  # its own error codes
    try:
        jsonschema.validate(body, SESSION_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "body"
        raise InvalidRequest(f"{where}: {exc.message}") from None
    phrases = body.get("phrases")
    return SessionConfig(
        sample_rate_hz=body.get("sample_rate", 16000),
        words=body.get("words", False),
        phrases=tuple(phrases) if phrases is not None else None,
        max_alternatives=body.get("max_alternatives", 0),
        user_id=body.get("user_id", ""),
        metadata=body.get("metadata", {}),
        layout=layout,
    )


def chunk_seq(req: Request) -> int | None:
    """The optional ``X-Chunk-Seq`` header: 0-based chunk number, for safe retries."""
    raw = req.headers.get(CHUNK_SEQ_HEADER)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise InvalidRequest(f"{CHUNK_SEQ_HEADER} must be a non-negative integer")
    return int(raw)


def require_content_type(req: Request, allowed: frozenset[str]) -> None:
    if (req.mimetype or "").lower() not in allowed:
        raise UnsupportedMediaType(f"Content-Type must be one of: {', '.join(sorted(allowed))}")


def pcm_body(req: Request, sample_rate_hz: int, layout: ChannelLayout = MONO) -> bytes:
    """Raw s16le PCM (mono, or interleaved stereo frames); ``audio/L16; rate=N`` must match the
    session's rate (and ``channels=N``, when given, its channel count)."""
    require_content_type(req, PCM_TYPES)
    rate = req.mimetype_params.get("rate")
    if rate is not None and rate != str(sample_rate_hz):
        raise UnsupportedSampleRate(f"the session streams {sample_rate_hz} Hz audio, not {rate} Hz")
    channels = req.mimetype_params.get("channels")
    if channels is not None and channels != str(layout.channels):
        raise InvalidChannels(f"the session streams {layout.channels}-channel audio, not {channels}")
    pcm = req.get_data(cache=False)
    if not pcm:
        raise EmptyAudio("the chunk is empty; send at least one 16-bit sample")
    if len(pcm) % 2:
        raise InvalidAudio(f"PCM must be whole 16-bit samples; got an odd byte count ({len(pcm)})")
    check_frames(pcm, layout)
    return pcm
