"""The OpenAPI 3.0.3 document of the service (served at ``/openapi.json``).

Request schemas are the ones the routes validate with (``SESSION_SCHEMA``, ``DECODE_SCHEMA``,
the stream's ``CONFIG_SCHEMA``), so the document cannot drift from the code. The WebSocket
``/v1/stream`` appears as its upgrade request plus an ``x-websocket`` description of the
messages; the full protocol and close codes are in ``decoder_api/http/routes/stream.py``.
"""

from __future__ import annotations

import copy
from http import HTTPStatus
from typing import Any

from decoder_api.errors import ERROR_CODES, codes_with_status
from decoder_api.http.routes.compat import DECODE_SCHEMA
from decoder_api.http.routes.stream import CONFIG_SCHEMA
from decoder_api.http.routes.v1 import FILE_TYPES, SESSION_SCHEMA
from decoder_api.http.routes.v2 import AUDIO_INPUT, TEXT_OUTPUT, UTTERANCES_OUTPUT

VERSION = "1.0.0"
JSON = "application/json"

Schema = dict[str, Any]


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema(name: str) -> Schema:
    return ref("schemas", name)


def obj(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def json_body(body: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": body}}}


def ok(description: str, body: Schema | None = None, media: str = JSON) -> Schema:
    response: Schema = {"description": description, "headers": {"X-Request-Id": ref("headers", "RequestId")}}
    if body is not None:
        response["content"] = {media: {"schema": body}}
    return response


def errors(*statuses: int) -> dict[str, Schema]:
    return {str(status): ref("responses", RESPONSE_NAMES[status]) for status in statuses}


# The components' name of each error status; the codes under each come from ``ERROR_CODES``.
RESPONSE_NAMES: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "RequestTimeout",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "Unprocessable",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "Unavailable",
}
# Answers that come from the framework, not from a ``DecoderError`` (see ``decoder_api/http/app.py``).
FRAMEWORK_ANSWERS: dict[int, str] = {
    413: "`request_entity_too_large`: the body is over `DECODER_MAX_BODY_BYTES`",
    500: "`internal`: an unexpected failure (`request_id` finds its log line)",
}
RETRY_AFTER_STATUSES = frozenset({409, 429, 503})


def error_statuses() -> list[int]:
    return sorted({entry.status for entry in ERROR_CODES.values()} | FRAMEWORK_ANSWERS.keys())


def status_description(status: int) -> str:
    """The status's phrase, then a Markdown list of its codes (``- `session_ended`: the session ended``)."""
    answers = [f"`{entry.code}`: {entry.summary}" for entry in codes_with_status(status)]
    if status in FRAMEWORK_ANSWERS:
        answers.append(FRAMEWORK_ANSWERS[status])
    return f"{HTTPStatus(status).phrase}:\n" + "\n".join(f"- {answer}" for answer in answers)


def error_response(status: int) -> Schema:
    response = json_body(schema("Error"), status_description(status))
    if status in RETRY_AFTER_STATUSES:
        response["headers"] = {"Retry-After": ref("headers", "RetryAfter")}
    return response


def error_responses() -> dict[str, Schema]:
    return {RESPONSE_NAMES[status]: error_response(status) for status in error_statuses()}


def schemas() -> dict[str, Schema]:
    word = obj(
        ["word", "start_ms", "end_ms", "conf"],
        word={"type": "string"},
        start_ms={"type": "integer", "description": "From the start of the stream"},
        end_ms={"type": "integer"},
        conf={"type": "number", "minimum": 0, "maximum": 1},
    )
    final = obj(
        ["utterance", "text", "start_ms", "end_ms"],
        utterance={"type": "integer", "minimum": 0, "description": "Index of the utterance in its stream"},
        text={"type": "string"},
        start_ms={"type": "integer"},
        end_ms={"type": "integer"},
        words={"type": "array", "items": schema("Word"), "description": "Only when words were requested"},
    )
    finals = {"type": "array", "items": schema("Final")}
    snapshot = obj(
        [
            "session_id",
            "state",
            "user_id",
            "sample_rate",
            "audio_ms",
            "utterances",
            "transcript",
            "created_at",
        ],
        session_id={"type": "string"},
        state={"type": "string", "description": "`open` until the session is ended or expires"},
        user_id={"type": "string"},
        sample_rate={"type": "integer"},
        audio_ms={"type": "integer"},
        utterances={"type": "integer"},
        transcript={"type": "string"},
        created_at={"type": "number", "description": "Unix time, seconds"},
        finals=finals,
    )
    return {
        "Error": {
            **obj(
                ["error", "message"],
                error={
                    "type": "string",
                    "description": "A stable code, e.g. `capacity`",
                    "example": "capacity",
                },
                message={"type": "string", "description": "For people; may change"},
                request_id={
                    "type": "string",
                    "description": "Present on internal errors, to find the log line",
                },
            ),
            "additionalProperties": True,
        },
        "Word": word,
        "Final": final,
        "SessionOptions": copy.deepcopy(SESSION_SCHEMA),
        "SessionOpened": obj(
            ["session_id", "token", "sample_rate", "engine", "model", "language"],
            session_id={"type": "string"},
            token={"type": "string", "description": "Send as `X-Session-Token` to drive the session"},
            sample_rate={"type": "integer"},
            engine={"type": "string", "enum": ["vosk", "whisper"]},
            model={"type": "string"},
            language={"type": "string"},
        ),
        "ChunkResult": obj(
            ["partial", "finals", "audio_ms"],
            partial={"type": "string", "description": "Hypothesis of the open utterance"},
            finals={**finals, "description": "Utterances this chunk completed (usually none)"},
            audio_ms={"type": "integer", "description": "Audio received so far"},
        ),
        "SessionEnd": obj(
            ["finals", "transcript", "audio_ms"],
            finals={**finals, "description": "Utterances the flush completed"},
            transcript={"type": "string", "description": "All finals of the session"},
            audio_ms={"type": "integer"},
        ),
        "SessionState": snapshot,
        "Transcription": obj(
            ["text", "utterances", "audio_ms"],
            text={"type": "string"},
            utterances=finals,
            audio_ms={"type": "integer"},
        ),
        "DecodeRequest": copy.deepcopy(DECODE_SCHEMA),
        "DecodeResponse": obj(
            ["hstr", "confidence"],
            hstr={
                "type": "string",
                "description": "Text of the current utterance (partial, or final when it ended)",
            },
            confidence={"type": "number", "minimum": 0, "maximum": 1, "description": "0.0 for a partial"},
        ),
        "StreamConfig": copy.deepcopy(CONFIG_SCHEMA),
        "Health": obj(["status"], status={"type": "string", "enum": ["ok"]}),
        **inference_schemas(),
        "Readiness": {
            **obj(
                ["status", "checks"],
                status={"type": "string", "enum": ["ready", "not_ready"]},
                checks=obj(
                    ["model", "accepting_sessions"],
                    model={"type": "string", "description": "`loaded`, `loading` or why it failed"},
                    accepting_sessions={"type": "boolean"},
                ),
                allocator={
                    "type": "string",
                    "description": "The memory allocator this instance runs on, as loaded: `jemalloc` "
                    "(the default), `glibc`, … Every instance of a deployment should run the same one",
                },
                graph={
                    "type": "string",
                    "description": "Once the model has loaded, the decoding graph its engine searches (Vosk: "
                    "`static`, `lookahead` or `model`; absent for whisper). Every instance of a "
                    "deployment should search the same one",
                },
                error={"type": "string"},
                message={"type": "string"},
            ),
        },
    }


SESSION_AUTH: list[Schema] = [{"apiKey": [], "sessionToken": []}, {"apiKey": []}, {"sessionToken": []}]
KEY_AUTH: list[Schema] = [{"apiKey": []}, {}]
OPEN: list[Schema] = []


def operation(summary: str, security: list[Schema], responses: dict[str, Schema], **extra: Any) -> Schema:
    op: Schema = {"summary": summary, "security": security, "responses": responses}
    op.update(extra)
    return op


def session_paths() -> dict[str, Schema]:
    session_id = [ref("parameters", "SessionId")]
    return {
        "/v1/sessions": {
            "post": operation(
                "Open a streaming session",
                KEY_AUTH,
                {
                    "201": ok("The session and its token", schema("SessionOpened")),
                    **errors(400, 401, 408, 413, 415, 422, 429, 503),
                },
                operationId="openSession",
                tags=["sessions"],
                requestBody={
                    "required": False,
                    "description": "Options; an empty body means all defaults (16000 Hz, no words)",
                    "content": {JSON: {"schema": schema("SessionOptions")}},
                },
            ),
        },
        "/v1/sessions/{session_id}": {
            "parameters": session_id,
            "get": operation(
                "The session's state and finals so far",
                SESSION_AUTH,
                {"200": ok("State and finals", schema("SessionState")), **errors(401, 403, 404)},
                operationId="getSession",
                tags=["sessions"],
            ),
            "delete": operation(
                "Delete the session now (an open one is flushed first, so no final is lost)",
                SESSION_AUTH,
                {"204": ok("Deleted"), **errors(401, 403, 404, 409)},
                operationId="deleteSession",
                tags=["sessions"],
            ),
        },
        "/v1/sessions/{session_id}/audio": {
            "parameters": session_id,
            "post": operation(
                "Decode one chunk of raw PCM",
                SESSION_AUTH,
                {
                    "200": ok("The partial and any finals", schema("ChunkResult")),
                    **errors(400, 401, 403, 404, 408, 409, 413, 415, 422),
                },
                operationId="feedAudio",
                tags=["sessions"],
                requestBody={
                    "required": True,
                    "description": "Signed 16-bit little-endian mono PCM at the session's rate, whole "
                    "samples. `audio/L16; rate=N` must name the session's rate.",
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "audio/L16": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
            ),
        },
        "/v1/sessions/{session_id}/end": {
            "parameters": session_id,
            "post": operation(
                "End the stream: flush the open utterance and release the recognizer",
                SESSION_AUTH,
                {
                    "200": ok("The flushed finals and the whole transcript", schema("SessionEnd")),
                    **errors(401, 403, 404, 409),
                },
                operationId="endSession",
                tags=["sessions"],
            ),
        },
    }


def other_paths() -> dict[str, Schema]:
    audio_file = {"schema": {"type": "string", "format": "binary"}}
    return {
        "/v1/transcribe": {
            "post": operation(
                "Transcribe a whole audio file (WAV, FLAC, MP3, OGG, …), decoded like a live stream",
                KEY_AUTH,
                {
                    "200": ok("The transcript", schema("Transcription")),
                    **errors(400, 401, 408, 413, 415, 422, 429, 503),
                },
                operationId="transcribe",
                tags=["transcription"],
                parameters=[
                    {
                        "name": "words",
                        "in": "query",
                        "required": False,
                        "description": "Include word timings",
                        "schema": {"type": "boolean", "default": False},
                    }
                ],
                requestBody={
                    "required": True,
                    "content": {media: audio_file for media in sorted(FILE_TYPES)},
                },
            ),
        },
        "/decode": {
            "post": operation(
                "Seed-compatible decode: one piece of a caller's stream (decoder_api/http/routes/compat.py)",
                KEY_AUTH,
                {
                    "200": ok("The current utterance's text", schema("DecodeResponse")),
                    **errors(400, 401, 408, 409, 413, 422, 429, 503),
                },
                operationId="decode",
                tags=["compatibility"],
                requestBody={"required": True, "content": {JSON: {"schema": schema("DecodeRequest")}}},
            ),
        },
        "/v1/stream": {
            "get": operation(
                "WebSocket upgrade for the Vosk server protocol",
                [{"apiKey": []}, {"apiKeyQuery": []}, {}],
                {
                    "101": {
                        "description": "Switching Protocols: the stream runs on the socket (see x-websocket)"
                    },
                    **errors(400, 401, 429),
                },
                operationId="stream",
                tags=["streaming"],
                description=STREAM_DESCRIPTION,
            ),
        },
    }


def ops_paths() -> dict[str, Schema]:
    return {
        "/healthz": {
            "get": operation(
                "Liveness",
                OPEN,
                {"200": ok("The process answers", schema("Health"))},
                operationId="healthz",
                tags=["operations"],
            )
        },
        "/readyz": {
            "get": operation(
                "Readiness: the model is loaded and sessions are accepted",
                OPEN,
                {
                    "200": ok("Ready", schema("Readiness")),
                    "503": {
                        "description": "Not ready: the model is loading or failed, or shutting down",
                        "content": {JSON: {"schema": schema("Readiness")}},
                    },
                },
                operationId="readyz",
                tags=["operations"],
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics (decoder_active_sessions, decoder_decode_seconds, …)",
                OPEN,
                {"200": ok("Text exposition format", {"type": "string"}, media="text/plain")},
                operationId="metrics",
                tags=["operations"],
            )
        },
        "/openapi.json": {
            "get": operation(
                "This document",
                OPEN,
                {"200": ok("OpenAPI 3.0.3", {"type": "object"})},
                operationId="openapi",
                tags=["operations"],
            )
        },
    }


def inference_schemas() -> dict[str, Schema]:
    """The Open Inference Protocol (KServe V2) bodies, as far as this server uses them."""
    parameters = {"type": "object", "additionalProperties": True}
    tensor_meta = obj(
        ["name", "datatype", "shape"],
        name={"type": "string"},
        datatype={"type": "string"},
        shape={"type": "array", "items": {"type": "integer"}},
    )
    tensor = obj(
        ["name", "datatype", "shape"],
        name={"type": "string", "description": f"Any name; the model takes one input (`{AUDIO_INPUT}`)"},
        datatype={"type": "string", "enum": ["BYTES"]},
        shape={"type": "array", "items": {"type": "integer", "minimum": 0}, "example": [1]},
        parameters={
            **parameters,
            "description": '`content_type`: `"base64"` (JSON strings are base64 by default here); '
            "`binary_data_size` with the binary tensor extension (`Inference-Header-Content-Length`)",
        },
        data={"type": "array", "items": {}, "description": "The audio file, base64-encoded"},
    )
    return {
        "InferenceError": {
            **obj(
                ["error"],
                error={"type": "string", "description": "What went wrong, for people"},
                code={"type": "string", "description": "The stable code, as in the native API's errors"},
            ),
            "additionalProperties": True,
        },
        "InferenceRequest": obj(
            ["inputs"],
            id={"type": "string"},
            parameters={
                **parameters,
                "description": "`words` (boolean: word timings in the utterances), `language` (the model's)",
            },
            inputs={"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
            outputs={"type": "array", "items": obj(["name"], name={"type": "string"}, parameters=parameters)},
        ),
        "InferenceResponse": obj(
            ["model_name", "outputs"],
            model_name={"type": "string"},
            model_version={"type": "string"},
            id={"type": "string"},
            parameters={**parameters, "description": "`audio_ms`: the audio's length"},
            outputs={
                "type": "array",
                "description": f"`{TEXT_OUTPUT}`: the transcript; `{UTTERANCES_OUTPUT}`: a JSON array of "
                "the utterances (Final), with words when asked for",
                "items": obj(
                    ["name", "datatype", "shape", "data"],
                    name={"type": "string"},
                    datatype={"type": "string"},
                    shape={"type": "array", "items": {"type": "integer"}},
                    parameters=parameters,
                    data={"type": "array", "items": {"type": "string"}},
                ),
            },
        ),
        "ServerMetadata": obj(
            ["name", "version", "extensions"],
            name={"type": "string"},
            version={"type": "string"},
            extensions={"type": "array", "items": {"type": "string"}},
        ),
        "ModelMetadata": obj(
            ["name", "platform", "inputs", "outputs"],
            name={"type": "string"},
            versions={"type": "array", "items": {"type": "string"}},
            platform={"type": "string"},
            inputs={"type": "array", "items": tensor_meta},
            outputs={"type": "array", "items": tensor_meta},
            parameters=parameters,
        ),
    }


def inference_errors(*statuses: int) -> dict[str, Schema]:
    """Error responses in the protocol's shape, their codes from the same registry."""
    inference_error = json_body(schema("InferenceError"), "")
    return {
        str(status): {**inference_error, "description": status_description(status)} for status in statuses
    }


def inference_paths() -> dict[str, Schema]:
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    state = {"type": "object", "additionalProperties": True}
    return {
        "/v2": {
            "get": operation(
                "Server metadata",
                OPEN,
                {"200": ok("Name and version", schema("ServerMetadata"))},
                operationId="v2ServerMetadata",
                tags=["inference"],
            )
        },
        "/v2/health/live": {
            "get": operation(
                "Liveness",
                OPEN,
                {"200": ok("The process answers", state)},
                operationId="v2Live",
                tags=["inference"],
            )
        },
        "/v2/health/ready": {
            "get": operation(
                "Readiness: the model has loaded",
                OPEN,
                {"200": ok("Ready", state), **inference_errors(503)},
                operationId="v2Ready",
                tags=["inference"],
            )
        },
        "/v2/models/{name}": {
            "parameters": name,
            "get": operation(
                "Model metadata: the loaded model's name, inputs and outputs",
                KEY_AUTH,
                {"200": ok("The model", schema("ModelMetadata")), **inference_errors(401, 404)},
                operationId="v2ModelMetadata",
                tags=["inference"],
            ),
        },
        "/v2/models/{name}/ready": {
            "parameters": name,
            "get": operation(
                "Model readiness",
                KEY_AUTH,
                {"200": ok("The model has loaded", state), **inference_errors(401, 404, 503)},
                operationId="v2ModelReady",
                tags=["inference"],
            ),
        },
        "/v2/models/{name}/infer": {
            "parameters": name,
            "post": operation(
                "Transcribe one audio file carried by a BYTES tensor (as POST /v1/transcribe)",
                KEY_AUTH,
                {
                    "200": ok("The transcript and the utterances", schema("InferenceResponse")),
                    **inference_errors(400, 401, 404, 408, 413, 415, 422, 429, 503),
                },
                operationId="v2Infer",
                tags=["inference"],
                requestBody={
                    "required": True,
                    "content": {
                        JSON: {"schema": schema("InferenceRequest")},
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "description": "Binary tensor extension: the JSON request (its length in "
                                "`Inference-Header-Content-Length`) followed by the tensor data",
                            },
                        },
                    },
                },
            ),
        },
    }


STREAM_DESCRIPTION = (
    "A WebSocket speaking the Vosk server protocol. Optional first text frame "
    '`{"config": {...}}` (StreamConfig; no reply), then binary frames of s16le mono PCM, each '
    'answered by exactly one `{"partial": "..."}` or `{"text": "...", "result": [...]}` (word '
    'times in seconds). `{"eof": 1}` → the last result and a normal close; `{"reset": 1}` → the '
    "open utterance is finalised and returned. Mistakes get one "
    '`{"error": code, "message": ...}` reply. Close codes: 1000 normal, 1001 idle/expired/'
    "shutting down, 1007 invalid frame data, 1008 config refused (e.g. a `model` key), 1009 frame "
    "too big, 1011 internal error, 1013 at capacity or model loading."
)


def x_websocket() -> Schema:
    return {
        "path": "/v1/stream",
        "protocol": "Vosk server (alphacep/vosk-server websocket/asr_server.py)",
        "documentation": "decoder_api/http/routes/stream.py",
        "client_messages": {
            "config": {
                "description": "Optional first text frame",
                "schema": {"config": schema("StreamConfig")},
            },
            "audio": "Binary frame: signed 16-bit little-endian mono PCM at the configured rate",
            "eof": '{"eof": 1}',
            "reset": '{"reset": 1}',
        },
        "server_messages": {
            "partial": '{"partial": "..."}',
            "result": '{"text": "...", "result": [{"conf": 0.98, "start": 1.23, "end": 1.5, "word": "..."}]}',
            "alternatives": '{"alternatives": [{"text": "...", "confidence": 0.93}]} (max_alternatives > 0)',
            "error": schema("Error"),
        },
        "close_codes": {
            "1000": "normal: after the reply to eof",
            "1001": "going away: idle for DECODER_SESSION_IDLE_S, session expired, or shutting down",
            "1007": "invalid frame data (WebSocket layer)",
            "1008": "policy violation: config refused (server-only key such as model, unknown key, bad type)",
            "1009": "message too big: a frame over DECODER_MAX_BODY_BYTES (WebSocket layer)",
            "1011": "internal error",
            "1013": "try again later: at capacity, or the model is still loading",
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may modify it)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "decoder_api",
            "version": VERSION,
            "description": "Streaming speech recognition. Native API under /v1 (HTTP sessions fed with raw "
            "PCM, whole-file transcription), the Vosk WebSocket protocol at /v1/stream (see x-websocket), "
            "the seed-compatible POST /decode, and the Open Inference Protocol (KServe V2) under /v2, whose "
            'errors keep that protocol\'s shape `{"error": message, "code": code}`. Other errors are JSON: '
            '`{"error": code, "message": ...}`. ' + STREAM_DESCRIPTION,
        },
        "tags": [
            {"name": "sessions", "description": "Native streaming API"},
            {"name": "transcription", "description": "Whole files"},
            {"name": "streaming", "description": "WebSocket, Vosk protocol"},
            {"name": "compatibility", "description": "The original service's endpoint"},
            {"name": "operations", "description": "Health, readiness, metrics, this document"},
            {"name": "inference", "description": "Open Inference Protocol (KServe V2) REST, whole files"},
        ],
        "paths": {**ops_paths(), **session_paths(), **other_paths(), **inference_paths()},
        "components": {
            "schemas": schemas(),
            "responses": error_responses(),
            "parameters": {
                "SessionId": {
                    "name": "session_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer"},
                },
                "RequestId": {
                    "description": "The request's id (the client's X-Request-Id, or a new one), as logged",
                    "schema": {"type": "string"},
                },
            },
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API key (`Authorization: Bearer <key>`), required when the server has "
                    "keys configured (DECODER_API_KEYS, DECODER_API_KEYS_FILE)",
                },
                "apiKeyQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "api_key",
                    "description": "The API key as a query parameter; on the WebSocket /v1/stream only",
                },
                "sessionToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Session-Token",
                    "description": "The token from POST /v1/sessions (also accepted as `?token=`; without "
                    "API keys configured, also as the bearer). Not needed when the API key that "
                    "opened the session is sent.",
                },
            },
        },
        "x-websocket": x_websocket(),
    }
