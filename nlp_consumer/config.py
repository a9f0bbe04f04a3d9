"""Typed settings of the consumer and the dashboard, read once from the environment at the entry point.

Nothing below the entry points reads the environment: ``load_consumer_settings(env)`` and
``load_dashboard_settings(env)`` turn a mapping into frozen objects (``ConfigError`` names the
variable on bad input). The brokers come from the contract's ``KAFKA_*`` variables, the same
in every component (``contract.kafka``).
"""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from contract.env import InvalidSetting, env_bool
from contract.kafka import TRANSCRIPTS_TOPIC, KafkaClientSettings, load_kafka_client
from nlp_consumer.errors import ConfigError

T = TypeVar("T")

INPUT_TOPIC = TRANSCRIPTS_TOPIC
OUTPUT_TOPIC = "transcripts.enriched.v1"
DLQ_TOPIC = "transcripts.dlq.v1"
SUMMARY_TOPIC = "calls.summary.v1"


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """``model`` None means the model ``python -m nlp_consumer.train`` builds into ``cache_dir``."""

    model: str | None = None
    neutral_band: float = 0.3
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "nlp_consumer")
    torch_threads: int = 0  # 0: torch's default
    onnx: bool = True  # the sentiment model runs in ONNX Runtime (graph cached in cache_dir/onnx), else torch
    onnx_threads: int = 1  # ONNX Runtime intra-op threads (0: one per core)
    onnx_int8: bool = True  # ONNX Runtime runs the graph with int8 weights (runtime.py), else fp32
    explain_top_k: int = 5
    keyword_limit: int = 3


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    kafka: KafkaClientSettings
    model: ModelSettings
    session_timeout_ms: int = 10_000
    group_id: str = "nlp-consumer"
    input_topic: str = INPUT_TOPIC
    output_topic: str = OUTPUT_TOPIC
    dlq_topic: str = DLQ_TOPIC
    batch_size: int = 32
    batch_ms: int = 0  # after a batch's first event, how long to wait for more (0: take what is there)
    metrics_port: int = 9108  # 0: no metrics endpoint
    delivery_timeout_s: float = 60.0
    summary_topic: str = SUMMARY_TOPIC
    summary_sentences: int = 3  # sentences of a call's extractive summary
    summary_model: str | None = None  # sentence embeddings; None: the bundled all-MiniLM-L6-v2
    max_open_calls: int = 10_000  # calls held for their summary; the least recently active goes first
    call_idle_s: float = 300.0  # a call without a final for this long is abandoned (no summary)


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    kafka: KafkaClientSettings
    topic: str = OUTPUT_TOPIC
    summary_topic: str = SUMMARY_TOPIC
    group_id: str = field(default_factory=lambda: f"dashboard-{socket.gethostname()}-{uuid.uuid4().hex[:12]}")
    host: str = "127.0.0.1"
    port: int = 8000
    expire_s: float = 120.0
    max_calls: int = 1000
    max_turns: int = 200
    push_ms: int = 500
    session_timeout_ms: int = 10_000
    inference: bool = True  # sentiment over the Open Inference Protocol (/v2), see dashboard/inference.py


