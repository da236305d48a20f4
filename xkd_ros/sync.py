"""LiDAR-camera time synchronization, pure Python (no rclpy), so it is tested without a middleware.

Two policies, chosen by the node parameter `sync_policy`:

- `NearestImageCache` (`nearest`, the default): LiDAR-triggered. Every image goes into a small cache;
  each cloud asks for the cached image nearest in time. A late or missing camera never delays the
  LiDAR: the cloud is segmented without an image and the reason is counted.
- `ApproximateTimeSynchronizer` (`approximate`): emits sets of one message per input whose stamps
  lie within `slop`, each set the tightest one around the oldest message still waiting; messages
  that can no longer be part of any set are dropped and counted.

Both survive what recorded and live streams do to stamps: out-of-order and duplicated stamps, a
looping bag that jumps back in time, and wild stamps far in the future. All stamps are integer
nanoseconds. Both are thread-safe (the node may use a multi-threaded executor).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

_NS = 1_000_000_000

#: Reasons `NearestImageCache.match` gives.
MATCHED = "matched"
NO_IMAGE = "no_image"
OUTSIDE_SLOP = "outside_slop"
STALE = "stale"


def _ns(seconds: float) -> int:
    return int(round(seconds * _NS))


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class Match(NamedTuple):
    """Result of `NearestImageCache.match`: the item (or None), why, and image minus cloud stamp."""

    item: Any | None
    reason: str
    dt_ns: int | None = None

    @property
    def matched(self) -> bool:
        return self.reason == MATCHED


class NearestImageCache:
    """Cache of recent images; each LiDAR cloud takes the nearest one within `slop_s`.

    The LiDAR clock (the stamp of the latest cloud) is the reference: images older than
    `max_age_s` before the current cloud are evicted, and images more than `max_future_s` ahead of
    it are refused (a broken camera clock must not fill the cache, nor make every later image look
    like a jump back). A jump back in time of more than `jump_back_s` (a looping bag) clears the
    cache. Reasons for no match: `no_image` (none received since start or since the last jump),
    `stale` (the newest image is older than `max_age_s` before the cloud: the camera is late or
    silent), `outside_slop` (recent images exist but none within the slop).
    """

    def __init__(
        self,
        slop_s: float = 0.05,
        max_age_s: float = 1.0,
        capacity: int = 16,
        jump_back_s: float = 1.0,
        max_future_s: float = 5.0,
    ) -> None:
        _check_positive("slop_s", slop_s, allow_zero=True)
        _check_positive("max_age_s", max_age_s)
        _check_positive("jump_back_s", jump_back_s)
        _check_positive("max_future_s", max_future_s)
        if max_age_s < slop_s:
            raise ValueError(f"max_age_s ({max_age_s}) must be >= slop_s ({slop_s})")
        if max_future_s < slop_s:
            raise ValueError(f"max_future_s ({max_future_s}) must be >= slop_s ({slop_s})")
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.slop_ns = _ns(slop_s)
        self.max_age_ns = _ns(max_age_s)
        self.jump_back_ns = _ns(jump_back_s)
        self.max_future_ns = _ns(max_future_s)
        self.capacity = int(capacity)
        self._stamps: list[int] = []  # sorted ascending
        self._items: list[Any] = []
        self._newest_image_ns: int | None = None  # newest image since start / last jump
        self._lidar_ns: int | None = None  # latest cloud stamp
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def stats(self) -> dict[str, int]:
        """Snapshot of the counters (matches per reason, refused/evicted images, jumps)."""
        keys = (MATCHED, NO_IMAGE, OUTSIDE_SLOP, STALE, "images", "duplicate", "out_of_order",
                "future", "evicted", "time_jump")
        with self._lock:
            return {k: self._counts[k] for k in keys}

    def clear(self) -> None:
        """Forget every image and the LiDAR reference (e.g. on a detected clock reset)."""
        with self._lock:
            self._stamps.clear()
            self._items.clear()
            self._newest_image_ns = None
            self._lidar_ns = None

    def push(self, stamp_ns: int, item: Any) -> bool:
        """Cache an image; False if it was refused as stamped too far in the future."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            self._counts["images"] += 1
            if self._lidar_ns is not None and stamp_ns > self._lidar_ns + self.max_future_ns:
                self._counts["future"] += 1
                return False
            newest = self._newest_image_ns
            if newest is not None and stamp_ns < newest - self.jump_back_ns:
                self._counts["time_jump"] += 1
                self._stamps.clear()
                self._items.clear()
                newest = None
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._counts["duplicate"] += 1
                self._items[i] = item  # the latest copy wins
                return True
            if newest is not None and stamp_ns < newest:
                self._counts["out_of_order"] += 1
            self._stamps.insert(i, stamp_ns)
            self._items.insert(i, item)
            if newest is None or stamp_ns > newest:
                self._newest_image_ns = stamp_ns
            while len(self._stamps) > self.capacity:
                del self._stamps[0], self._items[0]
                self._counts["evicted"] += 1
            return True

    def match(self, cloud_stamp_ns: int) -> Match:
        """The cached image nearest to the cloud stamp if within the slop; never waits."""
        t = int(cloud_stamp_ns)
        with self._lock:
            if self._lidar_ns is None or t > self._lidar_ns:
                self._lidar_ns = t
            elif t < self._lidar_ns - self.jump_back_ns:
                # A looping bag: the images may already have jumped back too (keep those); images
                # of the old loop now lie in the future of this cloud and are evicted below.
                self._counts["time_jump"] += 1
                self._lidar_ns = t
            self._evict_around(t)
            result = self._nearest(t)
            self._counts[result.reason] += 1
            return result

    def _evict_around(self, t: int) -> None:
        lo = bisect.bisect_left(self._stamps, t - self.max_age_ns)
        hi = bisect.bisect_right(self._stamps, t + self.max_future_ns)
        if lo or hi < len(self._stamps):
            self._counts["future"] += len(self._stamps) - hi
            self._counts["evicted"] += lo
            self._stamps = self._stamps[lo:hi]
            self._items = self._items[lo:hi]
        if self._newest_image_ns is not None and self._newest_image_ns > t + self.max_future_ns:
            self._newest_image_ns = self._stamps[-1] if self._stamps else None

    def _nearest(self, t: int) -> Match:
        if self._newest_image_ns is None:
            return Match(None, NO_IMAGE)
        if self._stamps:
            i = bisect.bisect_left(self._stamps, t)
            best = min((j for j in (i - 1, i) if 0 <= j < len(self._stamps)),
                       key=lambda j: (abs(self._stamps[j] - t), -self._stamps[j]))
            dt = self._stamps[best] - t
            if abs(dt) <= self.slop_ns:
                return Match(self._items[best], MATCHED, dt)
        else:
            dt = None
        if self._newest_image_ns < t - self.max_age_ns:
            return Match(None, STALE, dt)
        return Match(None, OUTSIDE_SLOP, dt)


