"""The Flask application factory; gunicorn serves ``decoder_api.http.app:create_app()``."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from decoder_api.allocator import running_allocator
from decoder_api.config import Settings, load_settings
from decoder_api.delivery.publisher import TranscriptSink, build_publisher
from decoder_api.engines import load_engine
from decoder_api.engines.base import Engine
from decoder_api.engines.models import resolve_model
from decoder_api.engines.pool import PoolSettings
from decoder_api.errors import DecoderError
from decoder_api.http.auth import ApiKeys, bearer, read_keys
from decoder_api.http.limits import RateLimiter, ReadDeadline
from decoder_api.http.routes import compat, ops, stream, v1, v2
from decoder_api.http.service import EXTENSION, DecoderService, EngineLoader
from decoder_api.metrics import DecoderMetrics
from decoder_api.sessions.registry import LocalRegistry, RedisRegistry, Registry
from decoder_api.sessions.session import SessionLimits, hash_secret
from decoder_api.sessions.store import SessionStore

logger = logging.getLogger(__name__)

SESSION_OPENING_ENDPOINTS = frozenset({"v1.open_session", "v1.transcribe", "v2.infer", "stream.vosk_stream"})


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings from ``DECODER_*`` env, then ``test_config``.

    The model loads in the background (``/readyz`` says when); ``test_config={"background":
    False}`` loads it before returning.
    """
    settings = load_settings(os.environ, test_config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": settings.max_body_bytes}
    background = bool((test_config or {}).get("background", True))
    app.extensions[EXTENSION] = build_service(settings, background)
    for blueprint in (ops.blueprint, v1.blueprint, v2.blueprint, compat.blueprint):
        app.register_blueprint(blueprint)
    stream.init_app(app)
    register_handlers(app)
    app.wsgi_app = ReadDeadline(app.wsgi_app, settings.request_timeout_s)  # type: ignore[method-assign]
    if settings.behind_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]
    return app


def build_service(settings: Settings, background: bool) -> DecoderService:
    model = resolve_model(settings.engine, settings.model, settings.model_dir)  # a missing one fails now
    metrics = DecoderMetrics()
    pool = PoolSettings(
        settings.pool_max_idle,
        settings.pool_idle_ttl_s,
        settings.pool_warm,
        max_audio_s=settings.pool_max_audio_s,
    )

    def load() -> Engine:
        engine = load_engine(settings, metrics.partial_lag.observe)
        store.set_graph(engine.graph)
        return engine

    loader = EngineLoader(load, pool)
    limits = SessionLimits(
        max_sessions=settings.max_sessions,
        idle_s=settings.session_idle_s,
        max_duration_s=settings.max_session_s,
        max_utterance_s=settings.max_utterance_s,
        lock_timeout_s=settings.session_lock_timeout_s,
        max_per_key=settings.max_sessions_per_key,
    )
    allocator = running_allocator()  # as loaded, whatever asked for it
    registry = build_registry(settings, allocator)
    publisher = build_publisher(settings, metrics.registry)  # None: KAFKA_BOOTSTRAP_SERVERS not set
    sink = TranscriptSink(publisher, loader.get) if publisher else None
    store = SessionStore(
        publisher.guard(loader.acquire) if publisher else loader.acquire,
        limits,
        metrics,
        on_finals=sink,
        housekeeping=loader.trim,
        registry=registry,
        instance_id=settings.instance_id,
        on_partial=sink.partial if sink is not None and settings.kafka_partials else None,
        pin_partition=sink.pin if sink is not None else None,
        on_ended=sink.ended if sink is not None else None,
        allocator=allocator,
    )
    keys = ApiKeys(read_keys(settings.api_keys, settings.api_keys_file))
    loader.start(background)
    registry.start(on_reconnect=store.resync)
    store.start_reaper(settings.reap_interval_s)
    limiter = RateLimiter(settings.session_rate_per_min)
    logger.info("memory_allocator allocator=%s", allocator)
    return DecoderService(
        settings,
        loader,
        store,
        keys,
        metrics,
        publisher=publisher,
        rate_limiter=limiter,
        model=model,
    )


def build_registry(settings: Settings, allocator: str = "") -> Registry:
    """Redis when ``REDIS_URL`` is set (sessions survive this instance), else local only;
    ``allocator``, the one this instance runs on, is recorded with its heartbeat and its calls."""
    if not settings.redis_url:
        return LocalRegistry()
    session_ttl_s = settings.session_idle_s * 3 + 60
    return RedisRegistry(
        settings.redis_url,
        settings.instance_id,
        settings.registry_heartbeat_ttl_s,
        session_ttl_s,
        ssl_ca_certs=settings.redis_ssl_ca_certs,
        allocator=allocator,
    )


def register_handlers(app: Flask) -> None:
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(DecoderError, _decoder_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)


def _start_request() -> None:
    g.received_at = time.perf_counter()  # decoder_partial_latency_seconds starts here
    g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    if request.endpoint in SESSION_OPENING_ENDPOINTS:
        svc = _maybe_service()
        if svc is not None:
            svc.rate_limiter.check(_client_id())


def _client_id() -> str:
    """The API key (as its hash) when one is presented, else the client's address."""
    key = bearer(request) or request.args.get("api_key")
    return f"key:{hash_secret(key)}" if key else f"addr:{request.remote_addr}"


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    extension = _maybe_service()
    if extension is not None:
        extension.metrics.http_responses.labels(str(response.status_code)).inc()
    return response


def _maybe_service() -> DecoderService | None:
    from flask import current_app

    svc: DecoderService | None = current_app.extensions.get(EXTENSION)
    return svc


def error_response(status: int, body: dict[str, Any], retry_after: int | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _decoder_error(exc: DecoderError) -> Response:
    body = exc.to_dict()
    retry_after = body.pop("retry_after", None)
    return error_response(exc.status, body, retry_after)


def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    status = exc.code or 500
    response = error_response(status, {"error": code, "message": exc.description or code})
    if status == 405 and exc.get_response().headers.get("Allow"):
        response.headers["Allow"] = exc.get_response().headers["Allow"]
    return response


def _internal_error(exc: Exception) -> Response:
    request_id = g.get("request_id", "")
    logger.error("internal_error request_id=%s path=%s", request_id, request.path, exc_info=exc)
    body = {"error": "internal", "message": "internal server error", "request_id": request_id}
    return error_response(500, body)
