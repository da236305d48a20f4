"""Segmentation metrics: a confusion matrix accumulated on the device, per-class IoU and mIoU.

The matrix is accumulated with one `torch.bincount` per batch, so evaluation never leaves the GPU
until the end. Rows are ground truth, columns predictions. Points whose ground truth is the ignore
class (0) are skipped; a labelled point *predicted* as the ignore class still counts as a miss
(false negative) for its true class, so a model cannot gain IoU by abstaining.
"""

from __future__ import annotations

import numpy as np
import torch

from xkd_core.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(C, C) int64 counts, rows = target, columns = prediction, target == ignore_index dropped."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long().to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.numel()} labels but target has {target.numel()}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if pred.numel():
        lo = int(torch.minimum(pred.min(), target.min()))
        hi = int(torch.maximum(pred.max(), target.max()))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor | np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """IoU of every class (float64, length C); NaN for the ignore class and classes absent from the truth.

    TP = conf[c, c]; FN = the rest of row c (including predictions of the ignore class);
    FP = column c over the labelled rows (the ignore row never exists: it was dropped).
    """
    m = torch.as_tensor(conf).detach().cpu().to(torch.float64).numpy().copy()
    m[ignore_index, :] = 0.0
    tp = np.diag(m)
    fn = m.sum(axis=1) - tp
    fp = m.sum(axis=0) - tp
    denom = tp + fp + fn
    present = m.sum(axis=1) > 0
    iou = np.full(m.shape[0], np.nan)
    iou[present] = tp[present] / denom[present]
    iou[ignore_index] = np.nan
    return iou


def mean_iou(conf: torch.Tensor | np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean IoU over the classes present in the ground truth (NaN when no labelled point was seen)."""
    iou = iou_per_class(conf, ignore_index)
    valid = ~np.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else float("nan")


class ConfusionMatrix:
    """Running confusion matrix over many scans (and, with `all_reduce`, over many processes)."""

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch of predicted and true learning ids (any shapes with equal element counts)."""
        pred_t = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred)
        target_t = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target)
        pred_t = pred_t.to(self.matrix.device)
        self.matrix += confusion_matrix(pred_t, target_t, self.num_classes, self.ignore_index)

    def all_reduce(self) -> None:
        """Sum the matrices of every process of the default process group (no-op without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def iou(self) -> np.ndarray:
        return iou_per_class(self.matrix, self.ignore_index)

    def miou(self) -> float:
        return mean_iou(self.matrix, self.ignore_index)

    def summary(self, class_names: tuple[str, ...] | list[str] = CLASS_NAMES, percent: bool = False) -> dict:
        """JSON-ready dict: mIoU, per-class IoU (None where absent), point counts and the matrix;
        `percent`: the IoUs in percent to four decimals, the unit every report of xkd is in."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        m = self.matrix.cpu()

        def value(v: float) -> float | None:
            if np.isnan(v):
                return None
            return round(100.0 * float(v), 4) if percent else float(v)

        return {
            "miou": value(self.miou()),
            "per_class_iou": {name: value(v) for i, (name, v) in enumerate(zip(class_names, self.iou()))
                              if i != self.ignore_index},
            "num_points": int(m.sum()),
            "classes_present": [
                class_names[i] for i in range(self.num_classes) if i != self.ignore_index and m[i].sum() > 0
            ],
            "confusion_matrix": m.tolist(),
        }
