"""The live calls dashboard: a Flask app with server-sent events and a static page (no build step).

``create_app(settings, board)`` serves:

* ``/`` the page (``static/index.html``, ``app.js``, ``style.css``);
* ``/api/stream`` server-sent events: ``snapshot`` (every active call) on connect, then at most
  one ``update`` per ``push_ms`` with the calls changed and the ids removed since the client's
  last one (coalesced, so a busy board never floods the page), and a comment line as keep-alive;
* ``/api/calls`` the snapshot, ``/api/calls/<session_id>`` one call with its transcript;
* ``/healthz``;
* with a ``SentimentModel``, sentiment over the Open Inference Protocol under ``/v2``
  (``inference.py``).

The board is filled by ``EnrichedFeed`` (``feed.py``), started by ``python -m nlp_consumer.dashboard``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, stream_with_context

from nlp_consumer.config import DashboardSettings
from nlp_consumer.dashboard import inference
from nlp_consumer.dashboard.state import CallBoard

STATIC_DIR = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0

bp = Blueprint("dashboard", __name__)


def create_app(
    settings: DashboardSettings, board: CallBoard, sentiment: inference.SentimentModel | None = None
) -> Flask:
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config.from_mapping(PUSH_S=settings.push_ms / 1000, EXPIRE_S=settings.expire_s, TOPIC=settings.topic)
    app.extensions["call_board"] = board
    app.extensions["dashboard_closing"] = threading.Event()
    app.register_blueprint(bp)
    if sentiment is not None:
        inference.init_app(app, sentiment)
    return app


def _board() -> CallBoard:
    board: CallBoard = current_app.extensions["call_board"]
    return board


@bp.get("/")
def index() -> Response:
    return current_app.send_static_file("index.html")


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok", calls=len(_board()))


@bp.get("/api/calls")
def calls() -> Response:
    version, summaries = _board().snapshot()
    return jsonify(version=version, calls=summaries, now_ms=_now_ms())


@bp.get("/api/calls/<session_id>")
def call(session_id: str) -> tuple[Response, int]:
    detail = _board().detail(session_id)
    if detail is None:
        return jsonify(error="not_found", message=f"no active call {session_id}"), 404
    return jsonify(detail | {"now_ms": _now_ms()}), 200


@bp.get("/api/stream")
def stream() -> Response:
    board = _board()
    push_s = float(current_app.config["PUSH_S"])
    meta = {"expire_s": current_app.config["EXPIRE_S"], "topic": current_app.config["TOPIC"]}
    closing: threading.Event = current_app.extensions["dashboard_closing"]
    response = Response(
        stream_with_context(_events(board, push_s, meta, closing)), mimetype="text/event-stream"
    )
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _events(board: CallBoard, push_s: float, meta: dict[str, Any], closing: threading.Event) -> Iterator[str]:
    version, summaries = board.snapshot()
    yield _sse("snapshot", meta | {"version": version, "calls": summaries, "now_ms": _now_ms()})
    quiet_since = time.monotonic()
    while not closing.is_set():
        board.wait(version, KEEPALIVE_S)
        changes = board.changes_since(version)
        if changes is None:  # too far behind: start over
            version, summaries = board.snapshot()
            yield _sse("snapshot", meta | {"version": version, "calls": summaries, "now_ms": _now_ms()})
        elif changes[0] > version:
            version, changed, removed = changes
            yield _sse(
                "update", {"version": version, "calls": changed, "removed": removed, "now_ms": _now_ms()}
            )
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
        else:
            continue
        quiet_since = time.monotonic()
        closing.wait(push_s)  # coalesce: whatever arrives meanwhile goes out in the next update


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _now_ms() -> int:
    return int(time.time() * 1000)
