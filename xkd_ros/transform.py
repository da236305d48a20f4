"""Rigid 4x4 transforms <-> `geometry_msgs/Transform` (translation + quaternion x, y, z, w).

ROS-free (rosbags messages, or anything with the same attributes), so the bag tools use it too.
tf2 convention: a `TransformStamped` with `header.frame_id = parent` and `child_frame_id = child`
holds the pose of the child in the parent frame, i.e. the matrix mapping child coordinates to
parent coordinates. The LiDAR -> camera extrinsics `T` of the project map LiDAR points into the
camera, so `velodyne -> camera_N` in `/tf_static` carries `inv(T)`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def quat_xyzw_to_rotation(q: np.ndarray) -> np.ndarray:
    """3x3 rotation of a quaternion in ROS order (x, y, z, w); it is normalised first."""
    q = np.asarray(q, dtype=np.float64).reshape(4)
    norm = math.sqrt(float(q @ q))
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"quaternion must be finite and non-zero, got {q.tolist()}")
    x, y, z, w = (q / norm).tolist()
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation (Shepperd's method: stable for all angles)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.isfinite(R).all():
        raise ValueError(f"rotation must be a finite 3x3 matrix, got shape {R.shape}")
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) <= 0:
        raise ValueError("matrix is not a proper rotation (orthonormal, det +1)")
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    i = int(np.argmax([R[0, 0], R[1, 1], R[2, 2], trace]))
    if i == 3:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    out = np.array(q, dtype=np.float64)
    out /= np.linalg.norm(out)
    return -out if out[3] < 0 else out


def matrix_to_translation_quat(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(translation (3,), quaternion xyzw (4,)) of a rigid 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"expected a rigid 4x4 transform with last row 0 0 0 1, got {T.tolist()}")
    return T[:3, 3].copy(), rotation_to_quat_xyzw(T[:3, :3])


def translation_quat_to_matrix(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The rigid 4x4 transform of a translation (3,) and a quaternion xyzw (4,)."""
    T = np.eye(4)
    T[:3, :3] = quat_xyzw_to_rotation(q)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def transform_msg_to_matrix(transform: Any) -> np.ndarray:
    """4x4 matrix of a `geometry_msgs/Transform` (rclpy or rosbags)."""
    tr, rot = transform.translation, transform.rotation
    return translation_quat_to_matrix([tr.x, tr.y, tr.z], [rot.x, rot.y, rot.z, rot.w])


def to_rosbags_transform_stamped(header: Any, child_frame_id: str, parent_from_child: np.ndarray,
                                 typestore: Any) -> Any:
    """A rosbags `geometry_msgs/msg/TransformStamped` (header.frame_id = parent) of a 4x4 matrix."""
    types = typestore.types
    t, q = matrix_to_translation_quat(parent_from_child)
    tx, ty, tz = (float(v) for v in t)
    qx, qy, qz, qw = (float(v) for v in q)
    transform = types["geometry_msgs/msg/Transform"](
        translation=types["geometry_msgs/msg/Vector3"](x=tx, y=ty, z=tz),
        rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
    )
    return types["geometry_msgs/msg/TransformStamped"](header=header, child_frame_id=child_frame_id,
                                                        transform=transform)
