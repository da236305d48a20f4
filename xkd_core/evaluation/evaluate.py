"""Evaluate a `Segmenter` on SemanticKITTI-format scans: full scan and camera-frustum subset.

It calls `Segmenter.segment` exactly as the ROS node does, so the numbers describe the deployed code
path (pre-processing, voxelisation, fp16, fusion) and not a training-time shortcut. The frustum
subset is the points with a valid point-pixel pair in at least one view: the region where the camera
could help and where xModel-KD's distillation should show most. mIoU and IoU are in percent.
`evaluate_camera` scores a camera branch instead, on the points the cameras see: the quality of what a
camera teacher hands the LiDAR branch through the KL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from xkd_core.classes import IGNORE_INDEX
from xkd_core.data.collate import collate, prepare_sample
from xkd_core.data.frame import Frame
from xkd_core.evaluation.metrics import ConfusionMatrix
from xkd_core.geometry.projection import in_any_view, views_of
from xkd_core.losses import mean_distribution
from xkd_core.models.camera_branch import sample_at_pixels
from xkd_core.models.heads import labels_from_logits

if TYPE_CHECKING:
    from xkd_core.models.xmodel_kd import XModelKD


@dataclass
class EvalResult:
    """Accumulated confusion matrices and per-scan timings."""

    full: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    frustum: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    num_scans: int = 0
    num_points: int = 0
    num_frustum_points: int = 0
    seconds: list[float] = field(default_factory=list)
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """metrics.json content: both subsets' metrics plus latency percentiles (milliseconds)."""
        lat = np.asarray(self.seconds, dtype=np.float64) * 1e3

        def pct(a: np.ndarray) -> dict:
            if not a.size:
                return {}
            p50, p90, p99 = np.percentile(a, [50, 90, 99])
            return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
                    "max": float(a.max())}

        return {
            "unit": "percent",
            "num_scans": self.num_scans,
            "num_points": self.num_points,
            "num_frustum_points": self.num_frustum_points,
            "full": self.full.summary(percent=True),
            "frustum": self.frustum.summary(percent=True),
            "latency_ms": pct(lat),
            "stage_latency_ms": {k: pct(np.asarray(v) * 1e3) for k, v in self.stage_seconds.items()},
        }


def evaluate(segmenter, frames: Iterable[Frame], fuse: bool = False, progress: bool = True,
             total: int | None = None) -> EvalResult:
    """Segment every frame (with its views only when `fuse`) and score against its labels."""
    result = EvalResult()
    for frame in tqdm(frames, total=total, disable=not progress, desc="eval", dynamic_ncols=True):
        if frame.labels is None:
            raise ValueError(f"frame {frame.sequence}/{frame.frame_id} has no labels to evaluate against")
        t0 = time.perf_counter()
        res = segmenter.segment(frame.points, frame.views if fuse else None)
        result.seconds.append(time.perf_counter() - t0)
        for stage, sec in (res.timings or {}).items():
            result.stage_seconds.setdefault(stage, []).append(float(sec))
        pred = np.asarray(res.labels).astype(np.int64)
        if pred.shape != frame.labels.shape:
            raise ValueError(f"segmenter returned {pred.shape[0]} labels for {frame.num_points} points "
                             f"({frame.sequence}/{frame.frame_id})")
        mask = in_any_view(frame.points[:, :3], views_of(frame.views))
        result.full.update(pred, frame.labels)
        result.frustum.update(pred[mask], frame.labels[mask])
        result.num_scans += 1
        result.num_points += frame.num_points
        result.num_frustum_points += int(mask.sum())
    return result


@torch.no_grad()
def camera_point_labels(model: XModelKD, frame: Frame, image_hw: tuple[int, int], T: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the frame's points that a view sees, the camera branch's class of each): the argmax of
    the mean of the tempered distributions of every view that sees the point, the target of the
    `kd_teacher: 2d` KL (`xkd_core.losses.mean_distribution`); the ignore class is never predicted."""
    if model.image_net is None:
        raise ValueError("this model has no camera branch (use_camera: false)")
    sample = prepare_sample(frame, train=False, rng=None, point_aug=None, image_aug=None, image_hw=image_hw,
                            use_camera=True)
    batch = collate([sample])
    if not len(batch.pair_point):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    device = next(model.parameters()).device
    logits = model.image_net(batch.images.to(device))[1]
    pairs = sample_at_pixels(logits, batch.pair_image.to(device), batch.pair_uv.to(device), image_hw)
    points, inverse = torch.unique(batch.pair_point.to(device), return_inverse=True)
    scores = mean_distribution(pairs, inverse, len(points), T)
    return sample.kept_index[points.cpu().numpy()], labels_from_logits(scores, IGNORE_INDEX).cpu().numpy()


def evaluate_camera(model: XModelKD, frames: Iterable[Frame], image_hw: tuple[int, int], T: float,
                    progress: bool = True, total: int | None = None) -> EvalResult:
    """Score a model's camera branch on the labeled points its views see (`camera_point_labels`): the
    `frustum` subset of the result; `full` stays empty (points no camera sees have no camera label)."""
    model.eval()
    result = EvalResult()
    for frame in tqdm(frames, total=total, disable=not progress, desc="eval camera", dynamic_ncols=True):
        if frame.labels is None:
            raise ValueError(f"frame {frame.sequence}/{frame.frame_id} has no labels to evaluate against")
        t0 = time.perf_counter()
        seen, pred = camera_point_labels(model, frame, image_hw, T)
        result.seconds.append(time.perf_counter() - t0)
        result.frustum.update(pred, frame.labels[seen])
        result.num_scans += 1
        result.num_points += frame.num_points
        result.num_frustum_points += len(seen)
    return result
