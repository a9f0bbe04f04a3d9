"""``python -m nlp_consumer`` runs the enrichment consumer; ``--dashboard`` serves the dashboard instead.

Configuration comes from the environment only (see ``config.py`` and this package's README).
Expected failures (bad configuration, no model, unreachable broker) print one ``error:`` line
and exit with status 2 (configuration) or 1; SIGTERM and Ctrl-C stop after the batch in hand
is committed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from nlp_consumer.errors import ConfigError, NlpError

logger = logging.getLogger("nlp_consumer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nlp_consumer",
        description="Enrich final transcripts with sentiment (Kafka consumer), or serve the live dashboard.",
    )
    parser.add_argument("--dashboard", action="store_true", help="serve the dashboard instead of consuming")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environment = os.environ if env is None else env
    configure_logging(environment)
    if args.dashboard:
        from nlp_consumer.dashboard.__main__ import main as dashboard_main

        return dashboard_main([], environment)
    stop = install_stop_signals()
    # Idle OpenMP threads of the model sleep instead of spinning (read when torch loads): spinning
    # threads starve the Kafka client's and each other on a busy or CPU-limited node.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        run_consumer(environment, stop)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except NlpError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def run_consumer(env: Mapping[str, str], stop: threading.Event) -> None:
    from nlp_consumer.config import load_consumer_settings
    from nlp_consumer.consumer import EnrichmentConsumer
    from nlp_consumer.enrich import load_enricher
    from nlp_consumer.metrics import ConsumerMetrics
    from nlp_consumer.summary import CallSummarizer, load_embedder

    settings = load_consumer_settings(env)
    metrics = ConsumerMetrics()
    try:
        metrics.serve(settings.metrics_port)
    except OSError as exc:
        raise ConfigError(f"NLP_METRICS_PORT {settings.metrics_port}: {exc.strerror or exc}") from None
    enricher = load_enricher(settings.model)
    summarizer = CallSummarizer(
        load_embedder(settings.summary_model),
        enricher.analyzer.info.to_dict(),
        neutral_band=settings.model.neutral_band,
        max_sentences=settings.summary_sentences,
    )
    consumer = EnrichmentConsumer(settings, enricher, metrics, summarizer)
    consumer.check_broker()
    consumer.run(stop)


def configure_logging(env: Mapping[str, str]) -> None:
    level = env.get("NLP_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def install_stop_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the loop finishes its batch, commits and closes)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


if __name__ == "__main__":
    sys.exit(main())
