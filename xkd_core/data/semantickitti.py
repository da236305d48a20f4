"""The SemanticKITTI on-disk format, exactly: scans, labels, images, calibration, poses, splits.

Layout: ``sequences/NN/{velodyne/*.bin, labels/*.label, image_2/*.png, image_3/*.png, calib.txt,
poses.txt}``. Every reader raises `DataFormatError` naming the file when it is missing or corrupt.
Cameras beyond KITTI's colour pair (a surround rig) are listed in ``views.yaml``
(`xkd_core.data.views`); their per-pixel class-id images are 16-bit PNGs (`read_class_image`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: Official sequence splits.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),
}

#: Camera index -> image folder. KITTI cameras 2 and 3 are the colour pair.
IMAGE_DIRS: dict[int, str] = {2: "image_2", 3: "image_3"}


class DataFormatError(ValueError):
    """A SemanticKITTI file is missing or does not follow the format; the message names the file."""


@dataclass
class Calib:
    """`calib.txt`: projection matrices P0..P3 (3x4, rectified camera i) and Tr (LiDAR -> camera 0)."""

    P: dict[int, np.ndarray] = field(default_factory=dict)  # cam index -> (3, 4) float64
    Tr: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4) float64, LiDAR -> cam0

    def camera(self, cam: int) -> tuple[np.ndarray, np.ndarray]:
        """Intrinsics K (3x3) and extrinsics T (4x4, LiDAR -> camera `cam`) with K @ T[:3] == P_cam @ Tr.

        KITTI's P_i = K_i [I | t_i] holds the baseline of camera i relative to camera 0; splitting it
        out gives a pinhole K and a rigid LiDAR-to-camera transform, which is what projection and
        augmentation need.
        """
        if cam not in self.P:
            raise DataFormatError(f"calibration has no P{cam}")
        P = self.P[cam]
        K = P[:, :3].copy()
        t = np.linalg.solve(K, P[:, 3])
        cam_from_cam0 = np.eye(4)
        cam_from_cam0[:3, 3] = t
        return K, cam_from_cam0 @ self.Tr

    def projection(self, cam: int) -> np.ndarray:
        """The 3x4 matrix mapping homogeneous LiDAR points to homogeneous pixels of camera `cam`."""
        return self.P[cam] @ self.Tr


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(f"missing file: {path}")
    return path


def read_points(path: str | Path) -> np.ndarray:
    """A `velodyne/*.bin` scan as (N, 4) float32 x, y, z, intensity."""
    path = _need(Path(path))
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise DataFormatError(f"corrupt scan {path}: {raw.size * 4} bytes is not a multiple of 16")
    return raw.reshape(-1, 4)


def write_points(path: str | Path, points: np.ndarray) -> None:
    """Write (N, 4) x, y, z, intensity as float32 `.bin`."""
    pts = np.ascontiguousarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise ValueError(f"points must be (N, 4), got {pts.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pts.tofile(path)


def read_labels(path: str | Path, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A `labels/*.label` file as (semantic uint16, instance uint16): lower / upper 16 bits."""
    path = _need(Path(path))
    raw = np.fromfile(path, dtype=np.uint32)
    if path.stat().st_size % 4:
        raise DataFormatError(f"corrupt label file {path}: size is not a multiple of 4 bytes")
    if num_points is not None and raw.size != num_points:
        raise DataFormatError(f"label file {path} has {raw.size} labels for a scan of {num_points} points")
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


def write_labels(path: str | Path, semantic: np.ndarray, instance: np.ndarray | None = None) -> None:
    """Write raw semantic (and instance) ids packed into uint32 `.label`."""
    sem = np.asarray(semantic).astype(np.uint32)
    inst = np.zeros_like(sem) if instance is None else np.asarray(instance).astype(np.uint32)
    if sem.shape != inst.shape or sem.ndim != 1:
        raise ValueError("semantic and instance must be 1-D arrays of equal length")
    if sem.size and (sem.max() > 0xFFFF or inst.max() > 0xFFFF):
        raise ValueError("semantic and instance ids must fit in 16 bits")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ((inst << 16) | sem).astype(np.uint32).tofile(path)


