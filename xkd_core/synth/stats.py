"""Point counts and class shares of generated (or any SemanticKITTI-format) sequences.

Read back from the written files, so the numbers describe exactly what training will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xkd_core.classes import CLASS_NAMES, LEARNING_MAP
from xkd_core.data.semantickitti import (
    frame_ids,
    label_path,
    read_labels,
    read_points,
    scan_path,
    sequence_dir,
)


@dataclass
class LabelStats:
    """Points per scan and points per raw class over a set of scans."""

    scans: int = 0
    points: list[int] = field(default_factory=list)
    class_points: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.points))

    def shares(self) -> dict[int, float]:
        """Raw class id -> share of all points, largest first."""
        total = max(self.total, 1)
        return dict(sorted(((c, n / total) for c, n in self.class_points.items()), key=lambda kv: -kv[1]))


def collect(root: str | Path, sequences: Sequence[str | int]) -> LabelStats:
    """Count points and classes in every scan of `sequences` under the data set `root`."""
    stats = LabelStats()
    counts = np.zeros(1 << 16, dtype=np.int64)
    for seq in sequences:
        seq_dir = sequence_dir(root, seq)
        for fid in frame_ids(seq_dir):
            n = read_points(scan_path(seq_dir, fid)).shape[0]
            sem, _ = read_labels(label_path(seq_dir, fid), num_points=n)
            counts += np.bincount(sem, minlength=1 << 16)
            stats.points.append(n)
            stats.scans += 1
    stats.class_points = {int(c): int(counts[c]) for c in np.flatnonzero(counts)}
    return stats


def format_stats(stats: LabelStats, seconds_per_scan: float | None = None) -> str:
    """A short human-readable report (points per scan, then one line per class)."""
    pts = np.array(stats.points or [0])
    lines = [f"scans: {stats.scans}   points/scan: mean {pts.mean():.0f}  min {pts.min()}  max {pts.max()}"]
    if seconds_per_scan is not None:
        lines.append(f"seconds/scan (scan + images + writing): {seconds_per_scan:.3f}")
    lines.append(f"{'raw id':>6}  {'class':<14} {'points':>10} {'share':>7}")
    for raw, share in stats.shares().items():
        name = CLASS_NAMES[LEARNING_MAP.get(raw, 0)]
        lines.append(f"{raw:>6}  {name:<14} {stats.class_points[raw]:>10} {100 * share:6.2f}%")
    return "\n".join(lines)
