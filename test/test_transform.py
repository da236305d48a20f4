"""Rigid transforms <-> translation + quaternion (x, y, z, w), including the numerically hard angles."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from xkd_ros import transform as tf
from xkd_ros.stamp import rosbags_header


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return np.stack([tf.quat_xyzw_to_rotation(v) for v in q])


def test_known_quaternions():
    # 90 degrees about z maps x to y
    R = tf.quat_xyzw_to_rotation([0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(R @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(tf.rotation_to_quat_xyzw(np.eye(3)), [0, 0, 0, 1])
    # 180 degrees about x: trace -1, w = 0, the case a trace-only formula divides by zero on
    np.testing.assert_allclose(tf.rotation_to_quat_xyzw(np.diag([1.0, -1.0, -1.0])), [1, 0, 0, 0], atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotation_quaternion_round_trip(seed):
    rots = random_rotations(200, seed)
    # add rotations near 180 degrees about each axis and about a diagonal
    for axis in np.eye(3).tolist() + [[1.0, 1.0, 1.0]]:
        a = np.asarray(axis) / np.linalg.norm(axis)
        q = np.append(a * np.sin((np.pi - 1e-9) / 2), np.cos((np.pi - 1e-9) / 2))
        rots = np.concatenate([rots, tf.quat_xyzw_to_rotation(q)[None]])
    for R in rots:
        q = tf.rotation_to_quat_xyzw(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-15
        np.testing.assert_allclose(tf.quat_xyzw_to_rotation(q), R, atol=1e-14)


def test_matrix_round_trip_and_message():
    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = np.eye(4)
    T[:3, :3] = random_rotations(1, 5)[0]
    T[:3, 3] = [0.27, -0.08, 1.5]
    t, q = tf.matrix_to_translation_quat(T)
    np.testing.assert_allclose(tf.translation_quat_to_matrix(t, q), T, atol=1e-14)
    msg = tf.to_rosbags_transform_stamped(rosbags_header(1, "velodyne", ts), "camera_2", T, ts)
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, "geometry_msgs/msg/TransformStamped"),
                              "geometry_msgs/msg/TransformStamped")
    assert (back.header.frame_id, back.child_frame_id) == ("velodyne", "camera_2")
    np.testing.assert_allclose(tf.transform_msg_to_matrix(back.transform), T, atol=1e-14)


def test_refusals():
    with pytest.raises(ValueError, match="non-zero"):
        tf.quat_xyzw_to_rotation([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="proper rotation"):
        tf.rotation_to_quat_xyzw(np.diag([1.0, 1.0, -1.0]))  # a reflection
    with pytest.raises(ValueError, match="proper rotation"):
        tf.rotation_to_quat_xyzw(2 * np.eye(3))
    bad = np.eye(4)
    bad[3, 0] = 1.0
    with pytest.raises(ValueError, match="last row"):
        tf.matrix_to_translation_quat(bad)