def read_calib(path: str | Path) -> Calib:
    """Parse `calib.txt` (lines `P0: 12 floats` ... `Tr: 12 floats`)."""
    path = _need(Path(path))
    calib = Calib()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, rest = line.partition(":")
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise DataFormatError(f"corrupt calibration {path}:{lineno}: {exc}") from exc
        if values.size != 12:
            raise DataFormatError(
                f"corrupt calibration {path}:{lineno}: {key} needs 12 values, got {values.size}"
            )
        key = key.strip()
        if key.startswith("P") and key[1:].isdigit():
            calib.P[int(key[1:])] = values.reshape(3, 4)
        elif key == "Tr":
            calib.Tr = np.vstack([values.reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
        else:
            raise DataFormatError(f"corrupt calibration {path}:{lineno}: unknown key {key!r}")
    if "Tr" not in path.read_text() or not calib.P:
        raise DataFormatError(f"calibration {path} needs P0..P3 and Tr")
    return calib


def write_calib(path: str | Path, calib: Calib) -> None:
    """Write `calib.txt` in the KITTI layout."""
    lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in calib.P[i].reshape(-1)) for i in sorted(calib.P)]
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in calib.Tr[:3].reshape(-1)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def read_poses(path: str | Path) -> np.ndarray:
    """`poses.txt`: one 3x4 camera-0 pose per line -> (F, 4, 4) float64."""
    path = _need(Path(path))
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataFormatError(f"corrupt poses {path}: {exc}") from exc
    if rows.size and rows.shape[1] != 12:
        raise DataFormatError(f"corrupt poses {path}: each line needs 12 values, got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def write_poses(path: str | Path, poses: np.ndarray) -> None:
    """Write (F, 4, 4) poses as KITTI `poses.txt`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(poses)[:, :3, :].reshape(-1, 12), fmt="%.9e")


def read_image(path: str | Path) -> np.ndarray:
    """A PNG as RGB uint8 (H, W, 3)."""
    path = _need(Path(path))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataFormatError(f"corrupt or unreadable image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")


def read_class_image(path: str | Path) -> np.ndarray:
    """A per-pixel class-id PNG (raw SemanticKITTI ids, 16-bit single channel) as (H, W) uint16."""
    path = _need(Path(path))
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise DataFormatError(f"corrupt or unreadable class image {path}")
    if ids.ndim != 2 or ids.dtype != np.uint16:
        raise DataFormatError(f"class image {path} must be a single-channel 16-bit PNG, got {ids.dtype} "
                              f"{ids.shape}")
    return ids


def write_class_image(path: str | Path, ids: np.ndarray) -> None:
    """Write (H, W) raw class ids as a 16-bit single-channel PNG (lossless)."""
    arr = np.asarray(ids)
    if arr.ndim != 2:
        raise ValueError(f"class ids must be (H, W), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
        raise ValueError("class ids must fit in 16 bits")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(arr, dtype=np.uint16)):
        raise OSError(f"could not write class image {path}")


def sequence_dir(root: str | Path, sequence: str | int) -> Path:
    """`root/sequences/NN` (accepts the dataset root or its `sequences` folder)."""
    root = Path(root)
    base = root if root.name == "sequences" else root / "sequences"
    return base / f"{int(sequence):02d}"


def scan_path(seq_dir: str | Path, fid: str) -> Path:
    """`velodyne/<fid>.bin` of a sequence."""
    return Path(seq_dir) / "velodyne" / f"{fid}.bin"


def label_path(seq_dir: str | Path, fid: str) -> Path:
    """`labels/<fid>.label` of a sequence."""
    return Path(seq_dir) / "labels" / f"{fid}.label"


def frame_ids(seq_dir: str | Path) -> list[str]:
    """Sorted frame ids (`000000`, ...) of a sequence, from its `velodyne` folder."""
    vel = Path(seq_dir) / "velodyne"
    if not vel.is_dir():
        raise DataFormatError(f"missing folder: {vel}")
    return sorted(p.stem for p in vel.glob("*.bin"))
