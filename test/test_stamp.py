"""Stamps <-> nanoseconds and header builders for both message kinds."""

from __future__ import annotations

import pytest
from rosbags.typesys import Stores, get_typestore

from xkd_ros import stamp


def test_split_and_join():
    assert stamp.split_ns(1_700_000_000_123_456_789) == (1_700_000_000, 123_456_789)
    assert stamp.split_ns(999_999_999) == (0, 999_999_999)
    with pytest.raises(ValueError, match=">= 0"):
        stamp.split_ns(-1)


def test_rosbags_header_round_trip():
    ts = get_typestore(Stores.ROS2_HUMBLE)
    h = stamp.rosbags_header(12_000_000_007, "velodyne", ts)
    assert (h.stamp.sec, h.stamp.nanosec, h.frame_id) == (12, 7, "velodyne")
    assert stamp.header_ns(h) == 12_000_000_007


def test_rclpy_header_round_trip():
    pytest.importorskip("std_msgs.msg")
    h = stamp.rclpy_header(3_000_000_001, "camera_2")
    assert (h.stamp.sec, h.stamp.nanosec, h.frame_id) == (3, 1, "camera_2")
    assert stamp.stamp_to_ns(h.stamp) == 3_000_000_001
