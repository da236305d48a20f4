"""Counters, latency percentiles and message rates for the node's `/diagnostics`, pure Python.

The subscription callbacks, the inference worker and the diagnostics timer run on different
threads, so everything here is guarded by one lock; recording is O(1) so that it never shows up in
the latency it measures. Kept ROS-free so it is unit-tested without a middleware.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StatsSnapshot:
    """What one diagnostics report shows."""

    counts: dict[str, int] = field(default_factory=dict)  # cumulative, by key
    latency_p50_ms: float = float("nan")  # over the last `window` frames
    latency_p99_ms: float = float("nan")
    latency_max_ms: float = float("nan")
    latency_samples: int = 0
    input_rate_hz: float = 0.0  # over the last `rate_window_s` seconds
    output_rate_hz: float = 0.0
    seconds_since_input: float = float("inf")


class RateMeter:
    """Events per second over a sliding time window (0 when fewer than two events are in it)."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        """Record one event."""
        now = self._clock() if now is None else now
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Events per second in the window; a stream that stopped decays to 0 after one window."""
        now = self._clock() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    @property
    def last(self) -> float | None:
        """Time of the newest event, or None."""
        return self._times[-1] if self._times else None

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()


class NodeStats:
    """Thread-safe diagnostics state of the segment node.

    `count(key)` keys are free-form; the node uses `frames_in`, `frames_out`, `dropped` (a newer
    frame replaced one waiting for the worker), `skipped.<reason>` (e.g. `skipped.cloud_format.
    missing_field`, `skipped.inference_error`), `sync.<reason>` and `image_format.<reason>`.
    """

    def __init__(self, window: int = 1000, rate_window_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latency: deque[float] = deque(maxlen=window)
        self._in = RateMeter(rate_window_s, clock)
        self._out = RateMeter(rate_window_s, clock)

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to counter `key`."""
        with self._lock:
            self._counts[key] += n

    def frame_in(self) -> None:
        """A cloud arrived (before any validation)."""
        with self._lock:
            self._counts["frames_in"] += 1
            self._in.tick()

    def frame_out(self, latency_s: float) -> None:
        """A labeled cloud was published `latency_s` after its input arrived."""
        with self._lock:
            self._counts["frames_out"] += 1
            self._latency.append(float(latency_s))
            self._out.tick()

    def get(self, key: str) -> int:
        """Current value of one counter (0 when never counted)."""
        with self._lock:
            return self._counts[key]

    def snapshot(self) -> StatsSnapshot:
        """A consistent copy of everything, percentiles computed."""
        with self._lock:
            counts = dict(self._counts)
            lat = np.asarray(self._latency, dtype=np.float64)
            now = self._clock()
            last_in = self._in.last
            snap = StatsSnapshot(
                counts=counts,
                latency_samples=int(lat.size),
                input_rate_hz=self._in.rate(now),
                output_rate_hz=self._out.rate(now),
                seconds_since_input=float("inf") if last_in is None else now - last_in,
            )
        if lat.size:
            p50, p99 = np.percentile(lat, [50, 99]) * 1e3
            snap.latency_p50_ms, snap.latency_p99_ms = float(p50), float(p99)
            snap.latency_max_ms = float(lat.max() * 1e3)
        return snap
