"""Tests of xkd_ros.sync: the LiDAR-triggered nearest-image cache."""

from __future__ import annotations

import pytest

from xkd_ros.sync import (
    MATCHED,
    NO_IMAGE,
    OUTSIDE_SLOP,
    STALE,
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
    assert len(cache) == 0  # old-loop images lie in this cloud's future and are gone ...
    assert cache.stats()["future"] == 0 and cache.stats()["evicted"] >= 1  # ... evicted, not refused
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
