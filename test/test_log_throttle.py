"""`xkd_core.log_throttle.LogThrottle`: per-problem rate limit of the node's warnings."""

from __future__ import annotations

import pytest

from xkd_core.log_throttle import LogThrottle


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_first_occurrence_of_each_problem_is_shown() -> None:
    clock = FakeClock()
    throttle = LogThrottle(5.0, clock)
    assert throttle.ready("skipped.cloud_format.bad_data_length") == (True, 0)
    clock.t = 1.0
    # another problem a second later is not hidden behind the first (rclpy's per-call-site throttle would)
    assert throttle.ready("image_format.bad_step") == (True, 0)
    assert throttle.ready("skipped.cloud_format.bad_data_length") == (False, 0)


def test_repeats_are_held_back_and_counted() -> None:
    clock = FakeClock()
    throttle = LogThrottle(5.0, clock)
    assert throttle.ready("k") == (True, 0)
    for i in range(9):
        clock.t = 0.5 * (i + 1)
        assert throttle.ready("k") == (False, 0)
    clock.t = 5.0
    assert throttle.ready("k") == (True, 9)  # "9 more since the last report"
    clock.t = 10.5
    assert throttle.ready("k") == (True, 0)


def test_zero_period_shows_everything_and_bad_period_refused() -> None:
    throttle = LogThrottle(0.0, FakeClock())
    assert all(throttle.ready("k") == (True, 0) for _ in range(3))
    with pytest.raises(ValueError, match="period_s"):
        LogThrottle(-1.0)
