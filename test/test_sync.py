"""Tests of xkd_ros.sync: the LiDAR-triggered nearest-image cache and the approximate-time policy."""

from __future__ import annotations

import numpy as np
import pytest

from xkd_ros.sync import (
    MATCHED,
    NO_IMAGE,
    OUTSIDE_SLOP,
    STALE,
    ApproximateTimeSynchronizer,
    NearestImageCache,
)

MS = 1_000_000
S = 1_000_000_000


# ---------------------------------------------------------------- NearestImageCache


def test_nearest_within_slop() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8)
    for t in (0, 100, 200):
        cache.push(t * MS, f"img{t}")
    m = cache.match(95 * MS)
    assert m.matched and m.item == "img100" and m.dt_ns == 5 * MS
    m = cache.match(112 * MS)
    assert m.item == "img100" and m.dt_ns == -12 * MS
    m = cache.match(188 * MS)
    assert m.item == "img200"
    assert cache.stats()[MATCHED] == 3


def test_no_image_and_outside_slop() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8)
    m = cache.match(0)
    assert m.item is None and m.reason == NO_IMAGE
    cache.push(0, "a")
    cache.push(100 * MS, "b")
    m = cache.match(50 * MS)
    assert m.item is None and m.reason == OUTSIDE_SLOP and abs(m.dt_ns) == 50 * MS
    s = cache.stats()
    assert s[NO_IMAGE] == 1 and s[OUTSIDE_SLOP] == 1 and s[MATCHED] == 0


def test_stale_camera_then_recovers() -> None:
    cache = NearestImageCache(slop_s=0.05, max_age_s=0.5, capacity=8)
    cache.push(0, "old")
    assert cache.match(10 * MS).item == "old"
    # The camera goes silent: the LiDAR keeps getting answers at once, marked stale.
    for k in range(1, 6):
        m = cache.match(k * S)
        assert m.item is None and m.reason == STALE
    assert len(cache) == 0  # the old image was evicted by age
    cache.push(5 * S + 10 * MS, "new")
    m = cache.match(5 * S)
    assert m.item == "new" and m.reason == MATCHED
    assert cache.stats()[STALE] == 5


def test_out_of_order_images() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8)
    for t in (200, 0, 100, 50):
        cache.push(t * MS, t)
    assert cache.stats()["out_of_order"] == 3
    assert cache.match(101 * MS).item == 100
    assert cache.match(45 * MS).item == 50
    assert cache.match(199 * MS).item == 200


def test_out_of_order_clouds_match_their_own_image() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8)
    for t in range(0, 500, 100):
        cache.push(t * MS, t)
    assert cache.match(400 * MS).item == 400
    assert cache.match(200 * MS).item == 200  # an older cloud still finds its image
    assert cache.stats()["time_jump"] == 0


def test_duplicate_stamp_latest_wins() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8)
    cache.push(100 * MS, "first")
    cache.push(100 * MS, "second")
    assert len(cache) == 1
    assert cache.match(100 * MS).item == "second"
    assert cache.stats()["duplicate"] == 1


def test_capacity_keeps_newest() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=10.0, capacity=4)
    for k in range(20):
        cache.push(k * 100 * MS, k)
    assert len(cache) == 4
    assert cache.stats()["evicted"] == 16
    assert cache.match(1900 * MS).item == 19
    assert cache.match(1600 * MS).item == 16
    assert cache.match(1500 * MS).reason == OUTSIDE_SLOP  # evicted, the newest image is recent


def test_time_jump_back_images_first() -> None:
    """A looping bag: the camera jumps back first, then the LiDAR."""
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8, jump_back_s=1.0)
    for k in range(5):
        cache.push(100 * S + k * 100 * MS, ("loop1", k))
        assert cache.match(100 * S + k * 100 * MS).item == ("loop1", k)
    cache.push(0, ("loop2", 0))
    assert len(cache) == 1 and cache.stats()["time_jump"] == 1
    m = cache.match(1 * MS)
    assert m.item == ("loop2", 0)
    assert cache.stats()["time_jump"] == 2  # the LiDAR's jump is seen too, the new image kept
    cache.push(100 * MS, ("loop2", 1))
    assert cache.match(100 * MS).item == ("loop2", 1)


