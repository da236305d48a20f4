"""Hand-built tiny SemanticKITTI sequences with known contents, for the data-layer tests.

The calibration uses round numbers so tests can compute projections by hand:
K = [[20, 0, 15.5], [0, 20, 11.5], [0, 0, 1]] (32 x 24 images, centre pixel (15.5, 11.5)),
Tr = LiDAR (x fwd, y left, z up) -> camera 0 (x right, y down, z fwd) plus t = (0, -0.5, 0),
camera 2 sits 0.5 m left of camera 0 (P2 = K [I | (0.5, 0, 0)]), camera 3 0.25 m right of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xkd_core.data.semantickitti import (
    Calib,
    sequence_dir,
    write_calib,
    write_image,
    write_labels,
    write_points,
    write_poses,
)

HW = (24, 32)
K = np.array([[20.0, 0.0, 15.5], [0.0, 20.0, 11.5], [0.0, 0.0, 1.0]])
R_LIDAR_TO_CAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
TR = np.eye(4)
TR[:3, :3] = R_LIDAR_TO_CAM
TR[:3, 3] = [0.0, -0.5, 0.0]
BASELINE = {0: 0.0, 1: -0.5, 2: 0.5, 3: -0.25}  # x offset of camera i from camera 0, P_i = K [I | (b, 0, 0)]

#: Raw ids written into labels: mapped, moving (252 -> car) and unmapped/outlier (1, 99 -> 0) classes.
RAW_IDS = np.array([0, 1, 10, 11, 40, 44, 48, 50, 70, 72, 80, 81, 99, 252, 254, 259], dtype=np.uint32)


def kitti_seq00_calib() -> Calib:
    """P2 and Tr of sequence 00 of the KITTI odometry benchmark, as its calib.txt prints them (7 digits, so
    R is orthonormal to ~2e-7 only): numbers we did not make up."""
    return Calib(
        P={2: np.array([[7.188560e02, 0, 6.071928e02, 4.538225e01],
                        [0, 7.188560e02, 1.852157e02, -1.130887e-01],
                        [0, 0, 1, 3.779761e-03]])},
        Tr=np.vstack([np.array([[4.276802e-04, -9.999672e-01, -8.084491e-03, -1.198459e-02],
                                [-7.210626e-03, 8.081198e-03, -9.999413e-01, -5.403984e-02],
                                [9.999738e-01, 4.859485e-04, -7.206933e-03, -2.921968e-01]]),
                      [0, 0, 0, 1]]),
    )


def tiny_calib(cameras: tuple[int, ...] = (0, 1, 2, 3)) -> Calib:
    """The fixture calibration (see the module docstring)."""
    P = {}
    for cam in cameras:
        Rt = np.hstack([np.eye(3), [[BASELINE[cam]], [0.0], [0.0]]])
        P[cam] = K @ Rt
    return Calib(P=P, Tr=TR.copy())


@dataclass
class TinySequence:
    """What `write_tiny_sequence` wrote, to compare against what the readers return."""

    root: Path
    seq_dir: Path
    frame_ids: list[str]
    points: list[np.ndarray] = field(default_factory=list)
    raw_semantic: list[np.ndarray] = field(default_factory=list)
    instance: list[np.ndarray] = field(default_factory=list)
    images: dict[int, list[np.ndarray]] = field(default_factory=dict)
    poses: np.ndarray | None = None
    calib: Calib | None = None


def write_tiny_sequence(
    root: Path,
    sequence: str = "00",
    n_frames: int = 2,
    n_points: int = 40,
    cameras: tuple[int, ...] = (2, 3),
    with_labels: bool = True,
    seed: int = 0,
) -> TinySequence:
    """Write a tiny sequence under `root/sequences/<sequence>` with random but recorded contents."""
    rng = np.random.default_rng(seed)
    seq_dir = sequence_dir(root, sequence)
    fids = [f"{i:06d}" for i in range(n_frames)]
    out = TinySequence(root=Path(root), seq_dir=seq_dir, frame_ids=fids, images={c: [] for c in cameras})
    out.calib = tiny_calib()
    write_calib(seq_dir / "calib.txt", out.calib)
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    poses[:, :3, 3] = np.cumsum(rng.normal(0.0, 1.0, (n_frames, 3)), axis=0)
    out.poses = poses
    write_poses(seq_dir / "poses.txt", poses)
    for i, fid in enumerate(fids):
        n = n_points + i  # different sizes per frame, so a swapped label file is detectable
        pts = np.column_stack([rng.uniform(2, 30, n), rng.uniform(-10, 10, n), rng.uniform(-2, 2, n),
                               rng.uniform(0, 1, n)]).astype(np.float32)
        write_points(seq_dir / "velodyne" / f"{fid}.bin", pts)
        out.points.append(pts)
        if with_labels:
            sem = rng.choice(RAW_IDS, n).astype(np.uint16)
            inst = rng.integers(0, 1 << 16, n).astype(np.uint16)
            write_labels(seq_dir / "labels" / f"{fid}.label", sem, inst)
            out.raw_semantic.append(sem)
            out.instance.append(inst)
        for cam in cameras:
            img = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
            write_image(seq_dir / f"image_{cam}" / f"{fid}.png", img)
            out.images[cam].append(img)
    return out
