"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from decoder_api.engines.partials import BackgroundPartials
from decoder_api.http.openapi import openapi_document
from decoder_api.http.service import service

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    svc = service()
    checks = {
        "model": "loaded"
        if svc.engine.wait(0) and svc.engine.error is None
        else (svc.engine.error or "loading"),
        "accepting_sessions": not svc.closing,
        "registry": svc.sessions.registry_state(),
    }
    delivery, delivery_ready = svc.delivery_checks()  # kafka, outbox
    checks |= delivery
    ready = checks["model"] == "loaded" and not svc.closing and delivery_ready
    body: dict[str, object] = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "allocator": svc.sessions.allocator,
    }
    if svc.sessions.graph:
        body["graph"] = svc.sessions.graph
    if checks["registry"] == "unavailable":
        body["degraded"] = ["registry: live calls keep decoding here, but cannot fail over"]
    if not ready:
        body |= {"error": "not_ready", "message": "the decoder cannot take sessions yet"}
    return jsonify(body), 200 if ready else 503


@blueprint.get("/metrics")
def metrics() -> Response:
    svc = service()
    svc.metrics.active_sessions.set(svc.sessions.active_count())
    if svc.engine.ready:
        stats = svc.engine.pool().stats()
        svc.metrics.pool_recognizers.labels("idle").set(stats.idle)
        svc.metrics.pool_recognizers.labels("in_use").set(stats.in_use)
        for outcome, value in (("hit", stats.hits), ("miss", stats.misses), ("discarded", stats.discarded)):
            svc.metrics.pool_acquired.labels(outcome).set(value)
        background = getattr(svc.engine.get(), "partials", None)  # engines that decode partials off-thread
        backlog = background.backlog() if isinstance(background, BackgroundPartials) else 0
        svc.metrics.partial_backlog.set(backlog)
    return Response(generate_latest(svc.metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
