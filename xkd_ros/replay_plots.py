"""Pictures of a bag replay: latency histogram and a bird's-eye view of one scan (matplotlib, Agg).

The per-class IoU bars come from `xkd_core.evaluation.plots.plot_iou_bars`, shared with `xkd-eval`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from xkd_core.classes import CLASS_NAMES, IGNORE_INDEX, PALETTE_RGB  # noqa: E402
from xkd_core.evaluation.plots import save_figure  # noqa: E402
from xkd_ros.replay_score import BevSample  # noqa: E402

#: Colours of the error view: correct, wrong, not scored (ground truth = ignore).
_CORRECT = (0.55, 0.55, 0.55)
_WRONG = (0.85, 0.1, 0.1)
_IGNORED = (0.85, 0.85, 0.85)


def plot_latency_hist(latencies_ms: np.ndarray, path: str | Path, title: str = "latency") -> Path:
    """Histogram of per-scan latencies with the p50 / p90 / p99 marked (an empty plot says so)."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if lat.size:
        ax.hist(lat, bins=min(50, max(5, lat.size // 2)), color="tab:blue", alpha=0.8)
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            v = float(np.percentile(lat, q))
            ax.axvline(v, color="black", linestyle=style, label=f"p{q} {v:.1f} ms")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scored scan", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("scans")
    ax.set_title(f"{title} ({lat.size} scans)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_bev(sample: BevSample | None, path: str | Path, extent_m: float = 40.0, title: str = "") -> Path:
    """Top view (x forward up, y left to the left) of one scan: prediction colours | errors, side by side.

    Points farther than `extent_m` in x or y are left out so the near field stays readable.
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5), dpi=100, sharex=True, sharey=True)
    if sample is None or len(sample.xyz) == 0:
        for ax in axes:
            ax.text(0.5, 0.5, "no scored scan", ha="center", va="center", transform=ax.transAxes)
    else:
        xyz, truth, pred = sample.xyz, np.asarray(sample.truth), np.asarray(sample.pred)
        with np.errstate(invalid="ignore"):
            near = (np.abs(xyz[:, 0]) <= extent_m) & (np.abs(xyz[:, 1]) <= extent_m)
            keep = np.isfinite(xyz).all(axis=1) & near
        xyz, truth, pred = xyz[keep], truth[keep], pred[keep]
        # plotted as (-y, x): forward is up, the vehicle's left is on the left
        px, py = -xyz[:, 1], xyz[:, 0]
        size = float(np.clip(2e4 / max(len(px), 1), 0.2, 8.0))  # dense scans: fine dots; sparse: visible
        axes[0].scatter(px, py, c=PALETTE_RGB[pred] / 255.0, s=size, linewidths=0)
        err = np.empty((len(pred), 3))
        scored = truth != IGNORE_INDEX
        err[:] = _IGNORED
        err[scored & (pred == truth)] = _CORRECT
        err[scored & (pred != truth)] = _WRONG
        axes[1].scatter(px, py, c=err, s=size, linewidths=0)
        n_scored = int(scored.sum())
        acc = float((pred[scored] == truth[scored]).mean()) if n_scored else float("nan")
        axes[0].set_title("prediction")
        axes[1].set_title(f"error (accuracy {100 * acc:.1f} % of {n_scored} labelled points)")
        present = sorted(set(np.unique(pred).tolist()) - {IGNORE_INDEX})
        axes[0].legend(handles=[Patch(color=PALETTE_RGB[c] / 255.0, label=CLASS_NAMES[c]) for c in present],
                       loc="upper left", fontsize=7, ncol=2, framealpha=0.8)
        axes[1].legend(handles=[Patch(color=_CORRECT, label="correct"), Patch(color=_WRONG, label="wrong"),
                                Patch(color=_IGNORED, label="unlabelled")], loc="upper left", fontsize=7)
    for ax in axes:
        ax.plot([0.0], [0.0], marker="^", color="black", markersize=7)  # the sensor, facing up
        ax.set_aspect("equal")
        ax.set_xlim(-extent_m, extent_m)
        ax.set_ylim(-extent_m, extent_m)
        ax.set_xlabel("-y (m, left <-> right)")
        ax.set_facecolor("white")
    axes[0].set_ylabel("x (m, forward)")
    stamp = "" if sample is None else f"scan at stamp {sample.stamp_ns / 1e9:.3f} s"
    fig.suptitle(" ".join(s for s in (title, stamp) if s))
    return save_figure(fig, path)


def plot_label_histogram(counts: dict[str, int], path: str | Path, title: str = "predicted labels") -> Path:
    """Bars of the share of points per predicted class, in class colours (what a bag without ground
    truth can still show: does the model see road, cars, buildings where the drive has them?)."""
    names = list(CLASS_NAMES)
    n = np.array([int(counts.get(name, 0)) for name in names], dtype=np.float64)
    total = float(n.sum())
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    if total > 0:
        share = 100.0 * n / total
        ax.bar(range(len(names)), share, color=PALETTE_RGB[: len(names)] / 255.0, edgecolor="black",
               linewidth=0.4)
        for i, v in enumerate(share):
            if v > 0:
                ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
    else:
        ax.text(0.5, 0.5, "no segmented scan", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("points (%)")
    ax.set_xlabel("unlabeled: points not segmented (out of range, ego crop, NaN)", fontsize=8)
    ax.set_title(f"{title} ({int(total)} points)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
