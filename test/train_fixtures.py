"""Tiny synthetic SemanticKITTI data for the training and evaluation tests, and the DDP test's worker.

`write_synth` runs the project's synthetic-world generator (`xkd_core.synth`) with a 16-beam LiDAR
and a 128 x 40 camera: about 5,000 points per scan with road, sidewalk, parking, cars, buildings,
vegetation and poles, generated in well under a second.
"""

from __future__ import annotations

from pathlib import Path

from xkd_core.synth.config import CameraConfig, LidarConfig, SynthConfig
from xkd_core.synth.generate import generate

HW = (40, 128)  # camera (H, W) of the test world


def write_synth(root: Path, sequence: str, scans: int, seed: int = 0) -> Path:
    """Write `scans` frames of synthetic sequence `sequence` under `root` (byte-identical per seed)."""
    cfg = SynthConfig(lidar=LidarConfig(beams=16, columns=360),
                      camera=CameraConfig(image_width=HW[1], image_height=HW[0]))
    generate(root, [sequence], scans, seed, cfg, progress=False)
    return root


def write_surround(root: Path, sequences: list[str], scans: int, seed: int, beams: int, columns: int,
                   image_wh: tuple[int, int]) -> Path:
    """A small world of the six-camera surround rig, as `xkd-synth --rig surround` writes it."""
    cfg = SynthConfig(lidar=LidarConfig(beams=beams, columns=columns),
                      camera=CameraConfig(rig="surround", image_width=image_wh[0], image_height=image_wh[1]))
    generate(root, sequences, scans, seed, cfg, progress=False)
    return root


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
