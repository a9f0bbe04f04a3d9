"""The Open Inference Protocol (KServe V2) REST endpoints, for KServe, Seldon Core and their clients.

``POST /v2/models/<name>/infer`` transcribes one whole audio file carried by a ``BYTES`` tensor
(base64 in JSON with ``parameters.content_type: "base64"``, or raw bytes with the binary tensor
extension), through the same code path as ``/v1/transcribe``. ``<name>`` must be the name of the
model this server loaded; nothing in a request chooses a model, a path or a broker.

Errors keep the protocol's shape, ``{"error": "<message>"}``, with the stable code beside it
(``"code"``) and the same statuses as the native API. Health and server metadata are open like
``/healthz``; the model endpoints need an API key when keys are configured.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from contract import oip
from decoder_api.engines.base import ModelInfo
from decoder_api.errors import DecoderError
from decoder_api.http.auth import bearer
from decoder_api.http.routes.v1 import SERVER_ONLY_KEYS, UnsupportedMediaType, transcribe_file
from decoder_api.http.service import DecoderService, NotReady, service

logger = logging.getLogger(__name__)

blueprint = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "decoder_api"
SERVER_VERSION = "1.0.0"
MODEL_VERSION = "1"
AUDIO_INPUT = "audio"
TEXT_OUTPUT = "text"
UTTERANCES_OUTPUT = "utterances"
OPEN_ENDPOINTS = frozenset({"v2.server_metadata", "v2.server_live", "v2.server_ready"})


class InvalidInferenceRequest(DecoderError):
    code = "invalid_inference_request"


class UnknownModel(DecoderError):
    code = "unknown_model"


@blueprint.before_request
def require_api_key() -> None:
    """Authenticate before the path's model name or the body is looked at."""
    if request.endpoint in OPEN_ENDPOINTS:
        return
    svc = service()
    request.environ["decoder.key_hash"] = svc.api_keys.verify(bearer(request))


@blueprint.errorhandler(DecoderError)
def protocol_error(exc: DecoderError) -> Response:
    extra = dict(exc.extra)
    retry_after = extra.pop("retry_after", None)
    response = jsonify(oip.error_body(exc.message, code=exc.code, **extra))
    response.status_code = exc.status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@blueprint.errorhandler(HTTPException)
def protocol_http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    response = jsonify(oip.error_body(exc.description or code, code=code))
    response.status_code = exc.code or 500
    return response


@blueprint.get("")
def server_metadata() -> Response:
    return jsonify(oip.server_metadata(SERVER_NAME, SERVER_VERSION))


@blueprint.get("/health/live")
def server_live() -> Response:
    return jsonify({"live": True})


@blueprint.get("/health/ready")
def server_ready() -> tuple[Response, int]:
    svc = service()
    ready = svc.engine.ready and not svc.closing
    if not ready:
        return jsonify(oip.error_body(svc.engine.error or "the model is loading", code="not_ready")), 503
    return jsonify({"ready": True}), 200


@blueprint.get("/models/<name>")
def model_metadata(name: str) -> Response:
    model = loaded_model(service(), name)
    inputs = [oip.tensor_metadata(AUDIO_INPUT, oip.BYTES, [1])]
    outputs = [
        oip.tensor_metadata(TEXT_OUTPUT, oip.BYTES, [1]),
        oip.tensor_metadata(UTTERANCES_OUTPUT, oip.BYTES, [1]),
    ]
    body = oip.model_metadata(model.name, MODEL_VERSION, f"decoder_api_{model.engine}", inputs, outputs)
    return jsonify(body | {"parameters": {"language": model.language, "engine": model.engine}})


@blueprint.get("/models/<name>/ready")
def model_ready(name: str) -> tuple[Response, int]:
    svc = service()
    model = loaded_model(svc, name)
    svc.engine.get()  # 503 not_ready while it loads
    return jsonify({"name": model.name, "ready": True}), 200


@blueprint.post("/models/<name>/infer")
def infer(name: str) -> Response:
    """One audio file in, ``text`` and ``utterances`` (a JSON document) out."""
    svc = service()
    model = loaded_model(svc, name)
    if request.content_encoding not in (None, "", "identity"):
        raise UnsupportedMediaType("compressed inference requests are not accepted; send them uncompressed")
    body = request.get_data(cache=False)
    try:
        parsed = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH))
        audio, words = audio_input(parsed, model)
        oip.select_outputs(parsed, [{"name": TEXT_OUTPUT}, {"name": UTTERANCES_OUTPUT}])
    except oip.ProtocolError as exc:
        raise InvalidInferenceRequest(exc.message) from None
    result = transcribe_file(svc, audio, words)
    outputs = [
        oip.bytes_output(TEXT_OUTPUT, [result["text"]], content_type="str"),
        oip.bytes_output(
            UTTERANCES_OUTPUT,
            [json.dumps(result["utterances"], ensure_ascii=False)],
            content_type="str",
        ),
    ]
    return jsonify(
        oip.infer_response(model.name, MODEL_VERSION, parsed, outputs, {"audio_ms": result["audio_ms"]})
    )


def loaded_model(svc: DecoderService, name: str) -> ModelInfo:
    """The configured model when ``name`` is its name; 404 ``unknown_model`` otherwise."""
    model = svc.model
    if model is None:
        raise NotReady("the model is not configured yet", retry_after=2)
    if name != model.name:
        raise UnknownModel(f"no model named {name[:80]!r} here; this server serves {model.name!r}")
    return model


def audio_input(parsed: oip.InferenceRequest, model: ModelInfo) -> tuple[bytes, bool]:
    """The audio file of the request's one ``BYTES`` input, and whether word timings were asked for."""
    refused = sorted(SERVER_ONLY_KEYS & parsed.parameters.keys())
    if refused:
        raise oip.ProtocolError(f"parameters.{refused[0]} is chosen by the server's configuration only")
    words = oip.request_parameter_bool(parsed, "words")
    language = parsed.parameters.get("language")
    if language is not None and language != model.language:
        raise oip.ProtocolError(f"parameters.language: model {model.name} speaks {model.language!r} only")
    tensor = parsed.single_input()
    elements = oip.bytes_elements(tensor, json_strings_are_base64=True)
    if len(elements) != 1:
        raise oip.ProtocolError(f"input {tensor.name}: send one audio file (shape [1]); got {len(elements)}")
    return elements[0], words
