"""Sentiment over the Open Inference Protocol (KServe V2 REST), served beside the dashboard.

``POST /v2/models/sentiment/infer`` takes one ``BYTES`` tensor of sentences (shape ``[N]``, JSON
strings, or base64 with ``parameters.content_type: "base64"``, or the binary tensor extension) and
answers, per sentence, ``label`` (BYTES), ``polarity`` and ``score`` (FP32) and ``explanation``
(BYTES: a JSON array of the words that moved the decision, as in ``transcript.enriched.v1``). So
the decoder's ``text`` output feeds it directly. ``GET /v2/models/sentiment`` is its metadata,
``/v2/health/live|ready`` the server's health.

The model (the one the consumer uses, ``SENTIMENT_MODEL`` or the trained one) loads once, in the
background; until it has, readiness and inference answer 503. Errors keep the protocol's shape,
``{"error": "<message>", "code": "<code>"}``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from contract import oip
from nlp_consumer.errors import NlpError

if TYPE_CHECKING:
    from nlp_consumer.enrich import Enricher

logger = logging.getLogger(__name__)

EXTENSION = "sentiment_model"
MODEL_NAME = "sentiment"
MODEL_VERSION = "1"
SERVER_NAME = "nlp_consumer"
SERVER_VERSION = "1.0.0"
INPUT = "text"
OUTPUTS = ("label", "polarity", "score", "explanation")
MAX_SENTENCES = 256
MAX_SENTENCE_CHARS = 2000
MAX_BODY_BYTES = 1 << 20

blueprint = Blueprint("inference", __name__, url_prefix="/v2")


class InferenceError(NlpError):
    """A request the protocol or the model cannot take; ``status`` is its HTTP status."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class SentimentModel:
    """The enricher, loaded once in the background; one inference at a time (the model is not
    thread-safe)."""

    def __init__(self, load: Callable[[], Enricher]) -> None:
        self._load = load
        self._enricher: Enricher | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def start(self, background: bool = True) -> SentimentModel:
        if background:
            threading.Thread(target=self._run, name="sentiment-loader", daemon=True).start()
        else:
            self._run()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    @property
    def ready(self) -> bool:
        return self._enricher is not None

    @property
    def state(self) -> str:
        return "ready" if self.ready else (self._error or "loading")

    def analyze(self, texts: list[str]) -> list[dict[str, Any]]:
        """Sentiment and explanation of each text."""
        enricher = self._enricher
        if enricher is None:
            raise InferenceError(f"the sentiment model is not ready: {self.state}", "not_ready", 503)
        with self._lock:
            sentiments = enricher.analyzer.analyze(texts)
            explanations = enricher.explainer.explain(texts, [s.polarity for s in sentiments])
        return [
            s.to_dict() | {"explanation": [w.to_dict() for w in words]}
            for s, words in zip(sentiments, explanations, strict=True)
        ]

    def _run(self) -> None:
        try:
            self._enricher = self._load()
        except NlpError as exc:
            self._error = exc.message
            logger.error("sentiment_model_failed reason=%s", exc.message)
        except Exception as exc:
            self._error = f"the model failed to load: {type(exc).__name__}"
            logger.exception("sentiment_model_failed")
        finally:
            self._done.set()


def init_app(app: Any, model: SentimentModel) -> None:
    app.extensions[EXTENSION] = model
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.register_blueprint(blueprint)


def _model() -> SentimentModel:
    model: SentimentModel = current_app.extensions[EXTENSION]
    return model


@blueprint.errorhandler(InferenceError)
def inference_error(exc: InferenceError) -> tuple[Response, int]:
    return jsonify(oip.error_body(exc.message, code=exc.code)), exc.status


@blueprint.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[Response, int]:
    code = (exc.name or "error").lower().replace(" ", "_")
    return jsonify(oip.error_body(exc.description or code, code=code)), exc.code or 500


@blueprint.get("")
def server_metadata() -> Response:
    return jsonify(oip.server_metadata(SERVER_NAME, SERVER_VERSION))


@blueprint.get("/health/live")
def live() -> Response:
    return jsonify({"live": True})


@blueprint.get("/health/ready")
def ready() -> tuple[Response, int]:
    model = _model()
    if not model.ready:
        return jsonify(oip.error_body(f"the sentiment model is {model.state}", code="not_ready")), 503
    return jsonify({"ready": True}), 200


@blueprint.get("/models/<name>")
def model_metadata(name: str) -> Response:
    _check_name(name)
    inputs = [oip.tensor_metadata(INPUT, oip.BYTES, [-1])]
    outputs = [
        oip.tensor_metadata("label", oip.BYTES, [-1]),
        oip.tensor_metadata("polarity", "FP32", [-1]),
        oip.tensor_metadata("score", "FP32", [-1]),
        oip.tensor_metadata("explanation", oip.BYTES, [-1]),
    ]
    return jsonify(oip.model_metadata(MODEL_NAME, MODEL_VERSION, "nlp_consumer_sentiment", inputs, outputs))


@blueprint.get("/models/<name>/ready")
def model_ready(name: str) -> tuple[Response, int]:
    _check_name(name)
    return ready()


@blueprint.post("/models/<name>/infer")
def infer(name: str) -> Response:
    _check_name(name)
    try:
        parsed = oip.parse_request(request.get_data(cache=False), request.headers.get(oip.HEADER_LENGTH))
        texts = _sentences(parsed)
        oip.select_outputs(parsed, [{"name": o} for o in OUTPUTS])
    except oip.ProtocolError as exc:
        raise InferenceError(exc.message, "invalid_inference_request", 400) from None
    results = _model().analyze(texts) if texts else []
    outputs = [
        oip.bytes_output("label", [r["label"] for r in results]),
        _fp32("polarity", [r["polarity"] for r in results]),
        _fp32("score", [r["score"] for r in results]),
        oip.bytes_output(
            "explanation",
            [json.dumps(r["explanation"], ensure_ascii=False) for r in results],
            content_type="str",
        ),
    ]
    return jsonify(oip.infer_response(MODEL_NAME, MODEL_VERSION, parsed, outputs))


def _check_name(name: str) -> None:
    if name != MODEL_NAME:
        raise InferenceError(
            f"no model named {name[:80]!r} here; this server serves {MODEL_NAME!r}", "unknown_model", 404
        )


def _sentences(parsed: oip.InferenceRequest) -> list[str]:
    tensor = parsed.single_input()
    elements = oip.bytes_elements(tensor)
    if len(elements) > MAX_SENTENCES:
        raise oip.ProtocolError(f"input {tensor.name}: at most {MAX_SENTENCES} sentences per request")
    try:
        texts = [element.decode("utf-8") for element in elements]
    except UnicodeDecodeError:
        raise oip.ProtocolError(f"input {tensor.name}: the sentences must be UTF-8 text") from None
    if any(len(text) > MAX_SENTENCE_CHARS for text in texts):
        raise oip.ProtocolError(
            f"input {tensor.name}: a sentence is longer than {MAX_SENTENCE_CHARS} characters"
        )
    return texts


def _fp32(name: str, values: list[float]) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [len(values)], "data": values}
