"""Static transforms as a tree, and the transform between any two of its frames, without ROS (no tf2).

A recorded `/tf_static` rarely holds the LiDAR -> camera transform as one edge: `ros2 bag record`
stores what the robot's static broadcasters sent, typically `base_link -> lidar` and
`base_link -> camera_link -> camera_optical_frame`. `TransformTree` keeps those edges the way tf2
does (each child frame has one parent; a later transform of a child replaces the earlier one, and
a leading `/` in a frame id is ignored) and composes any two connected frames through their
nearest common ancestor. tf2 itself is not on PyPI, and the bag tools must run without ROS.

Matrices follow `xkd_ros.transform`: an edge `parent -> child` stores `parent_from_child` (the
child's pose in the parent frame), and `lookup(target, source)` returns `target_from_source`, the
matrix that maps points given in `source` into `target` (tf2's `lookup_transform(target, source)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from xkd_ros.transform import transform_msg_to_matrix


def frame_key(frame_id: str) -> str:
    """A frame id as tf2 compares them: without a leading `/`."""
    return str(frame_id).lstrip("/")


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """The inverse of a rigid 4x4 transform (R^T, -R^T t: exact where a general inverse rounds)."""
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


class TransformTree:
    """Static transforms (see the module docstring). Callable as the pipeline's `TransformLookup`."""

    def __init__(self) -> None:
        self._parent: dict[str, tuple[str, np.ndarray]] = {}

    def add(self, parent: str, child: str, parent_from_child: np.ndarray) -> None:
        """Set the transform of `child` relative to `parent` (replacing `child`'s previous parent)."""
        p, c = frame_key(parent), frame_key(child)
        if not p or not c:
            raise ValueError(f"transform {parent!r} -> {child!r}: frame ids must not be empty")
        if p == c:
            raise ValueError(f"transform {parent!r} -> {child!r}: a frame cannot be its own parent")
        T = np.asarray(parent_from_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f"transform {parent!r} -> {child!r}: expected a finite 4x4 matrix")
        self._parent[c] = (p, T)

    def add_messages(self, transforms: Iterable[Any]) -> None:
        """Add `geometry_msgs/TransformStamped` messages (rclpy or rosbags), in the order received."""
        for tf in transforms:
            self.add(str(tf.header.frame_id), str(tf.child_frame_id), transform_msg_to_matrix(tf.transform))

    @property
    def frames(self) -> set[str]:
        """Every frame that appears in an edge."""
        return set(self._parent) | {p for p, _ in self._parent.values()}

    def edges(self) -> list[tuple[str, str]]:
        """(parent, child) of every edge, sorted."""
        return sorted((p, c) for c, (p, _) in self._parent.items())

    def __len__(self) -> int:
        return len(self._parent)

    def _to_root(self, frame: str) -> dict[str, np.ndarray]:
        """ancestor -> ancestor_from_frame for `frame` and every ancestor, in walking order."""
        chain = {frame: np.eye(4)}
        M = np.eye(4)
        f = frame
        while f in self._parent:
            parent, T = self._parent[f]
            if parent in chain:
                raise LookupError(f"/tf_static has a loop through frame {parent!r}")
            M = T @ M
            chain[parent] = M
            f = parent
        return chain

    def lookup(self, target: str, source: str) -> np.ndarray:
        """`target_from_source` (4x4); LookupError naming the frames when they are not connected."""
        t, s = frame_key(target), frame_key(source)
        known = self.frames
        for name, frame in (("source", s), ("target", t)):
            if frame not in known:
                raise LookupError(f"{name} frame {frame!r} is in no static transform "
                                  f"(frames: {sorted(known) if known else 'none'})")
        from_source = self._to_root(s)
        from_target = self._to_root(t)
        for ancestor, anc_from_target in from_target.items():
            if ancestor in from_source:
                return rigid_inverse(anc_from_target) @ from_source[ancestor]
        root_s, root_t = list(from_source)[-1], list(from_target)[-1]
        raise LookupError(f"frames {s!r} and {t!r} are not connected (their trees have the roots {root_s!r} "
                          f"and {root_t!r})")

    def __call__(self, target: str, source: str, stamp_ns: int = 0) -> np.ndarray:
        """`lookup`, with the signature of `xkd_ros.cameras.TransformLookup` (static: any stamp)."""
        return self.lookup(target, source)