class _Reader:
    """Typed look-ups of one environment mapping; errors name the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value or default

    def number(self, name: str, default: T, kind: Callable[[str], T], low: float, high: float) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None
        if not low <= float(value) <= high:  # type: ignore[arg-type]
            raise ConfigError(f"{name}: {raw} is outside {low:g} … {high:g}")
        return value


def load_kafka_settings(env: Mapping[str, str]) -> KafkaClientSettings:
    """The brokers, as the contract reads them; they are required here."""
    try:
        client = load_kafka_client(env)
    except InvalidSetting as exc:
        raise ConfigError(exc.message) from None
    if client is None:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
    return client


def load_model_settings(env: Mapping[str, str]) -> ModelSettings:
    read = _Reader(env)
    defaults = ModelSettings()
    cache = read.text("NLP_CACHE_DIR")
    return ModelSettings(
        model=read.text("SENTIMENT_MODEL"),
        neutral_band=read.number("SENTIMENT_NEUTRAL_BAND", defaults.neutral_band, float, 0.0, 1.0),
        cache_dir=Path(cache).expanduser() if cache else defaults.cache_dir,
        torch_threads=read.number("NLP_TORCH_THREADS", 0, int, 0, 256),
        onnx=_bool(env, "NLP_ONNX", defaults.onnx),
        onnx_threads=read.number("NLP_ONNX_THREADS", defaults.onnx_threads, int, 0, 256),
        onnx_int8=_bool(env, "NLP_ONNX_INT8", defaults.onnx_int8),
        explain_top_k=read.number("NLP_EXPLAIN_TOP_K", defaults.explain_top_k, int, 0, 50),
        keyword_limit=read.number("NLP_KEYWORDS", defaults.keyword_limit, int, 0, 20),
    )


def load_consumer_settings(env: Mapping[str, str]) -> ConsumerSettings:
    read = _Reader(env)
    defaults = ConsumerSettings(KafkaClientSettings(""), ModelSettings())
    settings = ConsumerSettings(
        kafka=load_kafka_settings(env),
        model=load_model_settings(env),
        session_timeout_ms=read.number(
            "NLP_SESSION_TIMEOUT_MS", defaults.session_timeout_ms, int, 1000, 300_000
        ),
        group_id=read.text("NLP_GROUP_ID", defaults.group_id) or defaults.group_id,
        input_topic=read.text("NLP_INPUT_TOPIC", INPUT_TOPIC) or INPUT_TOPIC,
        output_topic=read.text("NLP_OUTPUT_TOPIC", OUTPUT_TOPIC) or OUTPUT_TOPIC,
        dlq_topic=read.text("NLP_DLQ_TOPIC", DLQ_TOPIC) or DLQ_TOPIC,
        batch_size=read.number("NLP_BATCH_SIZE", defaults.batch_size, int, 1, 10_000),
        batch_ms=read.number("NLP_BATCH_MS", defaults.batch_ms, int, 0, 600_000),
        metrics_port=read.number("NLP_METRICS_PORT", defaults.metrics_port, int, 0, 65535),
        delivery_timeout_s=read.number("NLP_DELIVERY_TIMEOUT_S", defaults.delivery_timeout_s, float, 1, 3600),
        summary_topic=read.text("NLP_SUMMARY_TOPIC", SUMMARY_TOPIC) or SUMMARY_TOPIC,
        summary_sentences=read.number("NLP_SUMMARY_SENTENCES", defaults.summary_sentences, int, 0, 10),
        summary_model=read.text("NLP_SUMMARY_MODEL"),
        max_open_calls=read.number("NLP_MAX_OPEN_CALLS", defaults.max_open_calls, int, 1, 1_000_000),
        call_idle_s=read.number("NLP_CALL_IDLE_S", defaults.call_idle_s, float, 0.1, 86_400),
    )
    topics = {settings.input_topic, settings.output_topic, settings.dlq_topic, settings.summary_topic}
    if len(topics) != 4:
        raise ConfigError(
            "NLP_INPUT_TOPIC, NLP_OUTPUT_TOPIC, NLP_DLQ_TOPIC and NLP_SUMMARY_TOPIC must differ"
        )
    return settings


def load_dashboard_settings(env: Mapping[str, str]) -> DashboardSettings:
    read = _Reader(env)
    defaults = DashboardSettings(KafkaClientSettings(""))
    topic = read.text("DASHBOARD_TOPIC") or read.text("NLP_OUTPUT_TOPIC") or OUTPUT_TOPIC
    return dataclasses.replace(
        defaults,
        kafka=load_kafka_settings(env),
        topic=topic,
        summary_topic=read.text("DASHBOARD_SUMMARY_TOPIC")
        or read.text("NLP_SUMMARY_TOPIC")
        or defaults.summary_topic,
        group_id=read.text("DASHBOARD_GROUP_ID") or defaults.group_id,
        host=read.text("DASHBOARD_HOST", defaults.host) or defaults.host,
        port=read.number("DASHBOARD_PORT", defaults.port, int, 0, 65535),
        expire_s=read.number("DASHBOARD_EXPIRE_S", defaults.expire_s, float, 1, 86_400),
        max_calls=read.number("DASHBOARD_MAX_CALLS", defaults.max_calls, int, 1, 100_000),
        max_turns=read.number("DASHBOARD_MAX_TURNS", defaults.max_turns, int, 1, 10_000),
        push_ms=read.number("DASHBOARD_PUSH_MS", defaults.push_ms, int, 50, 10_000),
        session_timeout_ms=read.number(
            "DASHBOARD_SESSION_TIMEOUT_MS", defaults.session_timeout_ms, int, 1000, 300_000
        ),
        inference=_bool(env, "DASHBOARD_INFERENCE", defaults.inference),
    )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    try:
        return env_bool(env, name, default)
    except InvalidSetting as exc:
        raise ConfigError(exc.message) from None
