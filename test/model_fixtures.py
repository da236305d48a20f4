"""Tiny random frames and a tiny model config for the model, collate and inference tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xkd_core.config import from_dict
from xkd_core.data.frame import CameraView, Frame
from xkd_core.models.model_config import ModelConfig, migrate_model_dict

#: The network image size of the tiny model tests.
HW = (32, 64)

#: LiDAR (x forward, y left, z up) -> camera (x right, y down, z forward).
LIDAR_TO_CAM = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])


def yaw(deg: float) -> np.ndarray:
    """4x4 rotation about the LiDAR z axis."""
    a = np.deg2rad(deg)
    R = np.eye(4)
    R[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return R


def camera(rng: np.random.Generator, hw=(40, 80), yaw_deg: float = 0.0, name: str = "cam") -> CameraView:
    """A pinhole camera looking along LiDAR +x rotated by `yaw_deg`, with a random RGB image."""
    h, w = hw
    K = np.array([[w / 2, 0.0, (w - 1) / 2], [0.0, w / 2, (h - 1) / 2], [0.0, 0.0, 1.0]])
    T = LIDAR_TO_CAM @ yaw(-yaw_deg)
    return CameraView(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K, T, name)


def random_frame(rng: np.random.Generator, n: int = 1500, views: list[CameraView] | None = None,
                 labels: bool = True) -> Frame:
    """Points all around the sensor (so some are outside every camera), labels 0..19."""
    xyz = rng.uniform([-12.0, -12.0, -2.0], [12.0, 12.0, 2.0], (n, 3))
    pts = np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)
    lab = rng.integers(0, 20, n) if labels else None
    return Frame(pts, lab, views=list(views or []), sequence="00", frame_id=f"{rng.integers(1e6):06d}")


def tiny_config(**overrides) -> ModelConfig:
    """Small enough for a CPU test: 3 UNet levels of 8-16 channels, resnet18 cut after stage 2.

    Settings are given by name (`tiny_config(wkd=0.5, use_camera=False)`); each goes to its section."""
    base = dict(
        voxel_size=0.4, unet_channels=[8, 16, 16], unet_decoder_channels=[8, 16], unet_blocks=1,
        image_backbone="resnet18", image_out_indices=[1, 2], fpn_dim=8, embed_dim=8,
        scales=[[0, 0], [1, 1], [2, 1]], fusion_hidden=16, max_pairs=256,
    )
    base.update(overrides)
    return from_dict(ModelConfig, migrate_model_dict(base))


#: A real checkpoint of the flat model-config layout (the model shipped until 2026-12-04), weights removed.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FLAT_LAYOUT_CHECKPOINT = FIXTURES / "checkpoint_flat_layout_2026-12-02.json"


def flat_layout_checkpoint(path: Path) -> Path:
    """That checkpoint at `path`, exactly as its trainer wrote it but for random weights of its shapes."""
    import torch

    from xkd_core.models.xmodel_kd import XModelKD

    stored = json.loads(FLAT_LAYOUT_CHECKPOINT.read_text())
    stored.pop("_what")
    model = XModelKD(from_dict(ModelConfig, migrate_model_dict(stored["config"]["model"])))
    torch.save({**stored, "model": model.state_dict()}, path)
    return path


def paired_batch(seed: int, hw: tuple[int, int] = HW, use_camera: bool = True):
    """A collated batch of two random frames. Sample 0: two overlapping cameras (multi-view); sample 1:
    one camera looking backwards."""
    from xkd_core.data.collate import collate, prepare_sample

    rng = np.random.default_rng(seed)
    frames = [random_frame(rng, 1500, [camera(rng, (40, 80), 0.0, "a"), camera(rng, (40, 80), 40.0, "b")]),
              random_frame(rng, 1200, [camera(rng, (40, 80), 180.0, "c")])]
    return collate([prepare_sample(f, train=False, rng=None, point_aug=None, image_aug=None, image_hw=hw,
                                   use_camera=use_camera) for f in frames])