def test_time_jump_back_lidar_first() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=8, jump_back_s=1.0)
    for k in range(5):
        cache.push(100 * S + k * 100 * MS, ("loop1", k))
        cache.match(100 * S + k * 100 * MS)
    m = cache.match(0)  # the LiDAR looped, the camera has not yet
    assert m.item is None and m.reason == NO_IMAGE
    assert len(cache) == 0  # old-loop images lie in this cloud's future and are gone
    cache.push(5 * MS, ("loop2", 0))
    assert cache.stats()["time_jump"] == 1  # nothing left to compare against: no second jump
    assert cache.match(0).item == ("loop2", 0)
    # Old-loop images still in flight are refused as far in the future of the LiDAR.
    assert cache.push(100 * S + 600 * MS, ("loop1", 6)) is False
    assert cache.match(100 * MS).reason == OUTSIDE_SLOP


def test_future_stamp_refused_after_lidar() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=4, max_future_s=2.0)
    cache.push(0, "a")
    assert cache.match(0).item == "a"
    assert cache.push(10**9 * S, "bogus") is False
    assert cache.stats()["future"] == 1
    assert cache.push(100 * MS, "b") is True
    assert cache.match(100 * MS).item == "b"
    assert cache.stats()["time_jump"] == 0


def test_future_stamp_before_any_cloud_does_not_poison() -> None:
    cache = NearestImageCache(slop_s=0.02, max_age_s=1.0, capacity=4, max_future_s=2.0)
    cache.push(10**9 * S, "bogus")
    m = cache.match(0)
    assert m.item is None and m.reason == NO_IMAGE  # the bogus image is evicted as future
    assert cache.stats()["future"] == 1 and len(cache) == 0
    for k in range(10):
        cache.push(k * 100 * MS, k)
        assert cache.match(k * 100 * MS).item == k
    assert cache.stats()["time_jump"] == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"slop_s": -1.0}, "slop_s"), ({"max_age_s": 0.0}, "max_age_s"), ({"capacity": 0}, "capacity"),
     ({"slop_s": 2.0, "max_age_s": 1.0}, "max_age_s")],
)
def test_cache_bad_parameters_named(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        NearestImageCache(**kwargs)


# ---------------------------------------------------------------- ApproximateTimeSynchronizer


class Sink:
    def __init__(self) -> None:
        self.sets: list[tuple] = []

    def __call__(self, *msgs: object) -> None:
        self.sets.append(msgs)


def _feed(sync: ApproximateTimeSynchronizer, events: list[tuple[int, int, object]]) -> None:
    for index, stamp, msg in events:
        sync.add(index, stamp, msg)


def test_lidar_10hz_camera_30hz_pairs_nearest() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=10, slop_s=0.02, n_inputs=2, callback=sink)
    lidar = [k * 100 * MS for k in range(20)]
    cam = [j * 33_333_333 + 3 * MS for j in range(60)]
    events = [(0, t, ("L", t)) for t in lidar] + [(1, t, ("C", t)) for t in cam]
    events.sort(key=lambda e: (e[1], e[0]))  # arrival in stamp order
    _feed(sync, events)
    cam_arr = np.array(cam)
    for cloud, image in sink.sets:
        assert cloud[0] == "L" and image[0] == "C"
        nearest = cam_arr[np.argmin(np.abs(cam_arr - cloud[1]))]
        assert image[1] == nearest
        assert abs(image[1] - cloud[1]) <= 20 * MS
    matched = [c[1] for c, _ in sink.sets]
    assert matched == lidar[:len(matched)] and len(matched) >= 19  # the newest may still wait
    stats = sync.stats()
    assert stats["sets"] == len(sink.sets)
    assert stats["dropped_unmatched"] >= 35  # the camera frames no cloud wanted


def test_unmatched_frame_dropped_and_counted() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=5, slop_s=0.01, n_inputs=2, callback=sink)
    events = []
    for k in range(6):
        events.append((0, k * 100 * MS, ("L", k)))
        if k != 2:  # camera frame 2 is missing
            events.append((1, k * 100 * MS + 2 * MS, ("C", k)))
    _feed(sync, events)
    got = [(a[1], b[1]) for a, b in sink.sets]
    assert got == [(0, 0), (1, 1), (3, 3), (4, 4)]
    assert sync.stats()["dropped_unmatched"] == 1
    assert sync.pending() == [1, 1]  # frame 5 waits: a later cloud could still be closer to C5
    sync.add(0, 600 * MS, ("L", 6))
    assert [(a[1], b[1]) for a, b in sink.sets][-1] == (5, 5)