class ApproximateTimeSynchronizer:
    """Approximate-time policy: sets of one message per input whose stamps span at most `slop_s`.

    Each input keeps up to `queue_size` messages sorted by stamp. The pivot is the input whose
    oldest waiting message is the newest of those oldest ones: nothing older than the pivot's stamp
    minus the slop can ever be matched any more, so it is dropped. Once every input has a message
    at or after the pivot (later arrivals can no longer improve the choice), the tightest set that
    contains the pivot is found by a sweep over candidate window starts; if its span is within the
    slop it is emitted and everything older is dropped, otherwise the pivot is dropped. A set is
    passed to `callback(*msgs)` in input order, outside the lock.

    Stamps older than an input's last emitted or dropped stamp are late and dropped; a jump back of
    more than `jump_back_s` (a looping bag) clears every queue; a duplicate stamp replaces the
    waiting message.
    """

    def __init__(
        self,
        queue_size: int,
        slop_s: float,
        n_inputs: int,
        callback: Callable[..., Any],
        jump_back_s: float = 1.0,
    ) -> None:
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if int(n_inputs) < 2:
            raise ValueError(f"n_inputs must be >= 2, got {n_inputs!r}")
        _check_positive("slop_s", slop_s, allow_zero=True)
        _check_positive("jump_back_s", jump_back_s)
        if not callable(callback):
            raise ValueError("callback must be callable")
        self.queue_size = int(queue_size)
        self.n_inputs = int(n_inputs)
        self.slop_ns = _ns(slop_s)
        self.jump_back_ns = _ns(jump_back_s)
        self.callback = callback
        self._stamps: list[list[int]] = [[] for _ in range(self.n_inputs)]
        self._msgs: list[list[Any]] = [[] for _ in range(self.n_inputs)]
        self._frontier: list[int | None] = [None] * self.n_inputs
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        """Snapshot of the counters: received, sets, and drops per reason."""
        keys = ("received", "sets", "dropped_unmatched", "dropped_queue_full", "dropped_late",
                "duplicate", "time_jump")
        with self._lock:
            return {k: self._counts[k] for k in keys}

    def pending(self) -> list[int]:
        """Messages waiting per input."""
        with self._lock:
            return [len(s) for s in self._stamps]

    def add(self, index: int, stamp_ns: int, msg: Any) -> None:
        """Offer a message of input `index`; calls the callback for every set this completes."""
        if not 0 <= int(index) < self.n_inputs:
            raise ValueError(f"input index {index!r} out of range 0..{self.n_inputs - 1}")
        i, t = int(index), int(stamp_ns)
        with self._lock:
            self._counts["received"] += 1
            stamps, msgs = self._stamps[i], self._msgs[i]
            front = self._frontier[i]
            known = [x for x in (front, stamps[-1] if stamps else None) if x is not None]
            if known and t < max(known) - self.jump_back_ns:
                self._counts["time_jump"] += 1
                self._reset()
            elif front is not None and t <= front:
                self._counts["dropped_late"] += 1
                return
            k = bisect.bisect_left(stamps, t)
            if k < len(stamps) and stamps[k] == t:
                self._counts["duplicate"] += 1
                msgs[k] = msg
            else:
                stamps.insert(k, t)
                msgs.insert(k, msg)
                if len(stamps) > self.queue_size:
                    self._drop(i, 1, "dropped_queue_full")
            ready = self._collect()
        for group in ready:
            self.callback(*group)

    def _reset(self) -> None:
        for i in range(self.n_inputs):
            self._stamps[i].clear()
            self._msgs[i].clear()
            self._frontier[i] = None

    def _drop(self, i: int, n: int, reason: str | None) -> None:
        """Drop the `n` oldest messages of input `i`; they and anything older are now late."""
        if n <= 0:
            return
        last = self._stamps[i][n - 1]
        del self._stamps[i][:n], self._msgs[i][:n]
        self._frontier[i] = last if self._frontier[i] is None else max(last, self._frontier[i])
        if reason:
            self._counts[reason] += n

    def _collect(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        while all(self._stamps):
            heads = [s[0] for s in self._stamps]
            p = max(range(self.n_inputs), key=heads.__getitem__)
            tp = heads[p]
            for i, s in enumerate(self._stamps):  # too old to meet the pivot or anything after it
                self._drop(i, bisect.bisect_left(s, tp - self.slop_ns), "dropped_unmatched")
            if not all(self._stamps) or any(s[-1] < tp for s in self._stamps):
                break  # wait: a later message could still be a closer partner of the pivot
            best: tuple[int, list[int]] | None = None
            starts = sorted({x for s in self._stamps for x in s if tp - self.slop_ns <= x <= tp})
            for a in starts:
                picks = [bisect.bisect_left(s, a) for s in self._stamps]
                span = max(s[k] for s, k in zip(self._stamps, picks)) - a
                if best is None or span < best[0]:
                    best = (span, picks)
            assert best is not None  # tp itself is a start
            span, picks = best
            if span <= self.slop_ns:
                out.append(tuple(m[k] for m, k in zip(self._msgs, picks)))
                self._counts["sets"] += 1
                for i, k in enumerate(picks):
                    self._drop(i, k, "dropped_unmatched")
                    self._drop(i, 1, None)  # emitted
            else:
                self._drop(p, 1, "dropped_unmatched")
        return out
