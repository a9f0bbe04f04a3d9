"""Backoff for transient failures: exponential with jitter, ``Retry-After`` honoured, one time budget."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from recorder.errors import RecorderError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long one operation may keep retrying (``budget_s``) and how far apart the attempts are."""

    budget_s: float = 30.0
    first_delay_s: float = 0.25
    max_delay_s: float = 5.0

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return max(0.0, retry_after_s)
        ceiling = min(self.max_delay_s, self.first_delay_s * 2**attempt)
        return ceiling * random.uniform(0.5, 1.0)


class Retrier:
    """The attempts of one operation: ``wait`` sleeps before the next or raises when it is time to stop."""

    def __init__(
        self,
        policy: RetryPolicy,
        stop: threading.Event,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._stop = stop
        self._what = what
        self._clock = clock
        self._deadline = clock() + policy.budget_s
        self.attempt = 0

    def wait(self, error: RecorderError, retry_after_s: float | None = None) -> None:
        """Sleep before the next attempt; raise ``error`` once the budget is spent or on stop."""
        delay = self._policy.delay_s(self.attempt, retry_after_s)
        if self._stop.is_set() or self._clock() + delay > self._deadline:
            raise error
        self.attempt += 1
        logger.info(
            "retrying what=%s attempt=%d in_s=%.2f reason=%r", self._what, self.attempt, delay, error.message
        )
        if self._stop.wait(delay):
            raise error


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
