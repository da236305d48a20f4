"""Pictures of an evaluation: the confusion matrix and per-class IoU bars (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xkd_core.classes import CLASS_NAMES, IGNORE_INDEX, PALETTE_RGB  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write and close a figure (closing matters: plots are made in long-running tools)."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion(conf: np.ndarray, path: str | Path, title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows = truth) without the ignore class, counts in the title."""
    m = np.asarray(conf, dtype=np.float64)
    keep = [i for i in range(m.shape[0]) if i != IGNORE_INDEX]
    sub = m[np.ix_(keep, keep)]
    rows = sub.sum(axis=1, keepdims=True)
    norm = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    names = [CLASS_NAMES[i] for i in keep]
    fig, ax = plt.subplots(figsize=(9, 8), dpi=100)
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{title} ({int(m.sum())} points, row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def plot_iou_bars(ious: dict[str, np.ndarray], path: str | Path, title: str = "per-class IoU") -> Path:
    """Grouped bars of per-class IoU for each named subset (e.g. full scan, camera frustum)."""
    keep = [i for i in range(len(CLASS_NAMES)) if i != IGNORE_INDEX]
    x = np.arange(len(keep))
    width = 0.8 / max(len(ious), 1)
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    for j, (label, iou) in enumerate(ious.items()):
        pct = 100.0 * np.asarray(iou, dtype=np.float64)[keep]
        vals = np.nan_to_num(pct, nan=0.0)
        miou = np.nanmean(pct) if np.isfinite(pct).any() else np.nan
        offset = (j - (len(ious) - 1) / 2) * width
        bars = ax.bar(x + offset, vals, width, label=f"{label} (mIoU {miou:.1f} %)")
        if j == 0:
            for bar, c in zip(bars, keep):
                bar.set_edgecolor(PALETTE_RGB[c] / 255.0)
    ax.set_xticks(x, [CLASS_NAMES[i] for i in keep], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0.0, 100.0)
    ax.set_ylabel("IoU (%)")
    ax.set_title(title + " (classes absent from the ground truth shown as 0)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
