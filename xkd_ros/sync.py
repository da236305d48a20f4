"""LiDAR-camera time synchronization, pure Python (no rclpy), so it is tested without a middleware.

`NearestImageCache` is LiDAR-triggered: every image of a camera goes into the camera's small cache;
each cloud asks every camera for the cached image nearest in time. A late or missing camera never
delays the LiDAR: the cloud is segmented without that camera and the reason is counted. (A policy
that waits for complete sets of messages would hold every cloud hostage to the slowest of N
cameras; the node has none.)

It survives what recorded and live streams do to stamps: out-of-order and duplicated stamps, a
looping bag that jumps back in time, and wild stamps far in the future. All stamps are integer
nanoseconds. It is thread-safe (the node may use a multi-threaded executor).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Any, NamedTuple

from xkd_ros.stamp import NS_PER_S

#: Reasons `NearestImageCache.match` gives.
MATCHED = "matched"
NO_IMAGE = "no_image"
OUTSIDE_SLOP = "outside_slop"
STALE = "stale"


def _ns(seconds: float) -> int:
    return int(round(seconds * NS_PER_S))


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
                # of the old loop now lie in the future of this cloud: evicted (not refused as future).
                self._counts["time_jump"] += 1
                self._lidar_ns = t
                self._evict_old_loop(t)
            self._evict_around(t)
            result = self._nearest(t)
            self._counts[result.reason] += 1
            return result

    def _evict_old_loop(self, t: int) -> None:
        hi = bisect.bisect_right(self._stamps, t + self.max_future_ns)
        self._counts["evicted"] += len(self._stamps) - hi
        del self._stamps[hi:], self._items[hi:]
        if self._newest_image_ns is not None and self._newest_image_ns > t + self.max_future_ns:
            self._newest_image_ns = self._stamps[-1] if self._stamps else None

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
