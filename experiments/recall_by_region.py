"""Per-class recall by range, inside and outside the camera frustum, of several checkpoints.

Why: a scan-wide mIoU says that xModel-KD's LiDAR branch lost the appearance-only classes, not
where. This splits the val points by distance from the sensor and by whether the front camera sees
them (where the distillation acts), so one can see whether the LiDAR can resolve a class there at
all (the baseline's recall) and what the teacher (the fused head) and the student do with it.

    python -m experiments.recall_by_region --data data/results/gap005 --sequences 01 --scans 12 \\
        --model base=runs/.../baseline_lidar/seed0/last.pt --model kd=runs/.../xmodel_kd/seed0/last.pt \\
        --model teacher=runs/.../xmodel_kd/seed0/last.pt:fuse --out research/results/recall_by_region.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from xkd_core.classes import CLASS_NAMES
from xkd_core.geometry.projection import in_any_view, views_of

RANGES_M = (0.0, 5.0, 8.0, 12.0, 20.0, 30.0, 50.0, 1000.0)
CLASSES = ("road", "parking", "other-ground", "sidewalk", "terrain", "car", "person")
REGIONS = ("frustum", "outside")


class RecallTable:
    """Hits and totals per (model, region, range bin, class)."""

    def __init__(self, models: list[str], ranges: tuple[float, ...] = RANGES_M,
                 classes: tuple[str, ...] = CLASSES) -> None:
        self.models, self.ranges, self.classes = models, ranges, classes
        self.ids = np.array([CLASS_NAMES.index(c) for c in classes])
        shape = (len(models), len(REGIONS), len(ranges) - 1, len(classes))
        self.hits = np.zeros(shape, np.int64)
        self.total = np.zeros(shape, np.int64)

    def add(self, model: str, truth: np.ndarray, pred: np.ndarray, dist: np.ndarray,
            frustum: np.ndarray) -> None:
        """Count one scan's points of the tracked classes."""
        m = self.models.index(model)
        rbin = np.digitize(dist, self.ranges[1:-1])
        for r, region in enumerate((frustum, ~frustum)):
            for k, cid in enumerate(self.ids):
                sel = region & (truth == cid)
                np.add.at(self.total[m, r, :, k], rbin[sel], 1)
                np.add.at(self.hits[m, r, :, k], rbin[sel & (pred == cid)], 1)

    def to_json(self) -> dict:
        rows = []
        for r, region in enumerate(REGIONS):
            for b in range(len(self.ranges) - 1):
                for k, cls in enumerate(self.classes):
                    n = int(self.total[0, r, b, k])
                    if n == 0:
                        continue
                    rows.append({"region": region, "range_m": [self.ranges[b], self.ranges[b + 1]],
                                 "class": cls, "points": n,
                                 "recall": {mod: float(self.hits[i, r, b, k] / n)
                                            for i, mod in enumerate(self.models)}})
        return {"models": self.models, "rows": rows}


def markdown(res: dict, min_points: int = 500) -> str:
    """One table: a row per (class, region, range) with at least `min_points` points."""
    models = res["models"]
    lines = ["| class | region | range (m) | points | " + " | ".join(f"recall {m}" for m in models) + " |",
             "|---|---|---|---|" + "---|" * len(models)]
    order = {c: i for i, c in enumerate(CLASSES)}
    for row in sorted(res["rows"], key=lambda r: (order.get(r["class"], 99), r["region"], r["range_m"][0])):
        if row["points"] < min_points:
            continue
        lo, hi = row["range_m"]
        rng = f"{lo:g}-{hi:g}" if hi < 1000 else f">{lo:g}"
        lines.append(f"| {row['class']} | {row['region']} | {rng} | {row['points']} | "
                     + " | ".join(f"{row['recall'][m]:.2f}" for m in models) + " |")
    return "\n".join(lines)


def parse_model(text: str) -> tuple[str, Path, bool]:
    """`NAME=CHECKPOINT[:fuse]`."""
    name, _, rest = text.partition("=")
    path, _, flag = rest.partition(":")
    if not name or not path or flag not in ("", "fuse"):
        raise argparse.ArgumentTypeError(f"--model must be NAME=CHECKPOINT[:fuse], got {text!r}")
    return name, Path(path), flag == "fuse"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--sequences", nargs="+", default=["01"])
    p.add_argument("--scans", type=int, default=12, help="evenly spaced scans of the sequences")
    p.add_argument("--model", action="append", type=parse_model, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from xkd_core.data.dataset import SemanticKittiDataset
    from xkd_core.inference import Segmenter

    ds = SemanticKittiDataset(args.data, split="val", sequences=args.sequences, cameras=(2,),
                              with_labels=True)
    segs = {name: (Segmenter.from_checkpoint(ckpt, device="cpu", fuse=fuse), fuse)
            for name, ckpt, fuse in args.model}
    table = RecallTable(list(segs))
    step = max(1, len(ds) // args.scans)
    for i in range(0, len(ds), step)[: args.scans]:
        frame = ds[i]
        dist = np.linalg.norm(frame.points[:, :2], axis=1)
        frustum = in_any_view(frame.points[:, :3], views_of(frame.views))
        for name, (seg, fuse) in segs.items():
            pred = np.asarray(seg.segment(frame.points, frame.views if fuse else None).labels)
            table.add(name, frame.labels, pred, dist, frustum)
    res = {"data": str(args.data), "sequences": args.sequences, "scans": args.scans,
           "checkpoints": {n: f"{c}{':fuse' if f else ''}" for n, c, f in args.model}, **table.to_json()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(markdown(res))


if __name__ == "__main__":
    main()
