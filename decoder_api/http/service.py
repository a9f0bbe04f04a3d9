"""What the routes share: settings, the engine being loaded, sessions, keys and metrics.

Attached to the Flask app as ``app.extensions["decoder"]``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from decoder_api.config import Settings
from decoder_api.delivery.publisher import TranscriptPublisher
from decoder_api.engines import native_rate_hz
from decoder_api.engines.base import Engine, ModelInfo, Recognizer, RecognizerOptions
from decoder_api.engines.pool import PoolSettings, RecognizerPool
from decoder_api.errors import DecoderError
from decoder_api.http.auth import ApiKeys
from decoder_api.http.limits import RateLimiter
from decoder_api.metrics import DecoderMetrics
from decoder_api.sessions.store import SessionStore

logger = logging.getLogger(__name__)

EXTENSION = "decoder"


class NotReady(DecoderError):
    code = "not_ready"


class EngineLoader:
    """Loads the engine once, in the background, so health checks answer while the model loads;
    then fills the pool of warm recognizers that sessions borrow from."""

    def __init__(self, load: Callable[[], Engine], pool_settings: PoolSettings) -> None:
        self._load = load
        self._pool_settings = pool_settings
        self._pool: RecognizerPool | None = None
        self._engine: Engine | None = None
        self._error: str | None = None
        self._done = threading.Event()

    def start(self, background: bool) -> None:
        if not background:
            self._run()
            return
        threading.Thread(target=self._run, name="engine-loader", daemon=True).start()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    @property
    def ready(self) -> bool:
        return self._engine is not None and self._pool is not None

    @property
    def error(self) -> str | None:
        return self._error

    def get(self) -> Engine:
        if self._engine is None:
            raise NotReady(self._error or "the model is still loading", retry_after=2)
        return self._engine

    def pool(self) -> RecognizerPool:
        self.get()
        assert self._pool is not None
        return self._pool

    def acquire(self, options: RecognizerOptions) -> Recognizer:
        """Borrow a warm recognizer (503 while the model is still loading)."""
        return self.pool().acquire(options)

    def trim(self) -> None:
        if self._pool is not None:
            self._pool.trim()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._engine is not None:
            self._engine.close()

    def _run(self) -> None:
        try:
            engine = self._load()
            pool = RecognizerPool(engine, self._pool_settings)
            pool.warm(RecognizerOptions(sample_rate_hz=native_rate_hz(engine)))
            self._engine, self._pool = engine, pool
            logger.info("engine_ready engine=%s model=%s", self._engine.name, self._engine.model.name)
        except DecoderError as exc:
            self._error = exc.message
            logger.error("engine_failed reason=%s", exc.message)
        except Exception as exc:
            self._error = f"the model failed to load: {type(exc).__name__}"
            logger.exception("engine_failed")
        finally:
            self._done.set()


@dataclass
class DecoderService:
    settings: Settings
    engine: EngineLoader
    sessions: SessionStore
    api_keys: ApiKeys
    metrics: DecoderMetrics
    closing: bool = False
    publisher: TranscriptPublisher | None = None
    rate_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    model: ModelInfo | None = None  # the configured model, known before it has loaded

    def delivery_checks(self) -> tuple[dict[str, Any], bool]:
        """``/readyz`` checks of the Kafka publisher and its outbox, and whether they allow readiness."""
        if self.publisher is None:
            return {"kafka": "disabled"}, True
        return self.publisher.checks()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.sessions.close()
        if self.publisher is not None:  # after the sessions, whose last finals it must journal
            self.publisher.close()
        self.engine.close()


def service() -> DecoderService:
    svc: DecoderService = current_app.extensions[EXTENSION]
    return svc
