"""A tiny structured driving scene in SemanticKITTI format, for the training and evaluation tests.

Each frame has a ground plane (road in the middle, sidewalk on both sides: same geometry, different
paint), a building wall on each side, one or two car boxes on the road and a few poles, seen by a
48 x 96 camera 2 whose image is painted with the class colours. Labels follow geometry and position,
so a few training steps measurably lower the loss. About 1,500 points per frame keeps a CPU step in
the tens of milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from xkd_core.classes import LEARNING_MAP_INV, PALETTE_RGB
from xkd_core.data.semantickitti import (
    Calib,
    sequence_dir,
    write_calib,
    write_image,
    write_labels,
    write_points,
    write_poses,
)

HW = (48, 96)
K = np.array([[40.0, 0.0, 47.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]])
TR = np.eye(4)
TR[:3, :3] = [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]  # LiDAR x fwd -> camera z fwd

ROAD, SIDEWALK, BUILDING, CAR, POLE = 9, 11, 13, 1, 18  # learning ids


def tiny_calib() -> Calib:
    P = {cam: K @ np.hstack([np.eye(3), np.zeros((3, 1))]) for cam in (0, 1, 2, 3)}
    return Calib(P=P, Tr=TR.copy())


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) points and (N,) learning ids of one random frame."""
    parts: list[tuple[np.ndarray, int]] = []
    n = 700
    g = np.column_stack([rng.uniform(1, 25, n), rng.uniform(-9, 9, n), rng.normal(-1.7, 0.01, n)])
    lab = np.where(np.abs(g[:, 1]) < 4.0, ROAD, SIDEWALK)
    parts += [(g[lab == ROAD], ROAD), (g[lab == SIDEWALK], SIDEWALK)]
    for side in (-1.0, 1.0):
        m = 200
        w = np.column_stack([rng.uniform(1, 25, m), np.full(m, side * 9.5) + rng.normal(0, 0.02, m),
                             rng.uniform(-1.7, 2.5, m)])
        parts.append((w, BUILDING))
    for _ in range(rng.integers(1, 3)):
        cx, cy = rng.uniform(6, 20), rng.uniform(-2.5, 2.5)
        m = 150
        c = np.column_stack([rng.uniform(cx - 2, cx + 2, m), rng.uniform(cy - 0.9, cy + 0.9, m),
                             rng.uniform(-1.6, -0.2, m)])
        parts.append((c, CAR))
    for _ in range(3):
        px, py = rng.uniform(3, 22), rng.choice([-5.0, 5.0])
        m = 30
        p = np.column_stack([rng.normal(px, 0.05, m), rng.normal(py, 0.05, m), rng.uniform(-1.7, 2.0, m)])
        parts.append((p, POLE))
    xyz = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([np.full(len(p), c, dtype=np.int64) for p, c in parts])
    intensity = rng.uniform(0, 1, len(xyz))
    return np.column_stack([xyz, intensity]).astype(np.float32), labels


def paint(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Camera-2 image: grey sky, each point's class colour splatted far-to-near (near wins)."""
    img = np.full((*HW, 3), 90, dtype=np.uint8)
    cam = points[:, :3] @ TR[:3, :3].T + TR[:3, 3]
    front = cam[:, 2] > 0.1
    uvw = cam[front] @ K.T
    uv = uvw[:, :2] / uvw[:, 2:3]
    order = np.argsort(-cam[front, 2])
    colours = PALETTE_RGB[labels[front]]
    for i in order:
        u, v = int(round(uv[i, 0])), int(round(uv[i, 1]))
        if 0 <= u < HW[1] and 0 <= v < HW[0]:
            cv2.circle(img, (u, v), 2, tuple(int(c) for c in colours[i]), -1)
    return img


def write_scene_sequence(root: Path, sequence: str, n_frames: int, seed: int) -> Path:
    """Write `n_frames` scene frames (scan, labels, camera-2 image, calib, poses) under `root`."""
    rng = np.random.default_rng(seed)
    seq_dir = sequence_dir(root, sequence)
    write_calib(seq_dir / "calib.txt", tiny_calib())
    write_poses(seq_dir / "poses.txt", np.tile(np.eye(4), (n_frames, 1, 1)))
    raw_of = np.array([LEARNING_MAP_INV[i] for i in range(len(LEARNING_MAP_INV))], dtype=np.uint32)
    for i in range(n_frames):
        points, labels = scene(rng)
        fid = f"{i:06d}"
        write_points(seq_dir / "velodyne" / f"{fid}.bin", points)
        write_labels(seq_dir / "labels" / f"{fid}.label", raw_of[labels])
        img = paint(points, labels)
        write_image(seq_dir / "image_2" / f"{fid}.png", img)
        write_image(seq_dir / "image_3" / f"{fid}.png", img)
    return seq_dir


def ddp_worker(rank: int, world_size: int, port: int, cfg_dict: dict, out: str) -> None:
    """One rank of a CPU/gloo DDP run (spawned by the DDP test): train, then save init and final weights."""
    import os

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from xkd_core.training.config import train_config_from_dict
    from xkd_core.training.distributed import shutdown
    from xkd_core.training.trainer import Trainer

    try:
        trainer = Trainer(train_config_from_dict(cfg_dict), progress=False)
        init = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        result = trainer.fit()
        final = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        record = {"init": init, "final": final, "history": result.history, "world": trainer.info.world_size}
        torch.save(record, Path(out) / f"rank{rank}.pt")
    finally:
        shutdown()
