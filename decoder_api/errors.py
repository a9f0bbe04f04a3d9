"""Every error code the decoder answers with, once: code -> HTTP status -> one-line summary.

Each code is raised by exactly one ``DecoderError`` subclass, which lives where it is used and
declares only its ``code``; the status comes from ``ERROR_CODES`` when the class is created, so a
code missing from the table, or claimed by two classes, fails at import time. The HTTP layer turns
a ``DecoderError`` into ``{"error": code, "message": ...}`` with the status, the CLI into one line,
and the OpenAPI document lists each status's codes from the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One stable error code, the HTTP status it answers with, and what it means (for people)."""

    code: str
    status: int
    summary: str


def error_table(*entries: ErrorCode) -> Mapping[str, ErrorCode]:
    """The entries by code; a code listed twice is a programming error."""
    table = {entry.code: entry for entry in entries}
    if len(table) != len(entries):
        raise ValueError("an error code is listed twice")
    return MappingProxyType(table)


ERROR_CODES: Mapping[str, ErrorCode] = error_table(
    # Requests the decoder cannot take as they are.
    ErrorCode("invalid_request", 400, "the JSON body or a parameter is malformed"),
    ErrorCode("invalid_audio", 400, "the PCM is not whole 16-bit samples"),
    ErrorCode("incomplete_frame", 400, "a stereo session's PCM is not whole frames (4 bytes: left, right)"),
    ErrorCode("invalid_channels", 400, "`channels` is not 1 or 2, or the audio file has fewer channels"),
    ErrorCode(
        "invalid_speakers",
        400,
        "`speakers` is not one distinct, non-empty, printable name (at most 32 characters) per channel",
    ),
    ErrorCode("empty_audio", 400, "the audio file holds no samples"),
    ErrorCode("invalid_message", 400, "a WebSocket text frame is not one JSON command"),
    ErrorCode("unknown_command", 400, "a WebSocket frame names a command other than config, eof or reset"),
    ErrorCode(
        "invalid_inference_request",
        400,
        "an Open Inference Protocol request is malformed (JSON, tensor datatype or shape, base64)",
    ),
    ErrorCode("invalid_config", 400, "the WebSocket config frame has an unknown key or a bad value"),
    ErrorCode("server_only_option", 400, "the WebSocket config chooses what only the server chooses (model)"),
    ErrorCode("idle_timeout", 400, "the WebSocket sent nothing for `DECODER_SESSION_IDLE_S`"),
    ErrorCode("unauthorized", 401, "an API key or the session's token is missing or not valid"),
    ErrorCode("forbidden", 403, "the token or API key does not belong to this session"),
    ErrorCode("session_not_found", 404, "no such session"),
    ErrorCode("session_expired", 404, "the session expired"),
    ErrorCode("model_not_found", 404, "the configured model is not installed"),
    ErrorCode("unknown_model", 404, "the inference path names a model this server has not loaded"),
    ErrorCode("request_timeout", 408, "the body did not arrive within `DECODER_REQUEST_TIMEOUT_S`"),
    ErrorCode("session_ended", 409, "the session ended"),
    ErrorCode("session_busy", 409, "another request holds the session"),
    ErrorCode("chunk_out_of_order", 409, "the chunk's sequence number is not the next one"),
    ErrorCode("wrong_instance", 409, "another instance owns the session (`Retry-After`: until it lapses)"),
    ErrorCode("unsupported_audio", 415, "the audio file cannot be decoded"),
    ErrorCode("unsupported_media_type", 415, "the Content-Type is not accepted here"),
    ErrorCode("unsupported_sample_rate", 422, "the model or the session does not take this sample rate"),
    ErrorCode("invalid_options", 422, "the recognizer cannot apply the options"),
    ErrorCode("rate_limited", 429, "this client opened too many sessions in the last minute"),
    ErrorCode("too_many_sessions", 429, "this API key's open sessions are at their limit"),
    ErrorCode("invalid_settings", 500, "the server's settings are not valid (at startup and in the CLI)"),
    ErrorCode("graph_build_failed", 500, "a static decoding graph could not be built (CLI only)"),
    ErrorCode("model_download_failed", 502, "the model could not be downloaded"),
    ErrorCode("capacity", 503, "the instance is at its session limit"),
    ErrorCode("not_ready", 503, "the model is loading"),
    ErrorCode("shutting_down", 503, "the instance is shutting down"),
    ErrorCode("registry_unavailable", 503, "the session registry (Redis) cannot be reached"),
    ErrorCode("outbox_unavailable", 503, "the transcript journal cannot be written"),
    ErrorCode("outbox_full", 503, "too many transcripts wait for Kafka"),
    ErrorCode("kafka_error", 503, "the Kafka client failed (`kafka_code` names the error)"),
)

_CLAIMED: dict[str, str] = {}  # code -> "module.QualName" of the one class that raises it


def codes_with_status(status: int) -> list[ErrorCode]:
    return [entry for entry in ERROR_CODES.values() if entry.status == status]


def claim(code: str, owner: str) -> ErrorCode:
    """The table's entry for ``code``, now raised by ``owner`` (a class name); refused if unknown or taken."""
    entry = ERROR_CODES.get(code)
    if entry is None:
        raise TypeError(f"{owner}: error code {code!r} is not in decoder_api.errors.ERROR_CODES")
    if _CLAIMED.setdefault(code, owner) != owner:
        raise TypeError(f"{owner}: error code {code!r} is already raised by {_CLAIMED[code]}")
    return entry


class DecoderError(Exception):
    """Base of every error a user may see; the HTTP layer turns it into JSON, the CLI into one line.

    A subclass declares ``code`` (an entry of ``ERROR_CODES``) and gets its ``status``; a subclass
    without a ``code`` of its own is a family (e.g. the WebSocket's ``StreamError``) and is not raised.
    """

    code: ClassVar[str]
    status: ClassVar[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "status" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: the status comes from ERROR_CODES; declare only code")
        if "code" in cls.__dict__:
            cls.status = claim(cls.code, f"{cls.__module__}.{cls.__qualname__}").status

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ModelNotFound(DecoderError):
    code = "model_not_found"


class ModelDownloadError(DecoderError):
    code = "model_download_failed"


class GraphBuildError(DecoderError):
    code = "graph_build_failed"


class UnsupportedAudio(DecoderError):
    code = "unsupported_audio"


class EmptyAudio(DecoderError):
    code = "empty_audio"
