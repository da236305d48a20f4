"""Rate limit for repeated log lines, per problem: one place for throttled logging in xkd.

Used by the node (through `xkd_ros.pipeline.Reporter`) and by the pair-log writer, so a problem that
repeats at sensor rate (a bad driver field, a full disk) is logged once and then summarised.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable


class LogThrottle:
    """Rate limit for repeated warnings, per key (e.g. the diagnostics counter of the problem).

    A throttle per call site (rclpy's `throttle_duration_sec`) hides a *new* problem behind an
    unrelated one logged a second earlier; keyed by problem, the first occurrence of each is always
    shown, repeats at most once per `period_s`, with how many were held back meanwhile.
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not period_s >= 0:
            raise ValueError(f"period_s must be >= 0, got {period_s}")
        self.period_s = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def ready(self, key: str) -> tuple[bool, int]:
        """(show this occurrence of `key`?, occurrences held back since the last one shown)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._held[key] += 1
                return False, 0
            self._last[key] = now
            return True, self._held.pop(key, 0)
