"""Prometheus metrics of the consumer (own registry, served on ``NLP_METRICS_PORT``)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

RATE_WINDOW_S = 30.0


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "nlp_events",
            "Input events handled, by outcome (enriched, dead_lettered, summarised: calls)",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "nlp_errors",
            "Failures by kind (kafka, delivery, commit, enrich, call_abandoned)",
            ["kind"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "nlp_batch_seconds",
            "From a batch's consumption to its commit",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.enrich_seconds = Histogram(
            "nlp_enrich_seconds",
            "Model time of a batch",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "nlp_batch_events",
            "Events per batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.rate = Gauge(
            "nlp_events_per_second",
            f"Events handled per second over the last {RATE_WINDOW_S:.0f} s",
            registry=self.registry,
        )
        self.lag = Gauge(
            "nlp_consumer_lag",
            "Messages behind the partition end, as the broker reports it (absent when it does not)",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.assigned = Gauge(
            "nlp_assigned_partitions", "Partitions assigned to this consumer", registry=self.registry
        )
        self.open_calls = Gauge(
            "nlp_open_calls",
            "Calls whose finals are held for their summary (the committed offset stays at their first)",
            registry=self.registry,
        )
        self._window: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def handled(self, enriched: int, dead_lettered: int, summarised: int = 0) -> None:
        self.events.labels("enriched").inc(enriched)
        self.events.labels("dead_lettered").inc(dead_lettered)
        self.events.labels("summarised").inc(summarised)
        now = time.monotonic()
        with self._lock:
            self._window.append((now, enriched + dead_lettered))
            while self._window and self._window[0][0] < now - RATE_WINDOW_S:
                self._window.popleft()
            self.rate.set(sum(n for _, n in self._window) / RATE_WINDOW_S)

    def on_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback: per-partition consumer lag when known."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        for topic, data in stats.get("topics", {}).items():
            for partition, values in data.get("partitions", {}).items():
                lag = values.get("consumer_lag", -1)
                if partition != "-1" and isinstance(lag, int) and lag >= 0:
                    self.lag.labels(topic, partition).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
            logger.info("metrics_listening port=%d", port)
