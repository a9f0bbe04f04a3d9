"""``python -m nlp_consumer.dashboard`` (or ``python -m nlp_consumer --dashboard``): serve the dashboard.

A threaded WSGI server (one thread per open page, for its event stream) on ``DASHBOARD_HOST``
(default 127.0.0.1) and ``DASHBOARD_PORT`` (default 8000); SIGTERM or Ctrl-C stops it. With
``DASHBOARD_INFERENCE`` (default true) it also serves sentiment over the Open Inference Protocol
(``/v2/models/sentiment/infer``), with the consumer's model (``SENTIMENT_MODEL``), loaded once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from werkzeug.serving import make_server

from nlp_consumer.errors import ConfigError, NlpError

logger = logging.getLogger("nlp_consumer.dashboard")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from nlp_consumer.__main__ import configure_logging

    environment = os.environ if env is None else env
    configure_logging(environment)
    try:
        serve(environment)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except NlpError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def serve(env: Mapping[str, str]) -> None:
    from nlp_consumer.config import load_dashboard_settings, load_model_settings
    from nlp_consumer.dashboard import create_app
    from nlp_consumer.dashboard.feed import EnrichedFeed
    from nlp_consumer.dashboard.inference import SentimentModel
    from nlp_consumer.dashboard.state import CallBoard
    from nlp_consumer.enrich import load_enricher

    settings = load_dashboard_settings(env)
    board = CallBoard(settings.expire_s, settings.max_calls, settings.max_turns)
    feed = EnrichedFeed(settings, board)
    feed.check_broker()
    sentiment = None
    if settings.inference:
        model_settings = load_model_settings(env)
        sentiment = SentimentModel(lambda: load_enricher(model_settings)).start()
    app = create_app(settings, board, sentiment)
    try:
        server = make_server(settings.host, settings.port, app, threaded=True)
    except OSError as exc:
        raise ConfigError(f"DASHBOARD_PORT {settings.port}: {exc.strerror or exc}") from None

    def shut_down(signum: int, frame: FrameType | None) -> None:
        logger.info("stopping signal=%s", signal.Signals(signum).name)
        app.extensions["dashboard_closing"].set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    feed.start()
    print(f"dashboard on http://{settings.host}:{server.server_port} (topic {settings.topic})", flush=True)
    try:
        server.serve_forever()
    finally:
        feed.stop()


if __name__ == "__main__":
    sys.exit(main())
