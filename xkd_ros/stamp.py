"""ROS time stamps <-> integer nanoseconds, and `std_msgs/Header` builders.

Nanoseconds as one Python int are what bags index by and what latency maths wants; the two
message flavours (rclpy and rosbags) both carry `sec`/`nanosec`, so the conversion lives here once.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from xkd_core.units import NS_PER_S  # re-exported: the ROS glue imports it from here

#: `StampGuard.check` verdicts. ACCEPTED, TIME_JUMP and FUTURE stamps are processed; the others dropped.
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
TIME_JUMP = "time_jump"
FUTURE = "future"


def split_ns(stamp_ns: int) -> tuple[int, int]:
    """(sec, nanosec) of a non-negative nanosecond stamp, as `builtin_interfaces/Time` holds it."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"stamp must be >= 0 ns, got {stamp_ns}")
    return stamp_ns // NS_PER_S, stamp_ns % NS_PER_S


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a `builtin_interfaces/Time` (rclpy or rosbags message)."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def header_ns(header: Any) -> int:
    """Nanoseconds of a `std_msgs/Header` stamp."""
    return stamp_to_ns(header.stamp)


def rclpy_header(stamp_ns: int, frame_id: str) -> Any:
    """A `std_msgs.msg.Header` (imported here, lazily, so this module loads without ROS)."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    sec, nanosec = split_ns(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def rosbags_header(stamp_ns: int, frame_id: str, typestore: Any) -> Any:
    """A rosbags `std_msgs/msg/Header` from `typestore`."""
    Time = typestore.types["builtin_interfaces/msg/Time"]
    Header = typestore.types["std_msgs/msg/Header"]
    sec, nanosec = split_ns(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


class StampCheck(NamedTuple):
    """Verdict of `StampGuard.check` and the offset it is based on (ns)."""

    verdict: str
    #: stamp minus the previous accepted stamp; for FUTURE, stamp minus `now_ns`; None for the first.
    delta_ns: int | None = None

    @property
    def accepted(self) -> bool:
        """True when the message should be processed."""
        return self.verdict in (ACCEPTED, TIME_JUMP, FUTURE)


class StampGuard:
    """The node's policy for the stamps of one input stream (the LiDAR clouds), in arrival order.

    - newer than the last accepted stamp: ACCEPTED (it becomes the reference);
    - equal to it: DUPLICATE, dropped (a second output with the same stamp would be ambiguous
      downstream; a re-sent scan is not news);
    - older by at most `jump_back_s`: OUT_OF_ORDER, dropped (a scan older than one already
      published is stale, and output stamps must not run backwards);
    - older by more than `jump_back_s`: TIME_JUMP, accepted as the new reference (a looping bag or
      a clock reset: the stream goes on from there, and the caller resets what depends on time);
    - more than `max_future_s` ahead of `now_ns` (the node's clock, when it runs, i.e. > 0):
      FUTURE, processed but never the reference, so one wild stamp does not make every following
      good scan look like a jump back.
    """

    def __init__(self, jump_back_s: float = 1.0, max_future_s: float = 10.0) -> None:
        if not jump_back_s > 0:
            raise ValueError(f"jump_back_s must be > 0, got {jump_back_s!r}")
        if not max_future_s > 0:
            raise ValueError(f"max_future_s must be > 0, got {max_future_s!r}")
        self.jump_back_ns = int(round(jump_back_s * NS_PER_S))
        self.max_future_ns = int(round(max_future_s * NS_PER_S))
        self._last: int | None = None
        self._lock = threading.Lock()

    @property
    def last_ns(self) -> int | None:
        """The reference: the newest accepted stamp (or the target of the latest jump)."""
        return self._last

    def check(self, stamp_ns: int, now_ns: int | None = None) -> StampCheck:
        """Classify `stamp_ns` (see the class docstring) and update the reference."""
        t = int(stamp_ns)
        with self._lock:
            if now_ns is not None and now_ns > 0 and t > now_ns + self.max_future_ns:
                return StampCheck(FUTURE, t - int(now_ns))
            last = self._last
            if last is None or t > last:
                self._last = t
                return StampCheck(ACCEPTED, None if last is None else t - last)
            if t == last:
                return StampCheck(DUPLICATE, 0)
            if t < last - self.jump_back_ns:
                self._last = t
                return StampCheck(TIME_JUMP, t - last)
            return StampCheck(OUT_OF_ORDER, t - last)
