"""Helpers of the fleet fine-tune tests: a pair log as the node writes it, the fleet preset shrunk."""

from __future__ import annotations

from pathlib import Path

from xkd_core.data.dataset import SemanticKittiDataset
from xkd_core.data.pairlog import PairLogWriter, PairSample
from xkd_core.geometry.projection import point_pixel_pairs
from xkd_core.inference import Segmenter
from xkd_core.training.config import TrainConfig, load_train_config

CONFIG = Path(__file__).resolve().parents[1] / "config" / "train" / "fleet_finetune.yaml"


def write_log(root: Path, world: Path, checkpoint: Path, sequence: str = "00") -> Path:
    """The node's pair log of `sequence`: its points, camera view, the checkpoint's predictions, pairs."""
    seg = Segmenter.from_checkpoint(checkpoint)
    with PairLogWriter(root) as writer:
        for i, frame in enumerate(SemanticKittiDataset(world, sequences=[sequence], cameras=(2,))):
            res = seg.segment(frame.points)
            pairs = point_pixel_pairs(frame.points[:, :3], [(v.K, v.T, v.hw) for v in frame.views])
            writer.submit(PairSample(frame.points, frame.views, res.labels, res.confidence, pairs,
                                     (i + 1) * 10**8, "velodyne", checkpoint.name))
    return root


def fleet_cfg(setup: dict[str, Path], out: Path, *overrides: str, log: Path | None = None) -> TrainConfig:
    """The shipped fleet fine-tune preset on the fixture's log, shrunk to a few CPU steps."""
    base = [f"data.root={log or setup['log']}", f"init_checkpoint={setup['deployed']}", f"out_dir={out}",
            "optim.steps=2", "optim.warmup_steps=1", "data.num_workers=0", "data.max_points=800",
            "model.losses.max_pairs=256", "log_every=1", "ckpt_every=0"]
    return load_train_config(CONFIG, "synth_surround", [*base, *overrides])