def test_tightest_set_around_pivot() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=5, slop_s=0.02, n_inputs=2, callback=sink)
    _feed(sync, [(1, 85 * MS, "c85"), (1, 95 * MS, "c95"), (0, 100 * MS, "l100")])
    assert sink.sets == []  # a later image could still be closer to the cloud
    sync.add(1, 104 * MS, "c104")
    assert sink.sets == [("l100", "c104")]
    assert sync.stats()["dropped_unmatched"] == 2


def test_waits_for_bracketing_message_then_emits() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=5, slop_s=0.02, n_inputs=2, callback=sink)
    _feed(sync, [(1, 95 * MS, "c95"), (0, 100 * MS, "l100")])
    assert sink.sets == []
    sync.add(1, 130 * MS, "c130")
    assert sink.sets == [("l100", "c95")]
    assert sync.pending() == [0, 1]


def test_three_inputs_jitter_and_missing_frames() -> None:
    rng = np.random.default_rng(0)
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=8, slop_s=0.01, n_inputs=3, callback=sink)
    frames = 50
    missing = {(int(i), int(f)) for i, f in zip(rng.integers(0, 3, 8), rng.integers(0, frames - 1, 8))}
    events = []
    for f in range(frames):
        for i in range(3):
            if (i, f) in missing:
                continue
            stamp = f * 100 * MS + int(rng.integers(-4 * MS, 4 * MS))
            events.append((i, stamp, (i, f)))
    events.sort(key=lambda e: e[1])
    _feed(sync, events)
    missing_frames = {f for _, f in missing}
    emitted = []
    for group in sink.sets:
        assert [m[0] for m in group] == [0, 1, 2]
        assert len({m[1] for m in group}) == 1  # all members from the same true frame
        emitted.append(group[0][1])
    complete = [f for f in range(frames) if f not in missing_frames]
    assert emitted == complete[:len(emitted)] and len(emitted) >= len(complete) - 1
    stats = sync.stats()
    assert stats["sets"] == len(emitted)
    assert stats["dropped_unmatched"] > 0


def test_late_message_dropped() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=5, slop_s=0.01, n_inputs=2, callback=sink)
    _feed(sync, [(0, 100 * MS, "l"), (1, 100 * MS, "c"), (0, 200 * MS, "l2"), (1, 200 * MS, "c2")])
    assert len(sink.sets) == 2
    sync.add(0, 150 * MS, "late")
    assert sync.stats()["dropped_late"] == 1 and sync.pending() == [0, 0]


def test_queue_full_drops_oldest() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=3, slop_s=0.01, n_inputs=2, callback=sink)
    for k in range(10):
        sync.add(0, k * 100 * MS, k)
    assert sync.pending() == [3, 0]
    assert sync.stats()["dropped_queue_full"] == 7
    sync.add(1, 800 * MS, "c")
    sync.add(1, 900 * MS, "c9")
    assert sink.sets[0] == (8, "c")


def test_duplicate_and_time_jump() -> None:
    sink = Sink()
    sync = ApproximateTimeSynchronizer(queue_size=5, slop_s=0.01, n_inputs=2, callback=sink)
    base = 100 * S
    _feed(sync, [(0, base, "l0"), (0, base, "l0b"), (1, base, "c0"), (0, base + 100 * MS, "l1"),
                 (1, base + 100 * MS, "c1")])
    assert sink.sets[0] == ("l0b", "c0")
    assert sync.stats()["duplicate"] == 1
    # The bag loops: both streams restart near zero.
    _feed(sync, [(0, 0, "L0"), (1, 1 * MS, "C0"), (0, 100 * MS, "L1"), (1, 100 * MS, "C1"),
                 (0, 200 * MS, "L2"), (1, 201 * MS, "C2")])
    assert sync.stats()["time_jump"] >= 1
    assert ("L1", "C1") in sink.sets
    assert sink.sets[-1] in {("L1", "C1"), ("L2", "C2")}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"queue_size": 0}, "queue_size"), ({"n_inputs": 1}, "n_inputs"), ({"slop_s": -0.1}, "slop_s")],
)
def test_sync_bad_parameters_named(kwargs: dict, name: str) -> None:
    args = {"queue_size": 5, "slop_s": 0.01, "n_inputs": 2, "callback": print} | kwargs
    with pytest.raises(ValueError, match=name):
        ApproximateTimeSynchronizer(**args)


def test_bad_input_index_named() -> None:
    sync = ApproximateTimeSynchronizer(queue_size=5, slop_s=0.01, n_inputs=2, callback=print)
    with pytest.raises(ValueError, match="input index"):
        sync.add(2, 0, "x")
