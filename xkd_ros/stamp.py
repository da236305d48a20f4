"""ROS time stamps <-> integer nanoseconds, and `std_msgs/Header` builders.

Nanoseconds as one Python int are what bags index by and what latency maths wants; the two
message flavours (rclpy and rosbags) both carry `sec`/`nanosec`, so the conversion lives here once.
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


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
