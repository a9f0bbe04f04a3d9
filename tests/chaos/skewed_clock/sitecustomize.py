"""Clock skew for one process: with this directory on ``PYTHONPATH`` the interpreter loads this
module at start-up and its wall clock (``time.time``, ``time.time_ns``) runs
``CHAOS_CLOCK_SKEW_S`` seconds off; the monotonic clock is left alone, as NTP leaves it.

libfaketime would do the same below Python, but the Debian build (0.9.10) breaks Python 3.11's
``time.sleep`` (``clock_nanosleep`` with ``TIMER_ABSTIME`` fails with EINVAL, or hangs when the
monotonic clock is faked too).
"""

from __future__ import annotations

import os
import time

_SKEW_S = float(os.environ.get("CHAOS_CLOCK_SKEW_S", "0") or 0)

if _SKEW_S:
    _wall_s, _wall_ns = time.time, time.time_ns

    def _skewed_s() -> float:
        return _wall_s() + _SKEW_S

    def _skewed_ns() -> int:
        return _wall_ns() + int(_SKEW_S * 1_000_000_000)

    time.time = _skewed_s
    time.time_ns = _skewed_ns
