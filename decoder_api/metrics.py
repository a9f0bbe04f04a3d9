"""Prometheus metrics of one service instance, on its own registry (so tests can build many apps)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
LAG_BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class DecoderMetrics:
    """Every metric the decoder exports; names follow Prometheus conventions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_sessions = Gauge("decoder_active_sessions", "Sessions currently open", registry=r)
        self.sessions = Counter(
            "decoder_sessions", "Session lifecycle events", ["event"], registry=r
        )  # opened, closed, expired, rejected
        self.audio_seconds = Counter("decoder_audio_seconds", "Seconds of audio decoded", registry=r)
        self.decode_seconds = Histogram(
            "decoder_decode_seconds",
            "Wall time to decode one chunk, in the recognizer",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.real_time_factor = Gauge(
            "decoder_real_time_factor", "Decode time over audio time, since start", registry=r
        )
        self.partial_latency = Histogram(
            "decoder_partial_latency_seconds",
            "Chunk received (its request or frame) to its partial ready, waits included",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.partial_lag = Histogram(
            "decoder_partial_lag_seconds",
            "Audio the stream had moved on since the audio a background partial covers, when published",
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.partial_backlog = Gauge(
            "decoder_partial_backlog", "Streams waiting for a background partial decode", registry=r
        )
        self.finals = Counter("decoder_finals", "Final utterances produced", registry=r)
        self.allocator_mismatch_takeovers = Counter(
            "decoder_allocator_mismatch_takeovers",
            "Sessions taken over from an instance that runs another memory allocator",
            registry=r,
        )
        self.graph_mismatch_takeovers = Counter(
            "decoder_graph_mismatch_takeovers",
            "Sessions taken over from an instance whose engine searches another decoding graph",
            registry=r,
        )
        self.http_responses = Counter(
            "decoder_http_responses", "HTTP responses by status code", ["status"], registry=r
        )
        self.pool_recognizers = Gauge(
            "decoder_pool_recognizers", "Warm recognizers by state", ["state"], registry=r
        )  # idle, in_use
        self.pool_acquired = Gauge(
            "decoder_pool_acquired", "Recognizers handed out since start, by outcome", ["outcome"], registry=r
        )  # hit, miss, discarded
        self._decode_total_s = 0.0
        self._audio_total_s = 0.0

    def observe_chunk(self, received_at: float, decode_s: float, audio_s: float) -> None:
        """A chunk of ``audio_s`` seconds answered: ``decode_s`` in the recognizer (its session's lock
        held), and its partial ready ``received_at`` (``time.perf_counter()`` when its request or
        frame arrived) until now, waiting for the lock and reading the body included."""
        self.partial_latency.observe(time.perf_counter() - received_at)
        self.decode_seconds.observe(decode_s)
        self.audio_seconds.inc(audio_s)
        self._decode_total_s += decode_s
        self._audio_total_s += audio_s
        if self._audio_total_s > 0:
            self.real_time_factor.set(self._decode_total_s / self._audio_total_s)
