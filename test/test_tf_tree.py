"""The static transform tree: multi-hop composition as tf2 does it, checked against hand-built poses."""

from __future__ import annotations

import numpy as np
import pytest

from xkd_ros.bag_io import TYPESTORE
from xkd_ros.stamp import rosbags_header
from xkd_ros.tf_tree import TransformTree, rigid_inverse
from xkd_ros.transform import to_rosbags_transform_stamped

#: optical frame (z forward, x right, y down) in a body frame (x forward, y left, z up)
BODY_FROM_OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def pose(yaw_deg: float, xyz: tuple[float, float, float], pitch_deg: float = 0.0) -> np.ndarray:
    """parent_from_child of a child at `xyz`, turned by yaw then pitch."""
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    Rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    Ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Ry
    T[:3, 3] = xyz
    return T


def robot() -> tuple[TransformTree, dict[str, np.ndarray]]:
    """base_link -> lidar_top; base_link -> cam_link -> cam_optical; base_link -> imu (a side branch)."""
    poses = {"lidar": pose(2.0, (0.9, 0.0, 1.8), 1.0), "cam_link": pose(60.0, (1.2, 0.4, 1.5), -5.0),
             "cam_optical": BODY_FROM_OPTICAL, "imu": pose(0.0, (0.0, 0.0, 0.3))}
    tree = TransformTree()
    tree.add("base_link", "lidar_top", poses["lidar"])
    tree.add("base_link", "cam_link", poses["cam_link"])
    tree.add("cam_link", "cam_optical", poses["cam_optical"])
    tree.add("base_link", "imu", poses["imu"])
    return tree, poses


def test_lidar_to_camera_through_the_common_ancestor() -> None:
    tree, p = robot()
    base_from_optical = p["cam_link"] @ p["cam_optical"]
    expected = np.linalg.inv(base_from_optical) @ p["lidar"]  # optical_from_lidar
    T = tree.lookup("cam_optical", "lidar_top")
    np.testing.assert_allclose(T, expected, atol=1e-12)
    # a point 10 m ahead of the LiDAR, level: in front of the camera (z > 0) seen 60 degrees to its right
    x = T @ np.array([10.0, 0.0, 0.0, 1.0])
    assert x[2] > 0 and x[0] > 0
    np.testing.assert_allclose(tree.lookup("lidar_top", "cam_optical"), rigid_inverse(T), atol=1e-12)
    np.testing.assert_allclose(tree.lookup("cam_optical", "base_link"), np.linalg.inv(base_from_optical),
                               atol=1e-12)
    np.testing.assert_allclose(tree.lookup("imu", "imu"), np.eye(4))
    assert tree(target="cam_optical", source="lidar_top", stamp_ns=123) is not None  # TransformLookup form


def test_tf2_conventions_leading_slash_and_reparenting() -> None:
    tree, p = robot()
    np.testing.assert_allclose(tree.lookup("/cam_optical", "/lidar_top"),
                               tree.lookup("cam_optical", "lidar_top"), atol=0)
    # a later transform of the same child replaces the earlier one (a re-sent /tf_static)
    moved = pose(60.0, (1.2, 0.4, 1.6), -5.0)
    tree.add("/base_link", "cam_link", moved)
    expected = np.linalg.inv(moved @ p["cam_optical"]) @ p["lidar"]
    np.testing.assert_allclose(tree.lookup("cam_optical", "lidar_top"), expected, atol=1e-12)
    assert len(tree) == 4 and ("base_link", "cam_link") in tree.edges()


def test_what_cannot_be_looked_up_is_a_lookup_error_naming_it() -> None:
    tree, _ = robot()
    tree.add("map", "odom", pose(10.0, (5.0, 0.0, 0.0)))
    with pytest.raises(LookupError, match="'cam_optical' and 'odom' are not connected.*'base_link'.*'map'"):
        tree.lookup("odom", "cam_optical")
    with pytest.raises(LookupError, match="target frame 'cam_back' is in no static transform"):
        tree.lookup("cam_back", "lidar_top")
    with pytest.raises(LookupError, match="frames: none"):
        TransformTree().lookup("a", "b")
    loop = TransformTree()
    loop.add("a", "b", np.eye(4))
    loop.add("b", "c", np.eye(4))
    loop.add("c", "a", np.eye(4))
    with pytest.raises(LookupError, match="loop"):
        loop.lookup("a", "c")
    with pytest.raises(ValueError, match="own parent"):
        loop.add("x", "/x", np.eye(4))
    with pytest.raises(ValueError, match="finite 4x4"):
        loop.add("x", "y", np.full((4, 4), np.nan))


def test_messages_as_a_recorder_stores_them() -> None:
    _, p = robot()
    header = rosbags_header(1_700_000_000_000_000_000, "base_link", TYPESTORE)
    msgs = [to_rosbags_transform_stamped(header, "lidar_top", p["lidar"], TYPESTORE),
            to_rosbags_transform_stamped(header, "cam_link", p["cam_link"], TYPESTORE),
            to_rosbags_transform_stamped(rosbags_header(0, "cam_link", TYPESTORE), "cam_optical",
                                         p["cam_optical"], TYPESTORE)]
    tree = TransformTree()
    tree.add_messages(msgs)
    expected = np.linalg.inv(p["cam_link"] @ p["cam_optical"]) @ p["lidar"]
    np.testing.assert_allclose(tree.lookup("cam_optical", "lidar_top"), expected, atol=1e-12)
