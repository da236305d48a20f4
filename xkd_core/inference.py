"""`Segmenter`: the one inference API that the ROS node, bag evaluation and the demo call.

It turns a raw cloud (and optionally camera views) into one label and one confidence per input
point, in input order, whatever the cloud holds: non-finite points and points beyond `max_range`
are not sent to the network and come back as label 0 / confidence 0. The 3D branch alone runs by
default; with `fuse=True` and a camera model, points seen by a camera take the fused head's output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xkd_core.data.collate import collate, prepare_sample
from xkd_core.data.frame import CameraView, Frame
from xkd_core.models.checkpoint import model_from_checkpoint
from xkd_core.models.sparse_backend import Backend
from xkd_core.models.xmodel_kd import ModelConfig, XModelKD


@dataclass
class SegmentResult:
    """Per-point output of `Segmenter.segment`, aligned with the input points."""

    labels: np.ndarray  # (N,) uint16 learning ids; 0 for points not segmented
    confidence: np.ndarray  # (N,) float32 softmax maximum (over the real classes); 0 for those
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


class Segmenter:
    """A model in eval mode on one device, with the pre- and post-processing around it."""

    def __init__(self, model: XModelKD, cfg: ModelConfig, image_hw: tuple[int, int] | None,
                 device: str | torch.device = "cpu", fp16: bool = False, fuse: bool = False,
                 max_range: float | None = None) -> None:
        if max_range is not None and not max_range > 0:
            raise ValueError(f"max_range must be > 0 (metres) or None, got {max_range}")
        if cfg.use_camera and fuse and image_hw is None:
            raise ValueError("fuse=True needs the network image size image_hw")
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.image_hw = None if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        self.fp16 = bool(fp16) and self.device.type == "cuda"  # autocast only where it pays
        self.fuse = bool(fuse) and cfg.use_camera
        self.max_range = max_range

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", fp16: bool = False,
                        backend: Backend = "auto", fuse: bool = False,
                        max_range: float | None = None) -> Segmenter:
        """Load a checkpoint written by `save_checkpoint`; errors name the file."""
        dev = _resolve_device(device)
        model, cfg, hw = model_from_checkpoint(path, dev, backend=backend)
        return cls(model, cfg, hw, dev, fp16=fp16, fuse=fuse, max_range=max_range)

    @classmethod
    def from_model(cls, model: XModelKD, cfg: ModelConfig, image_hw: tuple[int, int] | None = None,
                   device: str | torch.device = "cpu", fuse: bool = False, fp16: bool = False,
                   max_range: float | None = None) -> Segmenter:
        """Wrap an in-memory model (tests, evaluation right after training)."""
        return cls(model, cfg, image_hw, device, fp16=fp16, fuse=fuse, max_range=max_range)

    def warmup(self, num_points: int = 20000, iterations: int = 2) -> None:
        """Run a few synthetic scans so kernels, allocator and autotuning are ready before real data."""
        rng = np.random.default_rng(0)
        xyz = rng.uniform([-40.0, -40.0, -2.0], [40.0, 40.0, 4.0], (num_points, 3))
        points = np.concatenate([xyz, rng.uniform(0, 1, (num_points, 1))], 1).astype(np.float32)
        views = None
        if self.fuse and self.image_hw is not None:
            h, w = self.image_hw
            K = np.array([[w / 2, 0.0, (w - 1) / 2], [0.0, w / 2, (h - 1) / 2], [0.0, 0.0, 1.0]])
            T = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # x forward
            views = [CameraView(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K, T, "warmup")]
        for _ in range(iterations):
            self.segment(points, views)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def segment(self, points: np.ndarray, views: list[CameraView] | None = None) -> SegmentResult:
        """Labels and confidences for `points` (N, 4) x, y, z, intensity (or (N, 3): intensity 0)."""
        t0 = time.perf_counter()
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] not in (3, 4):
            raise ValueError(f"points must be (N, 4) x, y, z, intensity (or (N, 3)), got {pts.shape}")
        if pts.shape[1] == 3:
            pts = np.concatenate([pts, np.zeros((len(pts), 1), pts.dtype)], 1)
        pts = pts.astype(np.float32, copy=False)
        n = len(pts)
        labels = np.zeros(n, dtype=np.uint16)
        confidence = np.zeros(n, dtype=np.float32)
        keep = np.isfinite(pts).all(axis=1)
        if self.max_range is not None:
            with np.errstate(invalid="ignore"):
                keep &= np.einsum("ij,ij->i", pts[:, :3], pts[:, :3]) <= self.max_range**2
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            return SegmentResult(labels, confidence, {"preprocess": time.perf_counter() - t0,
                                                      "model": 0.0, "postprocess": 0.0,
                                                      "total": time.perf_counter() - t0})
        use_views = bool(self.fuse and views and self.image_hw is not None)
        frame = Frame(pts[idx], views=list(views) if use_views else [])
        sample = prepare_sample(frame, train=False, rng=None, point_aug=None, image_aug=None,
                                image_hw=self.image_hw or (1, 1), use_camera=use_views)
        batch = collate([sample]).to(self.device, non_blocking=True)
        self._sync()
        t1 = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            logits = self.model.predict(batch, fuse=use_views).float()
            # class `ignore_index` is "unlabelled", never a prediction
            logits[:, self.cfg.ignore_index] = float("-inf")
            conf, lab = torch.softmax(logits, dim=1).max(dim=1)
            lab_np = lab.to(torch.int32).cpu().numpy()
            conf_np = conf.cpu().numpy()
        t2 = time.perf_counter()
        rows = idx[sample.kept_index]
        labels[rows] = lab_np.astype(np.uint16)
        confidence[rows] = conf_np
        t3 = time.perf_counter()
        return SegmentResult(labels, confidence, {"preprocess": t1 - t0, "model": t2 - t1,
                                                  "postprocess": t3 - t2, "total": t3 - t0})
