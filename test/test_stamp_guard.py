"""`xkd_ros.stamp.StampGuard`: the node's policy for cloud stamps (order, duplicates, loops, future)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xkd_ros.stamp import ACCEPTED, DUPLICATE, FUTURE, NS_PER_S, OUT_OF_ORDER, TIME_JUMP, StampGuard

S = NS_PER_S
NOW = 1_700_000_000 * S  # the node's clock in these tests


def verdicts(guard: StampGuard, stamps: list[int], now: int | None = NOW) -> list[str]:
    return [guard.check(t, now).verdict for t in stamps]


def test_forward_stream_is_accepted_with_deltas() -> None:
    guard = StampGuard()
    assert guard.check(100 * S, NOW) == (ACCEPTED, None)
    assert guard.check(100 * S + S // 10, NOW) == (ACCEPTED, S // 10)
    assert guard.last_ns == 100 * S + S // 10


def test_duplicate_and_out_of_order_are_dropped_and_keep_the_reference() -> None:
    guard = StampGuard(jump_back_s=1.0)
    base = 100 * S
    got = verdicts(guard, [base, base, base - S // 2, base - S, base + S // 10])
    assert got == [ACCEPTED, DUPLICATE, OUT_OF_ORDER, OUT_OF_ORDER, ACCEPTED]  # exactly 1 s back: not a jump
    assert guard.last_ns == base + S // 10
    check = StampGuard().check  # the delta tells how stale a scan is
    check(base, NOW)
    assert check(base - S // 4, NOW) == (OUT_OF_ORDER, -S // 4)


def test_loop_jump_back_is_accepted_and_the_stream_goes_on_from_there() -> None:
    guard = StampGuard(jump_back_s=1.0)
    loop = [100 * S + i * S // 10 for i in range(30)]  # a 3 s bag played twice
    got = verdicts(guard, loop + loop)
    assert got == [ACCEPTED] * 30 + [TIME_JUMP] + [ACCEPTED] * 29
    assert guard.check(loop[-1], NOW).verdict == DUPLICATE


def test_far_future_is_processed_but_never_the_reference() -> None:
    guard = StampGuard(max_future_s=10.0)
    base = NOW - 5 * S
    assert guard.check(base, NOW).verdict == ACCEPTED
    wild = NOW + 86400 * S
    assert guard.check(wild, NOW) == (FUTURE, 86400 * S)
    assert guard.last_ns == base
    # the good scan after the wild one is neither a jump back nor out of order
    assert guard.check(base + S // 10, NOW).verdict == ACCEPTED
    # within the limit (clock skew of a few seconds) is ordinary
    assert guard.check(NOW + 9 * S, NOW).verdict == ACCEPTED


def test_no_future_check_without_a_running_clock() -> None:
    """Simulated time before the first /clock message reads 0: every stamp would look like the future."""
    guard = StampGuard()
    assert guard.check(NOW, 0).verdict == ACCEPTED
    assert guard.check(NOW + S, None).verdict == ACCEPTED


@pytest.mark.parametrize(("kwargs", "name"), [({"jump_back_s": 0.0}, "jump_back_s"),
                                             ({"max_future_s": -1.0}, "max_future_s"),
                                             ({"jump_back_s": float("nan")}, "jump_back_s")])
def test_bad_parameters_named(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        StampGuard(**kwargs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20 * S), min_size=1, max_size=60))
def test_accepted_stamps_only_go_back_by_a_jump(stamps: list[int]) -> None:
    """Whatever arrives, the accepted (processed) stream never runs backwards except by a time jump,
    and every dropped stamp is at most `jump_back_s` behind the newest accepted one."""
    guard = StampGuard(jump_back_s=1.0)
    last = None
    for t in stamps:
        check = guard.check(t, NOW)
        if check.verdict == ACCEPTED:
            assert last is None or t > last
            last = t
        elif check.verdict == TIME_JUMP:
            assert t < last - S
            last = t
        else:
            assert check.verdict in (DUPLICATE, OUT_OF_ORDER) and last - S <= t <= last
        assert guard.last_ns == last
