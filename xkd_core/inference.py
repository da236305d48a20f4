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

from xkd_core.data.collate import Sample, collate, prepare_sample
from xkd_core.data.frame import CameraView, Frame
from xkd_core.device import resolve_device
from xkd_core.models.checkpoint import (
    InputConvention,
    input_convention_from_checkpoint,
    load_checkpoint,
    model_from_loaded,
)
from xkd_core.models.sparse_backend import Backend
from xkd_core.models.xmodel_kd import ModelConfig, XModelKD


@dataclass
class SegmentResult:
    """Per-point output of `Segmenter.segment`, aligned with the input points."""

    labels: np.ndarray  # (N,) uint16 learning ids; 0 for points not segmented
    confidence: np.ndarray  # (N,) float32 softmax maximum (over the real classes); 0 for those
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, see `Segmenter.segment`


class Segmenter:
    """A model in eval mode on one device, with the pre- and post-processing around it."""

    def __init__(self, model: XModelKD, cfg: ModelConfig, image_hw: tuple[int, int] | None,
                 device: str | torch.device = "cpu", fp16: bool = False, fuse: bool = False,
                 max_range: float | None = None, stage_timing: bool = False,
                 input_convention: InputConvention | None = None) -> None:
        if max_range is not None and not max_range > 0:
            raise ValueError(f"max_range must be > 0 (metres) or None, got {max_range}")
        if cfg.use_camera and fuse and image_hw is None:
            raise ValueError("fuse=True needs the network image size image_hw")
        self.device = resolve_device(device)
        self.model = model.for_device(self.device).eval()
        self.cfg = cfg
        self.image_hw = None if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        self.fp16 = bool(fp16) and self.device.type == "cuda"  # autocast only where it pays
        self.fuse = bool(fuse) and cfg.use_camera
        self.max_range = max_range
        #: also time voxelize / forward_3d / gather inside the model (bench/bench_stages.py); on a GPU
        #: this adds two synchronisations per scan, so the node leaves it off
        self.stage_timing = bool(stage_timing)
        #: the intensity the model was trained on (range, fill for a missing one): callers bring each
        #: driver's intensity to it (`xkd_ros.intensity`) before `segment`
        self.input_convention = input_convention or InputConvention()
        #: the label names the checkpoint was trained with (None for an in-memory model): a caller that
        #: publishes names or colours checks them against its own class table
        self.class_names: tuple[str, ...] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", fp16: bool = False,
                        backend: Backend = "auto", fuse: bool = False, max_range: float | None = None,
                        stage_timing: bool = False) -> Segmenter:
        """Load a checkpoint written by `save_checkpoint`; errors name the file."""
        dev = resolve_device(device)
        ckpt = load_checkpoint(path, map_location="cpu")
        model, cfg, hw = model_from_loaded(ckpt, path, dev, backend=backend)
        seg = cls(model, cfg, hw, dev, fp16=fp16, fuse=fuse, max_range=max_range, stage_timing=stage_timing,
                  input_convention=input_convention_from_checkpoint(ckpt, path))
        names = ckpt.get("class_names")
        seg.class_names = tuple(names) if isinstance(names, (list, tuple)) else None
        return seg

    @classmethod
    def from_model(cls, model: XModelKD, cfg: ModelConfig, image_hw: tuple[int, int] | None = None,
                   device: str | torch.device = "cpu", fuse: bool = False, fp16: bool = False,
                   max_range: float | None = None, stage_timing: bool = False,
                   input_convention: InputConvention | None = None) -> Segmenter:
        """Wrap an in-memory model (tests, evaluation right after training)."""
        return cls(model, cfg, image_hw, device, fp16=fp16, fuse=fuse, max_range=max_range,
                   stage_timing=stage_timing, input_convention=input_convention)

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

    def segment(self, points: np.ndarray, views: list[CameraView] | None = None,
                exclude: np.ndarray | None = None) -> SegmentResult:
        """Labels and confidences for `points` (N, 4) x, y, z, intensity (or (N, 3): intensity 0).

        `exclude` (N,) bool marks points the model must not see (the vehicle's own body, points too
        near): like non-finite points and points beyond `max_range`, they get label 0, confidence 0.

        `timings` (seconds): `preprocess` (checks, filtering, batching, host -> device), `model`
        (network, softmax, device -> host), `postprocess` (results back in input order) and `total`;
        with `stage_timing` also `voxelize`, `forward_3d` (the sparse UNet) and `gather` (point head,
        softmax, copy back and reordering), which add up with `preprocess` to `total`.
        """
        t0 = time.perf_counter()
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] not in (3, 4):
            raise ValueError(f"points must be (N, 4) x, y, z, intensity (or (N, 3)), got {pts.shape}")
        if pts.shape[1] == 3:
            pts = np.concatenate([pts, np.zeros((len(pts), 1), pts.dtype)], 1)
        pts = pts.astype(np.float32, copy=False)
        n = len(pts)
        keep = _finite_rows(pts)
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=bool)
            if exclude.shape != (n,):
                raise ValueError(f"exclude must be ({n},) bool, got {exclude.shape}")
            keep &= ~exclude
        if self.max_range is not None:
            with np.errstate(invalid="ignore"):
                keep &= np.einsum("ij,ij->i", pts[:, :3], pts[:, :3]) <= self.max_range**2
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            return SegmentResult(np.zeros(n, dtype=np.uint16), np.zeros(n, dtype=np.float32),
                                 {"preprocess": time.perf_counter() - t0, "model": 0.0, "postprocess": 0.0,
                                  "total": time.perf_counter() - t0})
        every = len(idx) == n  # the usual case: no point to drop, no reordering afterwards
        kept = pts if every else pts[idx]
        use_views = bool(self.fuse and views and self.image_hw is not None)
        if use_views:
            sample = prepare_sample(Frame(kept, views=list(views)), train=False, rng=None, point_aug=None,
                                    image_aug=None, image_hw=self.image_hw, use_camera=True)
            rows = idx[sample.kept_index]
        else:
            # What `prepare_sample` returns for a finite cloud without camera, without its second
            # finiteness pass and copy (~3 ms at 120k points, a fifth of a GPU frame).
            sample = _lidar_sample(kept)
            rows = idx
        batch = collate([sample]).to(self.device, non_blocking=True)
        self._sync()
        t1 = time.perf_counter()
        marks: list[float] = []
        hooks = self._stage_hooks(marks)
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
                logits = self.model.predict(batch, fuse=use_views).float()
                # class `ignore_index` is "unlabelled", never a prediction
                logits[:, self.cfg.ignore_index] = float("-inf")
                conf, lab = torch.softmax(logits, dim=1).max(dim=1)
                lab_np = lab.to(torch.int16).cpu().numpy().view(np.uint16)  # ids < NUM_CLASSES
                conf_np = conf.cpu().numpy()
        finally:
            for hook in hooks:
                hook.remove()
        t2 = time.perf_counter()
        if every and len(rows) == n:
            labels, confidence = lab_np, conf_np
        else:
            labels = np.zeros(n, dtype=np.uint16)
            confidence = np.zeros(n, dtype=np.float32)
            labels[rows] = lab_np
            confidence[rows] = conf_np
        t3 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}
        if len(marks) == 2:
            timings.update(voxelize=marks[0] - t1, forward_3d=marks[1] - marks[0], gather=t3 - marks[1])
        return SegmentResult(labels, confidence, timings)

    def _stage_hooks(self, marks: list[float]) -> list[torch.utils.hooks.RemovableHandle]:
        """With `stage_timing`, hooks that stamp the sparse UNet's start and end into `marks`."""
        unet = getattr(self.model, "unet", None)
        if not self.stage_timing or unet is None:
            return []

        def mark(*_: object) -> None:
            self._sync()
            marks.append(time.perf_counter())

        return [unet.register_forward_pre_hook(mark), unet.register_forward_hook(mark)]


def _finite_rows(pts: np.ndarray) -> np.ndarray:
    """(N,) rows of a (N, 4) array whose four values are all finite.

    `np.isfinite(pts).all(axis=1)` is ~4x slower: a reduction along a 4-wide axis. Written as a
    C-ordered (N, 4) bool array, each row is one uint32 that is 0x01010101 exactly when all four
    are true (in either byte order).
    """
    return np.isfinite(pts, order="C").view(np.uint32)[:, 0] == 0x01010101


def _lidar_sample(points: np.ndarray) -> Sample:
    """A `Sample` of finite points with no camera: no pairs, every point kept in order."""
    m = len(points)
    none = np.zeros(0, dtype=np.int64)
    return Sample(points=points, labels=None, images=[], views=[], pair_point=none, pair_view=none,
                  pair_uv=np.zeros((0, 2), dtype=np.float32), kept_index=np.arange(m, dtype=np.int64),
                  num_input_points=m)
